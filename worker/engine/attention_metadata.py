"""Per-step data that every layer's paged attention reads, built once per step.

Index conventions (see kv_cache.py for the layout `[num_blocks, kv_heads, block_size, head_dim]`):
- "write rows" index the cache viewed as `[num_blocks * kv_heads * block_size, head_dim]`, one
  row per (new token, kv head);
- "gather rows" index the cache viewed as `[num_blocks * kv_heads, block_size * head_dim]`, one
  row per (block, kv head); gathered in order they form `[sequences, kv_heads, context, head_dim]`.

The metadata reaches the attention function through `running_step`, not as a keyword argument of the
model's forward: a decoder layer that does not pass its keyword arguments on to its attention
(StableLM's) would drop it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from worker.engine.cpu_kernels import CausalSoftmax, DecodeAttention, DecodeStep
from worker.engine.kv_cache import KVCache

if TYPE_CHECKING:
    from worker.engine.decode_workspace import DecodeWorkspace, WorkspaceStep


@dataclass
class PrefillSlice:
    query_start: int  # first row of this chunk in the flattened batch
    query_end: int
    context_start: int  # tokens of the sequence already in the cache before this chunk
    context_rows: torch.Tensor | None  # gather rows of its whole context; None when context_start == 0

    @property
    def context_len(self) -> int:
        return self.context_start + self.query_end - self.query_start


@dataclass
class PagedAttentionMetadata:
    """One step's view of the batch, shared by every layer (index tensors are built once per step)."""

    kv_cache: KVCache
    write_rows: torch.Tensor  # [tokens * kv_heads]: where each new key/value goes
    num_decodes: int
    decode_rows: torch.Tensor | None  # [num_decodes * kv_heads * max_blocks] gather rows, for the SDPA gather path
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks], zero-padded; None with a workspace
    decode_context_lens: torch.Tensor | None  # [num_decodes], new token included
    decode_max_context: int  # the (padded) context length decode attention reads
    workspace: DecodeWorkspace
    workspace_step: WorkspaceStep | None  # None: decodes gather their context from the blocks
    prefills: list[PrefillSlice]
    decode_kernel: DecodeAttention | None = None  # compiled CPU paged decode attention; None: SDPA
    decode_step: DecodeStep | None = None  # the kernel's write-then-attend, for steps without prefills
    prefill_softmax: CausalSoftmax | None = None  # compiled bfloat16 prefill softmax; None: torch's
    attended_layers: list[int] | None = None  # when a list: each attention call appends its layer index
    _masks: dict = field(default_factory=dict)

    def decode_mask(self, sliding_window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """`[num_decodes, 1, 1, max_context]`, additive: 0 where a decode token may attend, -inf elsewhere
        (a float mask goes straight into SDPA, a boolean one would be converted in every layer)."""
        key = ("decode", sliding_window)
        if key not in self._masks:
            lengths = self.decode_context_lens[:, None]
            positions = torch.arange(self.decode_max_context, device=lengths.device)[None, :]
            allowed = positions < lengths
            if sliding_window is not None:
                allowed &= positions >= lengths - sliding_window
            additive = torch.zeros(allowed.shape, dtype=dtype, device=lengths.device)
            self._masks[key] = additive.masked_fill_(~allowed, float("-inf"))[:, None, None, :]
        return self._masks[key]

    def decode_bounds(self, sliding_window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(starts, ends)` `[num_decodes]`: decode token i attends to context positions [starts[i], ends[i])
        (the same positions decode_mask allows)."""
        key = ("bounds", sliding_window)
        if key not in self._masks:
            ends = self.decode_context_lens
            starts = torch.zeros_like(ends) if sliding_window is None else (ends - sliding_window).clamp_(min=0)
            self._masks[key] = (starts, ends)
        return self._masks[key]

    def decode_gather_rows(self, num_kv_heads: int) -> torch.Tensor:
        """The decodes' gather rows: `decode_rows`, or for a step planned for the kernel (which has
        none) built from the block tables once, for every soft-capped layer."""
        if self.decode_rows is None:
            self.decode_rows = gather_rows(self.decode_block_tables, num_kv_heads)
        return self.decode_rows

    def prefill_mask(self, index: int, sliding_window: int | None) -> torch.Tensor:
        """`[chunk_len, context_len]`, True where a chunk token may attend (causal, offset by the prefix)."""
        key = ("prefill", index, sliding_window)
        if key not in self._masks:
            chunk = self.prefills[index]
            device = self.write_rows.device
            query_positions = torch.arange(chunk.context_start, chunk.context_len, device=device)[:, None]
            key_positions = torch.arange(chunk.context_len, device=device)[None, :]
            mask = key_positions <= query_positions
            if sliding_window is not None:
                mask &= key_positions > query_positions - sliding_window
            self._masks[key] = mask
        return self._masks[key]


_RUNNING_STEP: ContextVar[PagedAttentionMetadata | None] = ContextVar("paged_attention_step", default=None)


@contextmanager
def running_step(meta: PagedAttentionMetadata) -> Iterator[None]:
    """Every paged attention call inside the block (on this thread) reads `meta`."""
    token = _RUNNING_STEP.set(meta)
    try:
        yield
    finally:
        _RUNNING_STEP.reset(token)


def current_step() -> PagedAttentionMetadata | None:
    """The metadata of the step running on this thread; None outside `running_step`."""
    return _RUNNING_STEP.get()


def write_rows(slots: torch.Tensor, num_kv_heads: int, block_size: int) -> torch.Tensor:
    """Write rows for new keys shaped `[tokens, kv_heads, head_dim]` going to cache `slots` `[tokens]`."""
    blocks, offsets = slots // block_size, slots % block_size
    heads = torch.arange(num_kv_heads, device=slots.device)
    return ((blocks[:, None] * num_kv_heads + heads) * block_size + offsets[:, None]).flatten()


def gather_rows(block_tables: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Gather rows for `block_tables` `[sequences, blocks]`, sequence-major, then head, then block."""
    heads = torch.arange(num_kv_heads, device=block_tables.device)
    return (block_tables[:, None, :] * num_kv_heads + heads[None, :, None]).flatten()
