"""Attention with logit soft-capping (Gemma 2): each score becomes `cap * tanh(score / cap)` before the mask.

SDPA and the compiled kernels have no soft-capping, so this is transformers' eager attention, in its
order of operations (the greedy oracle runs that code): scores in the model's dtype, scaled,
capped, masked, a softmax in float32 rounded back to the dtype, times the values. The query heads
that share a KV head are stacked as that head's query rows, so K and V are never repeated.
"""

from __future__ import annotations

import torch


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
    `allowed` `[q, context]` (True where a query may attend); returns `[q, heads, dim]`."""
    num_tokens, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[0]
    grouped = queries.transpose(0, 1).reshape(num_kv_heads, num_heads // num_kv_heads, num_tokens, head_dim)
    bias = torch.zeros(allowed.shape, dtype=queries.dtype, device=queries.device).masked_fill_(~allowed, float("-inf"))
    output = softcapped_attention(grouped, keys[:, None], values[:, None], bias, scale, softcap)
    return output.reshape(num_heads, num_tokens, head_dim).transpose(0, 1)
