"""A short, reproducible next-token training run on CPU.

Besides cross-entropy, the loss has a hinge on the gap between the top two logits, pushing each
position's argmax at least MARGIN_TARGET clear of the runner-up. The test suite compares greedy
tokens of two implementations whose float rounding differs (~1e-5 in the logits); near-ties
would make that flaky. The hinge is phased in over the second half of training only: applied
from the start, it collapses a model that has not learned any text yet onto one token. Measured
on the tiny preset (30 prompts x 64 greedy tokens): the smallest gap rises from 6e-5 to 1e-3 and
the share of gaps below 0.05 falls from 3.5 % to 0.6 %, for ~0.03 nat of cross-entropy.

Invariant: the same model, stream, budget and seed give bit-identical weights on a given machine:
fixed step count, seeded batch sampling, deterministic algorithms, and a fixed thread count
(CPU reductions are split by thread, so a different count would round differently).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch.utils.deterministic
from transformers import PreTrainedModel

from worker.demo_model.presets import TrainingBudget

log = logging.getLogger(__name__)

# One thread: the same on every machine whatever its core count, and on a busy 2-core box it is
# faster than two threads whose barriers wait on each other (measured 0.27 s vs 0.46 s per tiny step).
TRAINING_THREADS = 1
MARGIN_TARGET = 1.0  # logits; ~1e5 times the rounding differences the exactness tests must survive
_MARGIN_RAMP_START = 0.5


@contextlib.contextmanager
def reproducible_torch() -> Iterator[None]:
    """Fixed threads and deterministic kernels for the duration; the caller's settings come back after.

    Deterministic mode would also fill every new tensor's memory with NaN (a debugging aid that
    changes no result): 12% of a demo training step on an idle 2-core EPYC, more beside a compile."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(TRAINING_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _learning_rate(step: int, budget: TrainingBudget) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < budget.warmup_steps:
        return budget.learning_rate * (step + 1) / budget.warmup_steps
    progress = (step - budget.warmup_steps) / max(1, budget.steps - budget.warmup_steps)
    return budget.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch(stream: torch.Tensor, budget: TrainingBudget, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - budget.seq_len, (budget.batch_size,), generator=generator)
    return torch.stack([stream[start : start + budget.seq_len] for start in starts.tolist()])


def _margin_weight(step: int, budget: TrainingBudget) -> float:
    """0 for the first half of training, then rising linearly to `budget.margin_weight`."""
    progress = step / budget.steps
    return budget.margin_weight * max(0.0, (progress - _MARGIN_RAMP_START) / (1 - _MARGIN_RAMP_START))


def _loss(
    logits: torch.Tensor, input_ids: torch.Tensor, margin_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, training loss): next-token CE plus the weighted top-2 margin hinge."""
    predictions = logits[:, :-1]
    targets = input_ids[:, 1:]
    cross_entropy = F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1))
    if margin_weight == 0:
        return cross_entropy, cross_entropy
    top2 = predictions.topk(2, dim=-1).values
    hinge = torch.relu(MARGIN_TARGET - (top2[..., 0] - top2[..., 1])).mean()
    return cross_entropy, cross_entropy + margin_weight * hinge


def train(model: PreTrainedModel, stream: torch.Tensor, budget: TrainingBudget, seed: int) -> None:
    """Train `model` in place for `budget.steps` steps on random windows of `stream`, then eval()."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=budget.learning_rate, betas=(0.9, 0.95), weight_decay=0.01
    )
    model.train()
    started = time.monotonic()
    recent: list[float] = []
    for step in range(budget.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, budget)
        input_ids = _batch(stream, budget, generator)
        logits = model(input_ids=input_ids).logits
        cross_entropy, loss = _loss(logits, input_ids, _margin_weight(step, budget))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent.append(cross_entropy.item())
        if (step + 1) % budget.log_every == 0 or step + 1 == budget.steps:
            elapsed = time.monotonic() - started
            remaining = elapsed / (step + 1) * (budget.steps - step - 1)
            log.info("train: step %d/%d  cross-entropy %.3f  %.0f s elapsed, ~%.0f s left",
                     step + 1, budget.steps, sum(recent) / len(recent), elapsed, remaining)
            recent.clear()
    model.eval()
