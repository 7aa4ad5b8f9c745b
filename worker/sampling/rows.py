"""What the sampler takes in per sequence and gives back per sequence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.types import PositionLogprobs, SamplingParams


@dataclass
class SamplingRow:
    """One sequence's row of the logits batch.

    `output_token_ids` are all tokens generated so far for the sequence, including ones resumed
    from an earlier worker; they drive the penalties, `min_tokens` and the seeded noise position.
    `generator` comes from `make_generator(params.seed, device)` and lives as long as the sequence.
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None = None


@dataclass
class SampledToken:
    """The chosen token; `logprobs` is None unless `params.logprobs >= 0`."""

    token_id: int
    logprobs: PositionLogprobs | None = None
