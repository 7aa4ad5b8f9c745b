"""The compiled greedy argmax answers exactly what torch.max(dim=1).indices answers."""

from __future__ import annotations

import pytest
import torch

from services.types import SamplingParams
from worker.engine.cpu_kernels import greedy_argmax_kernel
from worker.sampling import Sampler
from worker.sampling.rows import SamplingRow

argmax = greedy_argmax_kernel()
pytestmark = pytest.mark.skipif(argmax is None, reason="the CPU kernels are not built here")


def _torch(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(dim=1).indices


@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 1000, 49_152])
def test_random_rows_at_every_tail_length(vocab):
    logits = torch.randn(33, vocab, generator=torch.Generator().manual_seed(vocab))
    assert torch.equal(argmax(logits), _torch(logits))


def test_ties_infinities_and_signed_zeros_give_the_first_index():
    logits = torch.full((6, 40), -1.0)
    logits[0, [5, 17, 39]] = 3.0  # repeated maximum: the first one
    logits[1, 39] = 2.0  # the maximum alone in the tail lanes
    logits[2] = float("-inf")  # nothing but -inf: index 0
    logits[3, [8, 30]] = float("inf")
    logits[4] = 0.0
    logits[4, 3] = -0.0  # -0.0 == 0.0: a tie, so index 0
    logits[5, [21, 22]] = torch.tensor([7.0, 7.0])
    assert argmax(logits).tolist() == _torch(logits).tolist() == [5, 39, 0, 8, 0, 21]


def test_a_row_with_nan_is_left_to_torch():
    logits = torch.randn(3, 100)
    logits[1, 50] = float("nan")
    chosen = argmax(logits)
    assert chosen[1] == -1 and torch.equal(chosen[[0, 2]], _torch(logits)[[0, 2]])


def test_it_refuses_what_it_cannot_read():
    with pytest.raises(RuntimeError, match="contiguous float32"):
        argmax(torch.randn(2, 32).bfloat16())
    with pytest.raises(RuntimeError, match="contiguous float32"):
        argmax(torch.randn(32, 2).t())


def _rows(params: list[SamplingParams]) -> list[SamplingRow]:
    return [SamplingRow(p, prompt_token_ids=[1, 2], output_token_ids=[3]) for p in params]


@pytest.mark.parametrize("nan", [False, True])
def test_the_sampler_picks_the_same_tokens_with_and_without_the_kernel(nan):
    """Plain greedy rows, rows still under min_tokens (EOS masked) and a batch with a NaN row."""
    logits = torch.randn(8, 500, generator=torch.Generator().manual_seed(1))
    logits[:, 0] = logits.max() + 1  # EOS would win where it is not masked
    if nan:
        logits[2, 7] = float("nan")  # torch answers the NaN index
    params = [SamplingParams(max_tokens=8, min_tokens=4 if i % 2 else 0) for i in range(8)]
    with_kernel = Sampler(500, [0], "cpu", argmax).sample(logits, _rows(params))
    without = Sampler(500, [0], "cpu").sample(logits, _rows(params))
    assert [t.token_id for t in with_kernel] == [t.token_id for t in without]
    assert [t.token_id == 0 for t in with_kernel] == [i % 2 == 0 and not (nan and i == 2) for i in range(8)]
