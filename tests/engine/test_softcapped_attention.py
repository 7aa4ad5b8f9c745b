"""Soft-capped attention computes what transformers' Gemma 2 eager attention computes."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

import worker.engine.softcapped_attention as softcapped_attention_module
from worker.engine.softcapped_attention import softcapped_attention, softcapped_prefill

HEADS, KV_HEADS, DIM, SCALE, SOFTCAP = 4, 2, 16, 0.25, 2.0


class _Module(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS
    head_dim = DIM


def _eager(query, key, value, additive_mask):
    """transformers' Gemma 2 attention: `query` `[1, heads, q, dim]` -> `[1, q, heads, dim]`."""
    output, _ = eager_attention_forward(_Module().eval(), query, key, value, additive_mask, scaling=SCALE,
                                        softcap=SOFTCAP)
    return output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [256, 3])
def test_prefill_after_a_cached_prefix_matches_eager_attention(dtype, tile, monkeypatch):
    monkeypatch.setattr(softcapped_attention_module, "QUERY_TILE", tile)  # 3: tiles of 3, 3 and 1 rows
    generator = torch.Generator().manual_seed(0)
    prefix, chunk = 5, 7
    context = prefix + chunk
    query = (torch.randn(1, HEADS, chunk, DIM, generator=generator) * 3).to(dtype)
    key = (torch.randn(1, KV_HEADS, context, DIM, generator=generator) * 3).to(dtype)
    value = torch.randn(1, KV_HEADS, context, DIM, generator=generator).to(dtype)
    allowed = torch.arange(context)[None, :] <= torch.arange(prefix, context)[:, None]
    mask = torch.zeros(chunk, context, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    expected = _eager(query, key, value, mask[None, None])[0]
    actual = softcapped_prefill(query[0].transpose(0, 1), key[0], value[0], allowed, SCALE, SOFTCAP)
    # Equal up to rounding: the matmuls' blocking follows the tile's shape.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_decodes_of_different_lengths_match_eager_attention_one_by_one():
    """Equal up to the rounding of a softmax over a longer (masked) row."""
    generator = torch.Generator().manual_seed(1)
    lengths, width = [3, 9, 6], 9
    queries = torch.randn(len(lengths), HEADS, DIM, generator=generator) * 3
    keys = torch.randn(len(lengths), KV_HEADS, width, DIM, generator=generator) * 3
    values = torch.randn(len(lengths), KV_HEADS, width, DIM, generator=generator)
    bias = torch.zeros(len(lengths), 1, 1, width)
    for row, length in enumerate(lengths):
        bias[row, ..., length:] = float("-inf")
    packed = queries.reshape(len(lengths), KV_HEADS, HEADS // KV_HEADS, DIM)
    actual = softcapped_attention(packed, keys, values, bias, SCALE, SOFTCAP).reshape(len(lengths), HEADS, DIM)
    for row, length in enumerate(lengths):
        expected = _eager(queries[row][None, :, None], keys[row][None, :, :length], values[row][None, :, :length],
                          None)
        torch.testing.assert_close(actual[row], expected[0, 0], rtol=1e-5, atol=1e-6)


def test_capping_bounds_the_scores_that_reach_the_softmax():
    """Two keys whose raw scores differ by 1000 get probabilities within exp(2 * cap) of each other."""
    query = torch.tensor([[[[1.0, 0.0]]]])
    keys = torch.tensor([[[[1000.0, 0.0], [0.0, 0.0]]]])
    values = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    output = softcapped_attention(query, keys, values, torch.zeros(1), 1.0, SOFTCAP)
    weights = output[0, 0, 0]
    assert weights[1] > 0 and weights[0] / weights[1] <= torch.exp(torch.tensor(2 * SOFTCAP))
