"""The compiled causal softmax of bfloat16 prefill scores (cpu_kernels/causal_softmax.cpp) against
torch's float32 sequence it replaces: scale, mask, softmax, one rounding to bfloat16."""

from __future__ import annotations

import pytest
import torch

from worker.engine.cpu_kernels import causal_softmax_kernel

softmax_ = causal_softmax_kernel()
pytestmark = pytest.mark.skipif(softmax_ is None, reason="the CPU kernels are not built here")


def _scores(tiles, rows, context, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(tiles, rows, context, generator=generator) * 8).to(torch.bfloat16)


def _torch_softmax(scores, scale):
    rows, context = scores.shape[-2:]
    allowed = torch.arange(context)[None, :] <= torch.arange(context - rows, context)[:, None]
    scaled = scores.float().mul(scale).masked_fill(~allowed, float("-inf"))
    return scaled.softmax(dim=-1).to(torch.bfloat16), allowed


@pytest.mark.parametrize("tiles, rows, context", [(1, 1, 1), (3, 5, 5), (27, 256, 256), (9, 64, 576), (2, 3, 2500),
                                                  (4, 17, 33)])
def test_softmax_is_torchs_up_to_a_last_bit_and_masks_later_keys_exactly(tiles, rows, context):
    scores = _scores(tiles, rows, context, seed=rows + context)
    expected, allowed = _torch_softmax(scores, 0.125)
    softmax_(scores, 0.125)
    masked = ~allowed.expand_as(scores)
    assert bool((scores[masked] == 0).all())  # a later key gets exactly nothing
    difference = (scores.float() - expected.float()).abs()
    one_step = torch.finfo(torch.bfloat16).eps * expected.float().abs()
    assert bool((difference <= one_step).all()), f"largest difference {difference.max().item()}"
    assert (difference > 0).float().mean().item() < 0.01
    torch.testing.assert_close(scores.float().sum(-1), torch.ones(tiles, rows), atol=2e-2, rtol=0)


def test_the_row_maximum_keeps_exp_in_range():
    scores = torch.full((1, 2, 4), 3000.0).to(torch.bfloat16)
    softmax_(scores, 1.0)
    assert torch.equal(scores[0, 1], torch.full((4,), 0.25, dtype=torch.bfloat16))
    assert torch.equal(scores[0, 0], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0], dtype=torch.bfloat16))


@pytest.mark.parametrize("scores, message", [
    (torch.zeros(2, 3, 4), "bfloat16"),
    (torch.zeros(2, 4, 3, dtype=torch.bfloat16).transpose(1, 2), "contiguous"),
    (torch.zeros(2, 5, 4, dtype=torch.bfloat16), "more query rows than context positions"),
])
def test_softmax_refuses_scores_it_cannot_read(scores, message):
    with pytest.raises(RuntimeError, match=message):
        softmax_(scores, 1.0)


def test_only_bfloat16_engines_use_it(make_engine):
    """float32 prefill attention stays SDPA, the computation the greedy oracle runs."""
    assert make_engine(dtype="bfloat16").runner.prefill_softmax is softmax_
    assert make_engine().runner.prefill_softmax is None
    assert make_engine(dtype="bfloat16", cpu_kernels=False).runner.prefill_softmax is None
