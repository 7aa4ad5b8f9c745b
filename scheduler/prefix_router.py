"""Routing with the cluster-wide prefix index: Redis lookups, speculative entries, the policy.

`affinity` runs once per request before it is queued (one pipelined Redis round trip); `choose`
is synchronous and runs in the dispatch loop. When Redis is unreachable, affinity is empty and
routing falls back to load only; a warning is logged once per outage.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from scheduler import metrics
from scheduler.routing import Decision, cache_aware, least_loaded, round_robin
from scheduler.speculative import SpeculativeIndex
from services.block_hash import BlockHash, block_hashes, hash_root
from services.prefix_index import PrefixIndex, connect

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 1.0  # while Redis is failing, one request per second probes it; the rest skip it


@dataclass
class Affinity:
    hashes: list[BlockHash] = field(default_factory=list)
    matched: dict[str, int] = field(default_factory=dict)  # worker id -> leading blocks it holds


class PrefixRouter:
    def __init__(self, policy: str, redis_url: str | None, sweep_interval_s: float = 30.0):
        self.policy = policy
        self.sweep_interval_s = sweep_interval_s
        self.client = connect(redis_url) if redis_url and policy == "cache_aware" else None
        self.speculative = SpeculativeIndex()
        self._indexes: dict[str, PrefixIndex] = {}
        self._turns = itertools.count()
        self._redis_down = False
        self._retry_at = 0.0

    def _index(self, model: str) -> PrefixIndex:
        if model not in self._indexes:
            self._indexes[model] = PrefixIndex(self.client, model)
        return self._indexes[model]

    async def affinity(self, model: str, prompt: Sequence[int], cache_salt: str, block_size: int,
                       live: dict[str, int]) -> Affinity:
        if self.policy != "cache_aware":
            return Affinity()
        hashes = block_hashes(prompt, block_size, hash_root(model, cache_salt))
        matched = self.speculative.lookup(hashes, list(live))
        if self.client is not None and hashes and time.monotonic() >= self._retry_at:
            metrics.INDEX_LOOKUPS.inc()
            metrics.INDEX_LOOKUP_BLOCKS.inc(len(hashes))
            try:
                found = await self._index(model).lookup(hashes, live)
                self._redis_recovered()
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
                found = {}
            if found:
                metrics.INDEX_HIT_BLOCKS.inc(max(found.values()))
            for worker, blocks in found.items():
                matched[worker] = max(matched.get(worker, 0), blocks)
        return Affinity(hashes, matched)

    def choose(self, workers: Sequence, affinity: Affinity | None) -> Decision | None:
        if self.policy == "round_robin":
            decision = round_robin(workers, next(self._turns))
        elif self.policy == "least_loaded" or affinity is None:
            worker = least_loaded(workers)
            decision = Decision(worker, "least_loaded") if worker else None
        else:
            decision = cache_aware(workers, affinity.matched, len(affinity.hashes))
        if decision is not None:
            metrics.ROUTING.labels(self.policy, decision.reason).inc()
            if affinity is not None and affinity.hashes:
                self.speculative.note(affinity.hashes, decision.worker.worker_id)
        return decision

    def forget_worker(self, worker_id: str) -> None:
        self.speculative.forget_worker(worker_id)

    async def sweep_forever(self, models) -> None:
        """Remove index entries of dead workers and old epochs, every sweep_interval_s."""
        if self.client is None:
            return
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            for model in models():
                try:
                    index = self._index(model)
                    removed = await index.sweep(await index.live_workers())
                    if removed:
                        log.info("prefix index sweep removed %d stale entries", removed, extra={"model": model})
                except (redis.RedisError, OSError) as exc:
                    self._redis_failed(exc)

    def _redis_failed(self, exc: Exception) -> None:
        metrics.REDIS_ERRORS.labels("scheduler").inc()
        self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
        if not self._redis_down:
            log.warning("prefix index unreachable, routing by load only: %s", exc)
            self._redis_down = True

    def _redis_recovered(self) -> None:
        if self._redis_down:
            log.info("prefix index reachable again")
            self._redis_down = False
