"""Attention with logit soft-capping (Gemma 2): each score becomes `cap * tanh(score / cap)` before the mask.

SDPA and the compiled kernels have no soft-capping, so this is transformers' eager attention, in its
order of operations (the greedy oracle runs that code): scores in the model's dtype, scaled,
capped, masked, a softmax in float32 rounded back to the dtype, times the values. The query heads
that share a KV head are stacked as that head's query rows, so K and V are never repeated.
"""

from __future__ import annotations

import torch

QUERY_TILE = 256


def softcapped_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    """`queries` `[..., kv_heads, rows, dim]`, `keys`/`values` `[..., kv_heads, context, dim]`, `bias`
    additive (-inf where a row may not attend) and broadcastable to `[..., kv_heads, rows, context]`;
    returns `[..., kv_heads, rows, dim]`."""
    scores = torch.matmul(queries, keys.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    probs = (scores + bias).softmax(dim=-1, dtype=torch.float32).to(values.dtype)
    return torch.matmul(probs, values)


def softcapped_prefill(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor, scale: float,
    softcap: float,
) -> torch.Tensor:
    """One prefill chunk: `queries` `[q, heads, dim]`, `keys`/`values` `[kv_heads, context, dim]`,
    `allowed` `[q, context]` (True where a query may attend); returns `[q, heads, dim]`.

    Tiles of QUERY_TILE query rows bound the scores at `heads x QUERY_TILE x context` (a 2048-token
    chunk of Gemma 2 2B's 8 heads would otherwise hold 128 MiB of float32 probabilities per layer)."""
    num_tokens, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    output = torch.empty_like(queries)
    for first in range(0, num_tokens, QUERY_TILE):
        last = min(num_tokens, first + QUERY_TILE)
        tile = queries[first:last].transpose(0, 1).reshape(num_kv_heads, num_heads // num_kv_heads, -1, head_dim)
        bias = torch.zeros(last - first, allowed.shape[1], dtype=queries.dtype, device=queries.device)
        bias.masked_fill_(~allowed[first:last], float("-inf"))
        tile_output = softcapped_attention(tile, keys[:, None], values[:, None], bias, scale, softcap)
        output[first:last] = tile_output.reshape(num_heads, last - first, head_dim).transpose(0, 1)
    return output
