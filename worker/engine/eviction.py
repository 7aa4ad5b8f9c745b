"""Which cached-but-unused KV block to give up first: the `lru`, `lfu` and `fifo` policies.

A policy only ranks blocks; `EvictionQueue` keeps the unused cached blocks in that order. A block's
rank is fixed while it sits in the queue (it is unused, so nothing touches it), which lets the
queue be a heap with lazy deletion: removing a block (a prefix hit takes it back) just forgets it,
and a stale heap entry is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass
class BlockUsage:
    """What the policies look at, kept per block by the pool (ticks come from the pool's clock)."""

    cached_at: int = 0  # tick at which the block's content was registered in the cache
    last_used_at: int = 0  # tick at which its last user released it
    uses: int = 0  # sequences that have held the block since it was cached


class EvictionPolicy:
    name = ""

    def rank(self, usage: BlockUsage) -> tuple[int, ...]:
        """Smaller ranks are evicted first."""
        raise NotImplementedError


class LeastRecentlyUsed(EvictionPolicy):
    name = "lru"

    def rank(self, usage: BlockUsage) -> tuple[int, ...]:
        return (usage.last_used_at,)


class LeastFrequentlyUsed(EvictionPolicy):
    """Fewest uses first; among equals, the least recently used."""

    name = "lfu"

    def rank(self, usage: BlockUsage) -> tuple[int, ...]:
        return (usage.uses, usage.last_used_at)


class FirstInFirstOut(EvictionPolicy):
    """Oldest cached content first, however often or recently it was used."""

    name = "fifo"

    def rank(self, usage: BlockUsage) -> tuple[int, ...]:
        return (usage.cached_at,)


POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy for policy in (LeastRecentlyUsed, LeastFrequentlyUsed, FirstInFirstOut)
}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; expected one of {sorted(POLICIES)}") from None


class EvictionQueue:
    """The set of evictable block ids, ordered by a policy's rank (ties: lower block id first)."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy
        self._heap: list[tuple[tuple[int, ...], int]] = []
        self._members: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._members

    def push(self, block_id: int, usage: BlockUsage) -> None:
        rank = self.policy.rank(usage)
        self._members[block_id] = rank
        heapq.heappush(self._heap, (rank, block_id))
        if len(self._heap) > 2 * len(self._members) + 64:
            self._heap = [(rank, block) for block, rank in self._members.items()]
            heapq.heapify(self._heap)

    def remove(self, block_id: int) -> None:
        del self._members[block_id]

    def pop(self) -> int:
        """The next block to evict; raises IndexError when empty."""
        while True:
            rank, block_id = heapq.heappop(self._heap)
            if self._members.get(block_id) == rank:
                del self._members[block_id]
                return block_id
