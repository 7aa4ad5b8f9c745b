"""Attention over the paged KV cache, plugged into transformers' attention interface.

The model runs one forward pass per step over a ragged batch flattened into batch dimension 1:
first the decode tokens (one per sequence), then prefill chunks (several tokens of one sequence
each). The HF modeling code runs unchanged with `attn_implementation=ATTENTION_NAME`; the
step's `PagedAttentionMetadata` reaches `paged_attention` through `attention_metadata.running_step`,
which the model runner holds around the model's forward. No mask function is registered for this name, so
transformers' `create_causal_mask` returns None without building anything (masks are built once
per step here, from the metadata).

Per layer, in a step without prefill chunks and with the compiled kernel: one call
(`paged_decode_step`) writes the new keys/values and attends. Otherwise the new keys/values are
written into the cache at the slot mapping, then
- decode tokens attend in one call. With the compiled CPU kernel (cpu_kernels/), it reads the
  paged blocks in place through the block tables, with per-sequence bounds. Otherwise one batched
  SDPA with a length mask over `[num_decodes, kv_heads, max_context, head_dim]`: the rows of the
  decode workspace (decode_workspace.py), which keeps the decoding contexts from step to step, or,
  when it is over budget, the block tables gathered by one index_select of contiguous block rows.
  The query heads sharing a KV head are packed as extra query rows (GQA without repeating K/V);
- each prefill chunk attends causally over its sequence's cached prefix plus itself (a chunk with
  no prefix uses the fresh keys directly): prefill_attention.py.
A layer with logit soft-capping (Gemma 2) reads the same contexts but attends with
softcapped_attention.py in place of SDPA and the kernel.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from worker.engine.attention_metadata import PagedAttentionMetadata, current_step
from worker.engine.prefill_attention import prefill_attention
from worker.engine.softcapped_attention import softcapped_attention

ATTENTION_NAME = "ferrum_paged"


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """`query` `[1, heads, tokens, head_dim]`, `key`/`value` `[1, kv_heads, tokens, head_dim]`;
    returns `[1, tokens, heads, head_dim]`."""
    meta = current_step()
    if meta is None:
        raise RuntimeError(f"{ATTENTION_NAME} attention runs only inside an engine step (running_step)")
    layer = module.layer_idx
    if meta.attended_layers is not None:
        meta.attended_layers.append(layer)
    key_cache, value_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    if meta.decode_step is not None and not meta.prefills and softcap is None:  # most steps: one call
        starts, ends = meta.decode_bounds(sliding_window)
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return meta.decode_step(query, key, value, key_cache, value_cache, meta.write_rows,
                                meta.decode_block_tables, starts, ends, scale), None
    num_heads, num_tokens = query.shape[1], query.shape[2]
    new_keys = key[0].transpose(0, 1)  # [tokens, kv_heads, head_dim]
    new_values = value[0].transpose(0, 1)
    _write(key_cache, meta.write_rows, new_keys)
    _write(value_cache, meta.write_rows, new_values)

    queries = query[0].transpose(0, 1)  # [tokens, heads, head_dim]
    if not meta.prefills:
        return _decode(layer, queries, new_keys, new_values, meta, scaling, sliding_window, softcap).unsqueeze(0), None
    output = torch.empty(num_tokens, num_heads, value.shape[-1], dtype=query.dtype, device=query.device)
    if meta.num_decodes:
        count = meta.num_decodes
        output[:count] = _decode(layer, queries[:count], new_keys[:count], new_values[:count], meta, scaling,
                                 sliding_window, softcap)
    for index, chunk in enumerate(meta.prefills):
        rows = slice(chunk.query_start, chunk.query_end)
        if chunk.context_start == 0:
            keys, values = new_keys[rows].transpose(0, 1), new_values[rows].transpose(0, 1)
        else:
            key_space, value_space = meta.kv_cache.gather_buffers(chunk.context_rows.numel())
            keys = _gather(key_cache, chunk.context_rows, key_space, 1)[0, :, : chunk.context_len]
            values = _gather(value_cache, chunk.context_rows, value_space, 1)[0, :, : chunk.context_len]
        output[rows] = prefill_attention(queries[rows], keys, values, chunk.context_start, scaling, sliding_window,
                                         partial(meta.prefill_mask, index, sliding_window), meta.prefill_softmax,
                                         softcap)
    return output.unsqueeze(0), None


def _write(cache: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> None:
    cache.view(-1, cache.shape[-1]).index_copy_(0, rows, new.reshape(-1, new.shape[-1]))


def _gather(cache: torch.Tensor, rows: torch.Tensor, into: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """`[sequences, kv_heads, context, head_dim]` from gather `rows`, written `into` a scratch buffer."""
    num_blocks, num_kv_heads, block_size, head_dim = cache.shape
    torch.index_select(cache.view(num_blocks * num_kv_heads, block_size * head_dim), 0, rows, out=into)
    return into.view(num_sequences, num_kv_heads, -1, head_dim)


def _decode(layer: int, queries, new_keys, new_values, meta: PagedAttentionMetadata, scaling, sliding_window,
            softcap):
    """All single-token sequences at once: `queries` `[decodes, heads, head_dim]` -> same shape."""
    num_decodes, num_heads, head_dim = queries.shape
    num_kv_heads = new_keys.shape[1]
    # The query heads sharing a KV head become that head's query rows: GQA without repeating K/V.
    packed = queries.reshape(num_decodes, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scale = head_dim**-0.5 if scaling is None else scaling
    if meta.decode_kernel is not None and softcap is None:
        starts, ends = meta.decode_bounds(sliding_window)
        output = meta.decode_kernel(packed, meta.kv_cache.keys[layer], meta.kv_cache.values[layer],
                                    meta.decode_block_tables, starts, ends, scale)
        return output.reshape(num_decodes, num_heads, -1)
    keys, values = _decode_context(layer, meta, new_keys, new_values)
    mask = meta.decode_mask(sliding_window, queries.dtype)
    if softcap is not None:
        output = softcapped_attention(packed, keys, values, mask, scale, softcap)
    else:
        output = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=scaling)
    return output.reshape(num_decodes, num_heads, -1)


def _decode_context(layer: int, meta: PagedAttentionMetadata, new_keys, new_values):
    """The decodes' keys and values `[decodes, kv_heads, context, head_dim]` for SDPA: the
    workspace's rows when it holds them, else gathered from the block tables."""
    if meta.workspace_step is not None:
        return meta.workspace.layer_context(layer, meta.workspace_step, new_keys, new_values)
    key_cache, value_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    rows = meta.decode_gather_rows(key_cache.shape[1])
    key_space, value_space = meta.kv_cache.gather_buffers(rows.numel())
    keys = _gather(key_cache, rows, key_space, meta.num_decodes)
    values = _gather(value_cache, rows, value_space, meta.num_decodes)
    return keys, values


AttentionInterface.register(ATTENTION_NAME, paged_attention)
