"""A contiguous copy of the decoding sequences' keys and values, kept from step to step.

Why: every decode step reads each running sequence's whole context. Gathering it from the paged
blocks copies all of it in every layer of every step, and on a CPU that copy costs more than the
attention itself. The workspace keeps, per layer, row r = the context of one decoding sequence
(`[kv_heads, capacity, head_dim]`), so a step only appends each sequence's new key/value and the
attention reads the rows in place. The paged cache stays the source of truth: a row is filled
from it (the same gather) when its sequence starts decoding or the row is stale, and rows are
dropped freely.

Invariants:
- rows are dense: row r < len(rows) holds positions [0, lengths[r]) of sequence rows[r];
- a step's decode batch is ordered by row, so decode token i attends to row i;
- the tensors never exceed `max_bytes`; a step that would need more uses the gather path instead
  (`plan` returns None) and the workspace starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.attention_metadata import gather_rows
from worker.engine.kv_cache import KVCache
from worker.engine.scheduler import ScheduledChunk
from worker.engine.sequence import Sequence

_CONTEXT_GRANULARITY = 128  # capacity grows in these steps, so growth copies are rare
_ROW_GRANULARITY = 8


@dataclass
class WorkspaceStep:
    """The device work of one step, repeated by every layer before its decode attention."""

    num_rows: int
    context_len: int  # the longest row after this step's token (what attention reads)
    move_from: torch.Tensor | None  # rows whose contents move down to fill holes...
    move_to: torch.Tensor | None  # ...and where they go
    refill_rows: torch.Tensor | None  # rows reloaded from the paged cache
    refill_gather: torch.Tensor | None  # their gather rows (see attention_metadata.gather_rows)
    refill_width: int  # tokens each refilled row receives (padded to whole blocks)
    write_rows: torch.Tensor  # [num_rows] = arange: row of each decode token's new key/value
    write_positions: torch.Tensor  # [num_rows] position each new key/value takes in its row


class DecodeWorkspace:
    def __init__(self, kv_cache: KVCache, max_bytes: int) -> None:
        self.kv_cache = kv_cache
        self.max_bytes = max_bytes
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.rows: list[Sequence] = []
        self.lengths: list[int] = []

    def plan(self, decodes: list[ScheduledChunk]) -> tuple[list[ScheduledChunk], WorkspaceStep | None]:
        """Assign rows to this step's decode chunks; returns the chunks in row order and the device
        work, or the chunks unchanged and None when the workspace would outgrow its budget."""
        wanted = {chunk.seq: chunk for chunk in decodes}
        rows, lengths, move_from, move_to = self._compact(wanted)
        placed = set(rows)
        for chunk in decodes:
            if chunk.seq not in placed:
                rows.append(chunk.seq)
                lengths.append(0)
        ordered = [wanted[seq] for seq in rows]
        # A row is stale unless it holds exactly the positions before its new token.
        refills = [row for row, chunk in enumerate(ordered) if lengths[row] != chunk.start and chunk.start > 0]
        block_size = self.kv_cache.block_size
        refill_width = max((-(-ordered[row].start // block_size) * block_size for row in refills), default=0)
        context_len = max(chunk.start + 1 for chunk in ordered)
        if not self._reserve(len(rows), max(context_len, refill_width)):
            self.rows, self.lengths = [], []
            return decodes, None
        self.rows, self.lengths = rows, [chunk.start + 1 for chunk in ordered]
        return ordered, self._device_step(ordered, refills, refill_width, context_len, move_from, move_to)

    def _compact(self, wanted: dict[Sequence, ScheduledChunk]):
        """Drop rows not decoding now; move the last kept rows into the holes so rows stay dense."""
        kept = [row for row, seq in enumerate(self.rows) if seq in wanted]
        count = len(kept)
        holes = [row for row in range(count) if self.rows[row] not in wanted]
        movers = [row for row in kept if row >= count]
        rows = [self.rows[row] for row in range(count)]
        lengths = self.lengths[:count]
        for source, target in zip(movers, holes):
            rows[target], lengths[target] = self.rows[source], self.lengths[source]
        return rows, lengths, movers, holes

    def _reserve(self, num_rows: int, context: int) -> bool:
        """Make the tensors at least `num_rows` x `context`; False if that exceeds the budget."""
        have_rows, have_context = (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)
        if num_rows <= have_rows and context <= have_context:
            return True
        rows = max(have_rows, -(-num_rows // _ROW_GRANULARITY) * _ROW_GRANULARITY)
        capacity = max(have_context, -(-context // _CONTEXT_GRANULARITY) * _CONTEXT_GRANULARITY)
        cache, shape = self.kv_cache, self.kv_cache.shape
        dims = (rows, shape.num_kv_heads, capacity, shape.head_dim)
        element = cache.keys[0].element_size()
        if 2 * shape.num_layers * element * rows * shape.num_kv_heads * capacity * shape.head_dim > self.max_bytes:
            self.keys, self.values = [], []
            return False
        self.keys = [self._grown(old, dims) for old in self.keys or [None] * shape.num_layers]
        self.values = [self._grown(old, dims) for old in self.values or [None] * shape.num_layers]
        return True

    def _grown(self, old: torch.Tensor | None, dims: tuple[int, ...]) -> torch.Tensor:
        # Zeros, not empty: attention multiplies the masked tail of a row by 0, and 0 * NaN is NaN.
        template = self.kv_cache.keys[0]
        new = torch.zeros(dims, dtype=template.dtype, device=template.device)
        if old is not None:
            new[: old.shape[0], :, : old.shape[2]] = old
        return new

    def _device_step(self, ordered, refills, refill_width, context_len, move_from, move_to) -> WorkspaceStep:
        device = self.kv_cache.keys[0].device

        def as_tensor(values):
            return torch.tensor(values, dtype=torch.long, device=device) if values else None

        refill_gather = None
        if refills:
            blocks = refill_width // self.kv_cache.block_size
            tables = [ordered[row].seq.block_table[:blocks] for row in refills]
            padded = [table + [0] * (blocks - len(table)) for table in tables]
            refill_gather = gather_rows(as_tensor(padded), self.kv_cache.shape.num_kv_heads)
        return WorkspaceStep(
            num_rows=len(ordered),
            context_len=context_len,
            move_from=as_tensor(move_from),
            move_to=as_tensor(move_to),
            refill_rows=as_tensor(refills),
            refill_gather=refill_gather,
            refill_width=refill_width,
            write_rows=torch.arange(len(ordered), device=device),
            write_positions=as_tensor([chunk.start for chunk in ordered]),
        )

    def layer_context(self, layer: int, step: WorkspaceStep, new_keys: torch.Tensor, new_values: torch.Tensor):
        """Bring layer `layer`'s rows up to date (moves, refills, then this step's keys/values
        `[rows, kv_heads, head_dim]`); returns its keys and values `[rows, kv_heads, context, head_dim]`."""
        pairs = ((self.keys[layer], self.kv_cache.keys[layer], new_keys),
                 (self.values[layer], self.kv_cache.values[layer], new_values))
        for rows, cache, new in pairs:
            if step.move_from is not None:
                rows.index_copy_(0, step.move_to, rows.index_select(0, step.move_from))
            if step.refill_rows is not None:
                num_blocks, num_kv_heads, block_size, head_dim = cache.shape
                flat = cache.view(num_blocks * num_kv_heads, block_size * head_dim)
                refilled = flat.index_select(0, step.refill_gather)
                refilled = refilled.view(-1, num_kv_heads, step.refill_width, head_dim)
                rows[:, :, : step.refill_width].index_copy_(0, step.refill_rows, refilled)
            rows[step.write_rows, :, step.write_positions] = new
        used = (slice(0, step.num_rows), slice(None), slice(0, step.context_len))
        return self.keys[layer][used], self.values[layer][used]
