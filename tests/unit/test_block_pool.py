"""The KV block pool: allocation, reference counts, prefix matching and eviction policies."""

from __future__ import annotations

import pytest

from services.block_hash import block_hashes, hash_root
from worker.engine.block_pool import BlockPool

ROOT = hash_root("model")
SIZE = 2


def cache_prompt(pool: BlockPool, tokens: list[int]) -> list[int]:
    """Allocate blocks for `tokens`, register every full block as a sequence would; still held."""
    blocks = pool.allocate(len(tokens) // SIZE)
    parent = ROOT
    for index, (block, block_hash) in enumerate(zip(blocks, block_hashes(tokens, SIZE, ROOT))):
        parent = pool.register(block, block_hash, tokens[index * SIZE:(index + 1) * SIZE], parent)
    return blocks


def match(pool: BlockPool, tokens: list[int]) -> list[int]:
    return pool.match_prefix(ROOT, block_hashes(tokens, SIZE, ROOT), tokens, SIZE)


def test_allocation_hands_out_lowest_free_ids_and_refuses_beyond_capacity():
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(2) == [2, 3]
    assert not pool.can_allocate(1)
    with pytest.raises(MemoryError):
        pool.allocate(1)
    pool.free([1, 0])
    assert pool.num_free == 2
    assert pool.allocate(2) == [0, 1]  # freed last-first: block 0 went back to the list first


def test_reference_counts_keep_shared_blocks_until_the_last_user_frees_them():
    pool = BlockPool(4)
    blocks = cache_prompt(pool, [1, 2, 3, 4])
    hit = match(pool, [1, 2, 3, 4, 5])
    assert hit == blocks
    pool.acquire(hit)
    assert [pool.blocks[b].ref_count for b in blocks] == [2, 2]
    pool.free(blocks)
    assert pool.num_free == 2  # still held by the second user
    pool.free(hit)
    assert pool.num_free == 4 and pool.num_cached == 2
    assert match(pool, [1, 2, 3, 4]) == blocks  # unused but still cached
    with pytest.raises(RuntimeError):
        pool.free([blocks[0]])


def test_a_cached_free_block_taken_by_a_hit_cannot_be_allocated_to_someone_else():
    pool = BlockPool(3)
    blocks = cache_prompt(pool, [1, 2, 3, 4])
    pool.free(blocks)
    pool.acquire(match(pool, [1, 2]))
    assert pool.num_free == 2
    assert sorted(pool.allocate(2)) == [1, 2]
    assert pool.blocks[0].ref_count == 1 and pool.blocks[0].block_hash is not None


def test_empty_blocks_are_used_before_any_cached_block_is_evicted():
    pool = BlockPool(3)
    cached = cache_prompt(pool, [1, 2])
    pool.free(cached)
    assert pool.allocate(2) == [1, 2]
    assert match(pool, [1, 2]) == cached
    assert pool.allocate(1) == cached  # now it must go
    assert match(pool, [1, 2]) == []


def _three_cached_prompts(policy: str) -> tuple[BlockPool, dict[str, int]]:
    """Blocks A=0, B=1, C=2 each hold a one-block prompt, cached in that order; block 3 stays empty."""
    pool = BlockPool(4, eviction_policy=policy)
    ids = {name: cache_prompt(pool, tokens)[0] for name, tokens in (("A", [1, 1]), ("B", [2, 2]), ("C", [3, 3]))}
    return pool, ids


def _reuse(pool: BlockPool, tokens: list[int], times: int) -> None:
    for _ in range(times):
        hit = match(pool, tokens)
        pool.acquire(hit)
        pool.free(hit)


def _eviction_order(pool: BlockPool) -> list[int]:
    return [pool.allocate(1)[0] for _ in range(pool.num_free)]


def test_lru_evicts_the_block_released_longest_ago():
    pool, ids = _three_cached_prompts("lru")
    pool.free([ids["B"]])
    pool.free([ids["A"]])
    pool.free([ids["C"]])
    _reuse(pool, [2, 2], 1)  # B becomes the most recently used
    assert _eviction_order(pool) == [3, ids["A"], ids["C"], ids["B"]]


def test_lfu_evicts_the_least_used_block_and_breaks_ties_by_recency():
    pool, ids = _three_cached_prompts("lfu")
    pool.free([ids["A"]])
    pool.free([ids["B"]])
    pool.free([ids["C"]])
    _reuse(pool, [1, 1], 2)  # A: 3 uses, released last
    _reuse(pool, [3, 3], 1)  # C: 2 uses
    _reuse(pool, [2, 2], 1)  # B: 2 uses, but released after C
    assert _eviction_order(pool) == [3, ids["C"], ids["B"], ids["A"]]


def test_fifo_evicts_the_oldest_cached_content_however_it_was_used():
    pool, ids = _three_cached_prompts("fifo")
    pool.free([ids["C"]])
    pool.free([ids["B"]])
    pool.free([ids["A"]])
    _reuse(pool, [1, 1], 3)
    assert _eviction_order(pool) == [3, ids["A"], ids["B"], ids["C"]]


def test_a_sequence_tail_is_evicted_before_its_prefix():
    pool = BlockPool(3)
    blocks = cache_prompt(pool, [1, 2, 3, 4, 5, 6])
    pool.free(blocks)
    assert pool.allocate(1) == [blocks[2]]
    assert match(pool, [1, 2, 3, 4, 5, 6]) == blocks[:2]


def test_blocks_taken_together_come_in_ascending_order_though_eviction_takes_the_tail_first():
    pool = BlockPool(3)
    blocks = cache_prompt(pool, [1, 2, 3, 4, 5, 6])
    pool.free(blocks)  # evictable tail first: 2, 1, 0
    assert pool.allocate(3) == [0, 1, 2]  # so a new sequence's blocks lie in memory in reading order
    assert pool.num_cached == 0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="lru"):
        BlockPool(4, eviction_policy="random")


def test_a_hash_collision_never_returns_another_prompts_block():
    pool = BlockPool(4)
    colliding = block_hashes([1, 2], SIZE, ROOT)[0]
    first = pool.allocate(1)[0]
    assert pool.register(first, colliding, [1, 2], ROOT) is not None
    # Another prompt whose block hashes to the same value: not served, not cached over the first.
    assert pool.match_prefix(ROOT, [colliding], [7, 8], SIZE) == []
    second = pool.allocate(1)[0]
    assert pool.register(second, colliding, [7, 8], ROOT) is None
    assert pool.match_prefix(ROOT, [colliding], [1, 2], SIZE) == [first]


def test_a_collision_deeper_in_the_chain_needs_the_same_parent_block_too():
    pool = BlockPool(6)
    cache_prompt(pool, [1, 1, 5, 5])  # P = [a | b]
    q_first = cache_prompt(pool, [2, 2])  # Q = [c | b]: its first block is cached as well
    q_tokens = [2, 2, 5, 5]
    p_second_hash = block_hashes([1, 1, 5, 5], SIZE, ROOT)[1]
    forced = [block_hashes(q_tokens, SIZE, ROOT)[0], p_second_hash]  # Q's second hash collides with P's
    assert pool.match_prefix(ROOT, forced, q_tokens, SIZE) == q_first


def test_a_child_of_an_evicted_parent_is_never_matched_and_gets_replaced():
    pool = BlockPool(3)
    blocks = cache_prompt(pool, [1, 2, 3, 4])
    pool.acquire([blocks[1]])  # keep the child alive while its parent is evicted
    pool.free(blocks)
    assert pool.allocate(2) == [blocks[0], 2]  # the empty block 2, then the evicted parent; ascending
    assert match(pool, [1, 2, 3, 4]) == []
    pool.free([2, blocks[0]])
    again = cache_prompt(pool, [1, 2])  # the parent content comes back in another block...
    assert match(pool, [1, 2, 3, 4]) == again  # ...but the old child is not trusted behind it
    child = pool.allocate(1)
    hashes = block_hashes([1, 2, 3, 4], SIZE, ROOT)
    pool.register(child[0], hashes[1], [3, 4], pool.blocks[again[0]].content_key)
    assert match(pool, [1, 2, 3, 4]) == again + child


def test_events_report_cached_and_evicted_hashes_once():
    pool = BlockPool(2)
    blocks = cache_prompt(pool, [1, 2, 3, 4])
    hashes = block_hashes([1, 2, 3, 4], SIZE, ROOT)
    events = pool.take_events()
    assert events.stored == hashes and events.removed == []
    assert pool.cached_hashes() == hashes
    pool.free(blocks)
    pool.allocate(2)
    events = pool.take_events()
    assert events.stored == [] and events.removed == [hashes[1], hashes[0]]
    assert pool.cached_hashes() == []


def test_equal_content_registered_twice_is_cached_once():
    pool = BlockPool(4)
    first = cache_prompt(pool, [1, 2])
    pool.take_events()
    second = cache_prompt(pool, [1, 2])
    assert pool.num_cached == 1 and pool.take_events().stored == []
    pool.free(second)
    assert pool.num_free == 3  # the duplicate went back empty
    assert match(pool, [1, 2]) == first


def test_with_caching_disabled_nothing_is_reused():
    pool = BlockPool(4, cache_enabled=False)
    blocks = cache_prompt(pool, [1, 2, 3, 4])
    assert pool.num_cached == 0 and match(pool, [1, 2, 3, 4]) == []
    pool.free(blocks)
    assert pool.num_free == 4 and pool.take_events().stored == []
