"""Causal attention of one prefill chunk over its sequence's context: the cached prefix, then the chunk.

Two implementations, equal up to rounding:
- SDPA, one call per chunk (GQA inside). Used for float32 (the greedy-exactness oracle compares
  against transformers running this same kernel), on accelerators and with sliding windows.
- grouped matmuls, for bfloat16 on a CPU. torch's CPU flash kernel computes in float32 whatever the
  dtype; bfloat16 matmuls run on the matrix units. Per tile of query rows, each KV head's query
  heads are stacked as the rows of one batched matmul (GQA without repeating K/V), the scores get
  the scale and the causal mask in float32, the softmax runs in float32, and the probabilities,
  rounded to bfloat16, multiply the values. That is the precision of transformers' eager attention.
  Measured on bench-135m's shapes (9 heads, 3 KV heads, head_dim 64, 2 threads, freed memory kept
  as allocator.py arranges), SDPA took 1.8x the grouped time for a 256-token prompt, 1.5x for a
  2048-token chunk and 1.9x for a 64-token chunk after 512 cached tokens.

With the compiled kernel (cpu_kernels/causal_softmax.cpp, `softmax`), the scale, mask and softmax
are one in-place pass over the bfloat16 scores instead of five (a float32 copy, scale, mask,
softmax, bfloat16 copy). Measured on bench-135m's shapes (9 heads, 3 KV heads, 2 threads, freed
memory kept), 240 calls as for 8 prompts of 256 tokens over 30 layers: 107 -> 66 ms; a
2048-token prompt over 30 layers 577 -> 315 ms; 960 calls of 64-token chunks after 512 cached
tokens 259 -> 187 ms. Its exp is not torch's, so about one probability in 10,000 differs in its last
bfloat16 bit.

A soft-capped layer (Gemma 2) attends with softcapped_attention.py instead, whatever the dtype.

Tiles bound the float32 scores at `heads x QUERY_TILE x context`. Within a tile only the tile's own
keys (the last `rows` context positions) can lie after a query, so the mask is one small triangle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from worker.engine.cpu_kernels import CausalSoftmax
from worker.engine.softcapped_attention import softcapped_prefill

QUERY_TILE = 256


def prefill_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    context_start: int,
    scaling: float | None,
    sliding_window: int | None,
    allowed: Callable[[], torch.Tensor],
    softmax: CausalSoftmax | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """`queries` `[q, heads, dim]` at positions `context_start ..`; `keys`/`values`
    `[kv_heads, context_start + q, dim]`; `allowed()` gives the `[q, context]` mask (True where a
    query may attend; called only when the chunk has a prefix, a window or a `softcap`); `softmax` the
    compiled causal softmax for bfloat16 (None: torch's operations). Returns `[q, heads, dim]`."""
    scale = queries.shape[-1] ** -0.5 if scaling is None else scaling
    if softcap is not None:
        return softcapped_prefill(queries, keys, values, allowed(), scale, softcap)
    if queries.device.type == "cpu" and queries.dtype == torch.bfloat16 and sliding_window is None:
        return _grouped_matmul_attention(queries, keys, values, context_start, scale, softmax)
    plain_causal = context_start == 0 and sliding_window is None
    return _sdpa(queries, keys, values, None if plain_causal else allowed(), scale)


def _sdpa(queries, keys, values, allowed, scale):
    output = F.scaled_dot_product_attention(
        queries.transpose(0, 1).unsqueeze(0),
        keys.unsqueeze(0),
        values.unsqueeze(0),
        attn_mask=allowed,
        is_causal=allowed is None,
        scale=scale,
        enable_gqa=queries.shape[1] != keys.shape[0],
    )
    return output[0].transpose(0, 1)


def _grouped_matmul_attention(queries, keys, values, context_start, scale, softmax):
    num_tokens, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    group = num_heads // num_kv_heads
    output = torch.empty_like(queries)
    for first in range(0, num_tokens, QUERY_TILE):
        last = min(num_tokens, first + QUERY_TILE)
        rows, context = last - first, context_start + last
        # [rows, heads, dim] -> [kv_heads, group * rows, dim]: query head h uses KV head h // group.
        tile = queries[first:last].transpose(0, 1).reshape(num_kv_heads, group * rows, head_dim)
        scores = torch.bmm(tile, keys[:, :context].transpose(1, 2))
        if softmax is not None:
            softmax(scores.view(num_kv_heads * group, rows, context), scale)  # in place: now probabilities
            probs = scores
        else:
            scores = scores.float().view(num_kv_heads, group, rows, context).mul_(scale)
            scores[..., context - rows:].add_(_causal_bias(rows, scores.device))
            probs = scores.softmax(dim=-1).to(values.dtype).view(num_kv_heads, group * rows, context)
        tile_output = torch.bmm(probs, values[:, :context]).view(num_kv_heads, group, rows, head_dim)
        output[first:last].view(rows, num_kv_heads, group, head_dim).copy_(tile_output.permute(2, 0, 1, 3))
    return output


@functools.lru_cache(maxsize=8)
def _causal_bias(rows: int, device: torch.device) -> torch.Tensor:
    """`[rows, rows]` float32: 0 on and below the diagonal, -inf above (query i sees keys <= i)."""
    return torch.full((rows, rows), float("-inf"), device=device).triu_(1)
