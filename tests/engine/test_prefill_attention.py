"""Prefill attention (worker/engine/prefill_attention.py) against float32 SDPA over the same context:
bfloat16 chunks take the grouped-matmul path (its softmax torch's or the compiled kernel's), float32
ones SDPA, and all agree with the reference for chunks with and without a cached prefix, across
query-tile boundaries and GQA groupings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worker.engine.cpu_kernels import causal_softmax_kernel
from worker.engine.prefill_attention import QUERY_TILE, prefill_attention

compiled_softmax = causal_softmax_kernel()
needs_kernels = pytest.mark.skipif(compiled_softmax is None, reason="the CPU kernels are not built here")
SOFTMAXES = [pytest.param(None, id="torch-softmax"), pytest.param(compiled_softmax, id="compiled-softmax",
                                                                  marks=needs_kernels)]


def _case(chunk, prefix, heads, kv_heads, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(chunk, heads, head_dim, generator=generator).to(dtype)
    keys = torch.randn(kv_heads, prefix + chunk, head_dim, generator=generator).to(dtype)
    values = torch.randn(kv_heads, prefix + chunk, head_dim, generator=generator).to(dtype)
    return queries, keys, values


def _allowed(chunk, prefix, window=None):
    query_positions = torch.arange(prefix, prefix + chunk)[:, None]
    key_positions = torch.arange(prefix + chunk)[None, :]
    allowed = key_positions <= query_positions
    if window is not None:
        allowed &= key_positions > query_positions - window
    return allowed


def _reference(queries, keys, values, allowed, scale):
    group = queries.shape[1] // keys.shape[0]
    output = F.scaled_dot_product_attention(
        queries.float().transpose(0, 1), keys.float().repeat_interleave(group, 0),
        values.float().repeat_interleave(group, 0), attn_mask=allowed, scale=scale)
    return output.transpose(0, 1)


CHUNKS = [(1, 0), (5, 0), (QUERY_TILE, 0), (QUERY_TILE + 3, 0), (2 * QUERY_TILE + 40, 0),  # no prefix
          (1, 37), (64, 512), (QUERY_TILE + 1, 100)]  # after a cached prefix


@pytest.mark.parametrize("chunk, prefix", CHUNKS)
@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (4, 4), (8, 1)])
@pytest.mark.parametrize("dtype, tolerance, softmax", [
    pytest.param(torch.bfloat16, 3e-2, None, id="bfloat16-torch-softmax"),
    pytest.param(torch.bfloat16, 3e-2, compiled_softmax, id="bfloat16-compiled-softmax", marks=needs_kernels),
    pytest.param(torch.float32, 2e-6, None, id="float32-sdpa"),
])
def test_prefill_attention_matches_float32_sdpa(chunk, prefix, heads, kv_heads, dtype, tolerance, softmax):
    queries, keys, values = _case(chunk, prefix, heads, kv_heads, 64, dtype, seed=chunk + prefix)
    allowed = _allowed(chunk, prefix)
    masks_asked = []

    def mask():
        masks_asked.append(True)
        return allowed

    output = prefill_attention(queries, keys, values, prefix, 0.1, None, mask, softmax)
    assert output.shape == queries.shape and output.dtype == dtype
    expected = _reference(queries, keys, values, allowed, 0.1)
    torch.testing.assert_close(output.float(), expected, atol=tolerance, rtol=tolerance)
    # The grouped path needs no mask; SDPA needs one only for a chunk after a prefix.
    assert bool(masks_asked) == (dtype == torch.float32 and prefix > 0)


@pytest.mark.parametrize("softmax", SOFTMAXES)
def test_a_query_never_sees_a_later_key_in_bfloat16(softmax):
    """Changing the keys and values after a query's position leaves that query's output alone."""
    queries, keys, values = _case(QUERY_TILE + 20, 30, 6, 2, 64, torch.bfloat16)
    before = prefill_attention(queries, keys, values, 30, None, None, lambda: None, softmax)
    keys[:, 30 + 200:], values[:, 30 + 200:] = 0.5, -7.0
    after = prefill_attention(queries, keys, values, 30, None, None, lambda: None, softmax)
    assert torch.equal(before[:200], after[:200])
    assert not torch.equal(before[200:], after[200:])


def test_sliding_window_in_bfloat16_masks_keys_before_the_window():
    queries, keys, values = _case(40, 10, 4, 2, 64, torch.bfloat16)
    allowed = _allowed(40, 10, window=8)
    output = prefill_attention(queries, keys, values, 10, None, 8, lambda: allowed)
    expected = _reference(queries, keys, values, allowed, 64**-0.5)
    torch.testing.assert_close(output.float(), expected, atol=3e-2, rtol=3e-2)
