"""Publishes this worker's KV block events to the Redis prefix index and keeps its liveness key.

Events arrive from the engine thread (`post`), are folded into one pending batch (a block stored and
removed before a flush cancels out) and written every FLUSH_INTERVAL_S with one pipeline. When Redis
is unreachable the batch is kept, a warning is logged once and the error metric counts; when Redis
answers again the worker republishes its whole block set, since Redis may have lost everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis
from prometheus_client import Counter

from services.block_hash import BlockHash
from services.prefix_index import PrefixIndex

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
HEARTBEAT_INTERVAL_S = 1.0
LIVENESS_TTL_S = 5.0

REDIS_ERRORS = Counter("ferrum_infer_worker_redis_errors_total", "Failed prefix-index writes of this worker")
PUBLISHED = Counter("ferrum_infer_prefix_events_total", "Block events published", ["kind"])


class IndexPublisher:
    def __init__(self, index: PrefixIndex, worker_id: str, epoch: int,
                 snapshot: Callable[[], list[BlockHash]]):
        self.index = index
        self.worker_id = worker_id
        self.epoch = epoch
        self._snapshot = snapshot  # every block hash the engine holds now
        self._stored: set[BlockHash] = set()
        self._removed: set[BlockHash] = set()
        self._resync = True  # the first successful contact publishes everything
        self._down = False
        self._loop = asyncio.get_running_loop()

    def post(self, stored: list[BlockHash], removed: list[BlockHash]) -> None:
        """Thread-safe: called by the engine thread after a step."""
        self._loop.call_soon_threadsafe(self._fold, stored, removed)

    def _fold(self, stored: list[BlockHash], removed: list[BlockHash]) -> None:
        for h in stored:
            self._removed.discard(h)
            self._stored.add(h)
        for h in removed:
            self._stored.discard(h)
            self._removed.add(h)

    async def run_forever(self) -> None:
        since_heartbeat = HEARTBEAT_INTERVAL_S
        while True:
            try:
                if since_heartbeat >= HEARTBEAT_INTERVAL_S:
                    await self.index.heartbeat(self.worker_id, self.epoch, LIVENESS_TTL_S)
                    since_heartbeat = 0.0
                await self._flush()
                self._recovered()
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            await asyncio.sleep(FLUSH_INTERVAL_S)
            since_heartbeat += FLUSH_INTERVAL_S

    async def _flush(self) -> None:
        if self._resync:
            self._fold(self._snapshot(), [])
        if not self._stored and not self._removed:
            self._resync = False
            return
        stored, removed = list(self._stored), list(self._removed)
        await self.index.publish(self.worker_id, self.epoch, stored, removed)
        self._stored.difference_update(stored)
        self._removed.difference_update(removed)
        self._resync = False
        PUBLISHED.labels("stored").inc(len(stored))
        PUBLISHED.labels("removed").inc(len(removed))

    async def withdraw(self) -> None:
        try:
            await self.index.withdraw(self.worker_id)
        except (redis.RedisError, OSError):
            pass  # the liveness key expires by itself

    def _failed(self, exc: Exception) -> None:
        REDIS_ERRORS.inc()
        self._resync = True
        if not self._down:
            log.warning("prefix index unreachable; will republish when it returns: %s", exc)
            self._down = True

    def _recovered(self) -> None:
        if self._down:
            log.info("prefix index reachable again; republished the block set")
            self._down = False
