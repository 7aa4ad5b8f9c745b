"""Turns a step's plan into the tensors of one forward pass over the flattened ragged batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.kv_cache import KVCache
from worker.engine.attention_metadata import PagedAttentionMetadata, PrefillSlice, gather_rows, write_rows
from worker.engine.cpu_kernels import CausalSoftmax, DecodeAttention, DecodeStep
from worker.engine.decode_workspace import DecodeWorkspace
from worker.engine.scheduler import ScheduledChunk, SchedulerOutput


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [1, tokens]
    position_ids: torch.Tensor  # [1, tokens]
    logits_indices: torch.Tensor  # [sampled] rows whose next-token logits are needed
    sampled_chunks: list[ScheduledChunk]  # in the order of logits_indices
    metadata: PagedAttentionMetadata


def build_step_inputs(
    plan: SchedulerOutput, kv_cache: KVCache, workspace: DecodeWorkspace, device: torch.device,
    decode_kernel: DecodeAttention | None = None, decode_step: DecodeStep | None = None,
    prefill_softmax: CausalSoftmax | None = None,
) -> StepInputs:
    """Rows: every decode token (in the workspace's row order when SDPA reads the workspace), then
    every prefill chunk's tokens."""
    block_size = kv_cache.block_size
    num_kv_heads = kv_cache.shape.num_kv_heads
    token_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    logits_rows: list[int] = []
    sampled: list[ScheduledChunk] = []

    # The kernel reads the blocks in place; SDPA reads the workspace's rows (or a gather).
    use_workspace = plan.decodes and decode_kernel is None
    decodes, workspace_step = workspace.plan(plan.decodes) if use_workspace else (plan.decodes, None)
    tables: list[list[int]] = []
    for row, chunk in enumerate(decodes):
        seq, position = chunk.seq, chunk.start
        token_ids.append(seq.token_ids[position])
        positions.append(position)
        slots.append(seq.block_table[position // block_size] * block_size + position % block_size)
        tables.append(seq.block_table)
        if chunk.completes_sequence:
            logits_rows.append(row)
            sampled.append(chunk)

    prefills: list[PrefillSlice] = []
    for chunk in plan.prefills:
        seq, start, end = chunk.seq, chunk.start, chunk.start + chunk.num_tokens
        table = seq.block_table
        first_row = len(token_ids)
        token_ids += seq.token_ids[start:end]
        positions += range(start, end)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
        context_rows = None
        if start > 0:
            blocks = torch.tensor([table[: -(-end // block_size)]], dtype=torch.long, device=device)
            context_rows = gather_rows(blocks, num_kv_heads)
        prefills.append(PrefillSlice(first_row, len(token_ids), start, context_rows))
        if chunk.completes_sequence:
            logits_rows.append(len(token_ids) - 1)
            sampled.append(chunk)

    decode_rows = decode_tables = decode_lengths = None
    decode_max_context = 0
    if workspace_step is not None:
        decode_max_context = workspace_step.context_len
    elif tables:
        width = max(len(table) for table in tables)
        padded = [table + [0] * (width - len(table)) for table in tables]
        decode_tables = torch.tensor(padded, dtype=torch.long, device=device)
        if decode_kernel is None:
            decode_rows = gather_rows(decode_tables, num_kv_heads)
        decode_max_context = width * block_size
    if tables:
        decode_lengths = torch.tensor([p + 1 for p in positions[: len(tables)]], dtype=torch.long, device=device)

    metadata = PagedAttentionMetadata(
        kv_cache=kv_cache,
        write_rows=write_rows(torch.tensor(slots, dtype=torch.long, device=device), num_kv_heads, block_size),
        num_decodes=len(plan.decodes),
        decode_rows=decode_rows,
        decode_block_tables=decode_tables,
        decode_context_lens=decode_lengths,
        decode_max_context=decode_max_context,
        workspace=workspace,
        workspace_step=workspace_step,
        prefills=prefills,
        decode_kernel=decode_kernel,
        decode_step=decode_step,
        prefill_softmax=prefill_softmax,
    )
    return StepInputs(
        input_ids=torch.tensor([token_ids], dtype=torch.long, device=device),
        position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampled_chunks=sampled,
        metadata=metadata,
    )
