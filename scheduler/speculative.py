"""Short-lived "this worker is about to hold these blocks" entries for requests just routed.

Between routing a request and the worker's block events reaching Redis lie a forward pass and a
publish; without these entries a burst of same-prefix requests would scatter across workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from services.block_hash import BlockHash
from services.prefix_index import longest_prefixes


class SpeculativeIndex:
    """Invariant: an entry older than `ttl_s` never counts; expired entries are pruned on insert."""

    def __init__(self, ttl_s: float = 5.0, clock=time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[BlockHash, dict[str, float]] = {}
        self._next_prune = 0.0

    def note(self, hashes: Sequence[BlockHash], worker_id: str) -> None:
        now = self._clock()
        expiry = now + self.ttl_s
        for h in hashes:
            self._entries.setdefault(h, {})[worker_id] = expiry
        if now >= self._next_prune:
            self._prune(now)
            self._next_prune = now + self.ttl_s

    def lookup(self, hashes: Sequence[BlockHash], workers: Sequence[str]) -> dict[str, int]:
        now = self._clock()
        holders = []
        for h in hashes:
            entry = self._entries.get(h)
            if not entry:
                break
            holders.append({w: 1 for w, expiry in entry.items() if expiry > now})
        return longest_prefixes(holders, {w: 1 for w in workers})

    def forget_worker(self, worker_id: str) -> None:
        for entry in self._entries.values():
            entry.pop(worker_id, None)

    def _prune(self, now: float) -> None:
        for h in [h for h, entry in self._entries.items() if all(e <= now for e in entry.values())]:
            del self._entries[h]

    def __len__(self) -> int:
        return len(self._entries)
