"""The fixed set of KV cache blocks: allocation, reference counts and the prefix cache.

Invariants:
- every block is in exactly one of three states: in use (ref_count > 0), free and empty, or free
  and cached (its content registered, waiting in the eviction queue to be reused or given up);
- a registered block is found by its chained hash, and a lookup returns it only if its own token
  ids AND the identity of the block before it match: a hash collision, forced or not, can never
  hand out a block computed for another prompt. A block's identity (`content_key`) is a number
  given at registration and never reused, so a child whose parent was evicted can no longer be
  reached through a new parent with equal content: it was computed with the old one;
- allocation takes empty blocks first and evicts cached ones (by the policy) only when none are
  left; `free` releases a sequence's blocks last-first, so its tail is evicted before its prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.block_hash import BlockHash
from worker.engine.eviction import BlockUsage, EvictionQueue, make_policy

# What a registered block's content follows: the hash root for a first block, else the parent's key.
ParentKey = bytes | int


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None  # set while the block's content is registered
    token_ids: tuple[int, ...] = ()
    parent: ParentKey | None = None
    content_key: int = 0
    usage: BlockUsage = field(default_factory=BlockUsage)


@dataclass
class BlockEvents:
    """Hashes that became cached / stopped being cached since the last drain (for the prefix index)."""

    stored: list[BlockHash] = field(default_factory=list)
    removed: list[BlockHash] = field(default_factory=list)


class BlockPool:
    def __init__(self, num_blocks: int, eviction_policy: str = "lru", cache_enabled: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"a block pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.cache_enabled = cache_enabled
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        self._empty: deque[int] = deque(range(num_blocks))
        self._evictable = EvictionQueue(make_policy(eviction_policy))
        self._by_hash: dict[BlockHash, Block] = {}
        self._live_keys: set[int] = set()
        self._clock = 0
        self._next_key = 1
        self._events = BlockEvents()

    # -- capacity -------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that `allocate` can hand out now (empty ones plus evictable cached ones)."""
        return len(self._empty) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        """Blocks whose content is registered, in use or not."""
        return len(self._by_hash)

    def can_allocate(self, count: int) -> bool:
        return count <= self.num_free

    # -- allocation -----------------------------------------------------------------------------
    def allocate(self, count: int) -> list[int]:
        """`count` blocks with ref_count 1, in ascending id order; raises MemoryError (taking nothing)
        if too few are free.

        Ascending because a sequence's blocks are then read in the order they lie in memory, which
        the CPU's prefetcher follows; evicted blocks come tail first (see `free`), so unsorted a
        prompt's blocks would lie backwards. Measured on decode attention (bench-135m, float32, the
        block tables of a bench's fourth round): see docs/ARCHITECTURE.md, "Decode attention kernel".
        """
        if count > self.num_free:
            raise MemoryError(f"asked for {count} KV blocks, {self.num_free} free")
        taken = []
        for _ in range(count):
            block = self.blocks[self._empty.popleft()] if self._empty else self._evict()
            block.ref_count = 1
            taken.append(block.block_id)
        return sorted(taken)

    def acquire(self, block_ids: Sequence[int]) -> None:
        """Take one more reference on each block (a prefix-cache hit); free cached blocks leave the queue."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self._evictable.remove(block_id)
            block.ref_count += 1
            block.usage.uses += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block, last block first."""
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._clock += 1
                block.usage.last_used_at = self._clock
                if block.block_hash is None:
                    self._empty.append(block_id)
                else:
                    self._evictable.push(block_id, block.usage)

    # -- prefix cache ---------------------------------------------------------------------------
    def match_prefix(self, root: BlockHash, hashes: Sequence[BlockHash], token_ids: Sequence[int],
                     block_size: int) -> list[int]:
        """The registered blocks holding the longest prefix of `token_ids` (not yet acquired)."""
        if not self.cache_enabled:
            return []
        matched: list[int] = []
        parent: ParentKey = root
        for index, block_hash in enumerate(hashes):
            block = self._by_hash.get(block_hash)
            tokens = tuple(token_ids[index * block_size:(index + 1) * block_size])
            if block is None or block.parent != parent or block.token_ids != tokens:
                break
            matched.append(block.block_id)
            parent = block.content_key
        return matched

    def register(self, block_id: int, block_hash: BlockHash, token_ids: Sequence[int],
                 parent: ParentKey | None) -> int | None:
        """Record that in-use `block_id` now holds a full block of `token_ids` following `parent`.

        Returns the content key that later blocks of the same sequence pass as their `parent`, or
        None when the content cannot be cached (caching off, unknown parent, or a hash collision).
        If equal content is already registered, that block's key is returned and `block_id` stays
        unregistered (it is simply freed later).
        """
        if not self.cache_enabled or parent is None:
            return None
        tokens = tuple(token_ids)
        existing = self._by_hash.get(block_hash)
        if existing is not None:
            if existing.parent == parent and existing.token_ids == tokens:
                return existing.content_key
            if self._parent_alive(existing.parent):
                return None  # a genuine collision: keep the first owner, cache nothing new
            self._unregister(existing, announce=False)  # an orphan: its parent was evicted
        block = self.blocks[block_id]
        if block.block_hash is not None:
            raise RuntimeError(f"block {block_id} is already registered")
        self._clock += 1
        block.block_hash, block.token_ids, block.parent = block_hash, tokens, parent
        block.content_key = self._next_key
        self._next_key += 1
        block.usage = BlockUsage(cached_at=self._clock, last_used_at=self._clock, uses=1)
        self._by_hash[block_hash] = block
        self._live_keys.add(block.content_key)
        if existing is None:
            self._events.stored.append(block_hash)
        return block.content_key

    def cached_hashes(self) -> list[BlockHash]:
        """Every registered hash. One C-level copy under the GIL, so another thread may call it
        while the engine thread changes the cache."""
        return list(self._by_hash)

    def take_events(self) -> BlockEvents:
        events, self._events = self._events, BlockEvents()
        return events

    # -- internals ------------------------------------------------------------------------------
    def _evict(self) -> Block:
        block = self.blocks[self._evictable.pop()]
        self._unregister(block, announce=True)
        return block

    def _unregister(self, block: Block, announce: bool) -> None:
        """Forget `block`'s content; a free cached block moves to the empty list."""
        if block.ref_count == 0 and block.block_id in self._evictable:
            self._evictable.remove(block.block_id)
            self._empty.append(block.block_id)
        del self._by_hash[block.block_hash]
        self._live_keys.discard(block.content_key)
        if announce:
            self._events.removed.append(block.block_hash)
        block.block_hash, block.token_ids, block.parent, block.content_key = None, (), None, 0

    def _parent_alive(self, parent: ParentKey | None) -> bool:
        return isinstance(parent, bytes) or parent in self._live_keys
