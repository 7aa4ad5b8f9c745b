"""The decode workspace: rows follow the decoding sequences and always equal the paged cache's content."""

from __future__ import annotations

import torch

from services.block_hash import hash_root
from services.types import GenerateRequest, SamplingParams
from worker.engine.decode_workspace import DecodeWorkspace
from worker.engine.kv_cache import KVCache, KVShape
from worker.engine.scheduler import ScheduledChunk
from worker.engine.sequence import Sequence

BLOCK = 4
SHAPE = KVShape(num_layers=2, num_kv_heads=2, head_dim=3)


def make_cache() -> KVCache:
    cache = KVCache(SHAPE, num_blocks=32, block_size=BLOCK, dtype=torch.float32, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for tensor in cache.keys + cache.values:
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return cache


def decoding(name: str, position: int, blocks: list[int]) -> ScheduledChunk:
    """A sequence about to compute the token at `position`, its context in `blocks`."""
    request = GenerateRequest(name, "m", list(range(position + 1)), SamplingParams())
    seq = Sequence.from_request(request, hash_root("m"), None)
    seq.block_table, seq.num_computed_tokens = blocks, position
    return ScheduledChunk(seq, position, 1)


def advance(chunk: ScheduledChunk) -> ScheduledChunk:
    return ScheduledChunk(chunk.seq, chunk.start + 1, 1)


def run_layer(workspace: DecodeWorkspace, cache: KVCache, ordered, step, layer=0):
    """Write each token's new key into the paged cache like the attention does, then the workspace."""
    new_keys = torch.randn(len(ordered), SHAPE.num_kv_heads, SHAPE.head_dim)
    for row, chunk in enumerate(ordered):
        block = chunk.seq.block_table[chunk.start // BLOCK]
        cache.keys[layer][block, :, chunk.start % BLOCK] = new_keys[row]
        cache.values[layer][block, :, chunk.start % BLOCK] = new_keys[row]
    return workspace.layer_context(layer, step, new_keys, new_keys.clone())


def assert_rows_match_cache(cache: KVCache, ordered, keys, layer=0):
    for row, chunk in enumerate(ordered):
        length = chunk.start + 1
        expected = cache.keys[layer][chunk.seq.block_table].transpose(0, 1).flatten(1, 2)[:, :length]
        assert torch.equal(keys[row, :, :length], expected), f"row {row}"


def test_rows_are_filled_once_then_only_appended():
    cache = make_cache()
    workspace = DecodeWorkspace(cache, max_bytes=1 << 20)
    chunks = [decoding("a", 5, [3, 7]), decoding("b", 2, [9])]
    ordered, step = workspace.plan(chunks)
    assert ordered == chunks and step.refill_rows.tolist() == [0, 1]
    keys, _ = run_layer(workspace, cache, ordered, step)
    assert_rows_match_cache(cache, ordered, keys)

    chunks = [advance(chunk) for chunk in chunks]
    ordered, step = workspace.plan(chunks)
    assert step.refill_rows is None and step.move_from is None
    keys, _ = run_layer(workspace, cache, ordered, step)
    assert_rows_match_cache(cache, ordered, keys)


def test_a_finished_sequence_leaves_a_hole_the_last_row_fills():
    cache = make_cache()
    workspace = DecodeWorkspace(cache, max_bytes=1 << 20)
    a, b, c = decoding("a", 3, [1]), decoding("b", 6, [2, 3]), decoding("c", 1, [4])
    ordered, step = workspace.plan([a, b, c])
    run_layer(workspace, cache, ordered, step)
    newcomer = decoding("d", 9, [5, 6, 8])
    ordered, step = workspace.plan([advance(b), advance(c), newcomer])  # a finished
    assert [chunk.seq for chunk in ordered] == [c.seq, b.seq, newcomer.seq]
    assert (step.move_from.tolist(), step.move_to.tolist()) == ([2], [0])
    assert step.refill_rows.tolist() == [2]
    keys, _ = run_layer(workspace, cache, ordered, step)
    assert_rows_match_cache(cache, ordered, keys)


def test_a_sequence_back_from_preemption_is_refilled():
    cache = make_cache()
    workspace = DecodeWorkspace(cache, max_bytes=1 << 20)
    a = decoding("a", 5, [3, 7])
    ordered, step = workspace.plan([a])
    run_layer(workspace, cache, ordered, step)
    recomputed = ScheduledChunk(a.seq, 9, 1)  # it went away, was recomputed into the same blocks
    recomputed.seq.block_table = [3, 7, 11]
    ordered, step = workspace.plan([recomputed])
    assert step.refill_rows.tolist() == [0]
    keys, _ = run_layer(workspace, cache, ordered, step)
    assert_rows_match_cache(cache, ordered, keys)


def test_past_its_budget_the_workspace_steps_aside():
    cache = make_cache()
    workspace = DecodeWorkspace(cache, max_bytes=1024)  # less than one granule of rows
    chunks = [decoding("a", 5, [3, 7])]
    ordered, step = workspace.plan(chunks)
    assert ordered == chunks and step is None
    assert workspace.rows == [] and workspace.keys == []
