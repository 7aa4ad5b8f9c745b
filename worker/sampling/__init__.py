"""The worker's sampler: turns a batch of last-position logits into one token per sequence."""

from worker.sampling.rows import SampledToken, SamplingRow
from worker.sampling.sampler import Sampler
from worker.sampling.seeding import make_generator

__all__ = ["SampledToken", "Sampler", "SamplingRow", "make_generator"]
