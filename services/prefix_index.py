"""The cluster-wide prefix index in Redis: which worker holds which full KV block.

Layout, per served model `m` (hashes as hex):
    ferrum:{m}:blk:{hash}    HASH  worker_id -> epoch     (workers holding that block)
    ferrum:{m}:worker:{id}   STRING epoch, with a TTL refreshed by the worker's heartbeat

An entry counts only while its worker is live with the same epoch: a restarted worker has a new
epoch, so its old entries never attract traffic; they are deleted when a lookup or a sweep meets them.
Workers write, schedulers read; any number of either may share one Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from services.block_hash import BlockHash

LOOKUP_MAX_BLOCKS = 512  # longest prefix looked up per request: 512 blocks are 8k tokens at block size 16


def _blk_key(model: str, block_hash: BlockHash) -> str:
    return f"ferrum:{{{model}}}:blk:{block_hash.hex()}"


def _worker_key(model: str, worker_id: str) -> str:
    return f"ferrum:{{{model}}}:worker:{worker_id}"


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast, so an unreachable Redis degrades routing instead of stalling it."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5,
                                   health_check_interval=5)


def longest_prefixes(holders: Sequence[dict[str, int]], live: dict[str, int]) -> dict[str, int]:
    """Per live worker, how many leading blocks it holds consecutively (pure; `holders[i]` maps the
    workers recorded for block i to their epoch). Stops at the first block no live worker holds."""
    matched: dict[str, int] = {}
    candidates = set(live)
    for i, block in enumerate(holders):
        candidates = {w for w in candidates if block.get(w) == live[w]}
        if not candidates:
            break
        for worker in candidates:
            matched[worker] = i + 1
    return matched


class PrefixIndex:
    def __init__(self, client: aioredis.Redis, model: str):
        self.client = client
        self.model = model

    # ------------------------------------------------------------------ worker side

    async def publish(self, worker_id: str, epoch: int, stored: Iterable[BlockHash],
                      removed: Iterable[BlockHash]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for h in stored:
            pipe.hset(_blk_key(self.model, h), worker_id, epoch)
        for h in removed:
            pipe.hdel(_blk_key(self.model, h), worker_id)
        await pipe.execute()

    async def heartbeat(self, worker_id: str, epoch: int, ttl_s: float) -> None:
        await self.client.set(_worker_key(self.model, worker_id), epoch, px=int(ttl_s * 1000))

    async def withdraw(self, worker_id: str) -> None:
        """A worker leaving cleanly: its liveness goes at once, so its entries stop counting."""
        await self.client.delete(_worker_key(self.model, worker_id))

    # ------------------------------------------------------------------ scheduler side

    async def live_workers(self) -> dict[str, int]:
        prefix = _worker_key(self.model, "")
        keys = [k async for k in self.client.scan_iter(match=prefix + "*", count=500)]
        if not keys:
            return {}
        epochs = await self.client.mget(keys)
        return {k.decode()[len(prefix):]: int(e) for k, e in zip(keys, epochs) if e is not None}

    async def lookup(self, hashes: Sequence[BlockHash], live: dict[str, int]) -> dict[str, int]:
        """Longest cached prefix (in blocks) per live worker, in one pipelined round trip."""
        hashes = hashes[:LOOKUP_MAX_BLOCKS]
        if not hashes or not live:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            pipe.hgetall(_blk_key(self.model, h))
        raw = await pipe.execute()
        holders = [{w.decode(): int(e) for w, e in block.items()} for block in raw]
        return longest_prefixes(holders, live)

    async def sweep(self, live: dict[str, int], batch: int = 500) -> int:
        """Delete entries of workers that are not live with that epoch; returns how many went."""
        removed = 0
        keys = []
        async for key in self.client.scan_iter(match=f"ferrum:{{{self.model}}}:blk:*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                removed += await self._sweep_keys(keys, live)
                keys = []
        if keys:
            removed += await self._sweep_keys(keys, live)
        return removed

    async def _sweep_keys(self, keys: list[bytes], live: dict[str, int]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        blocks = await pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        stale = 0
        for key, block in zip(keys, blocks):
            for worker, epoch in block.items():
                if live.get(worker.decode()) != int(epoch):
                    pipe.hdel(key, worker)
                    stale += 1
        if stale:
            await pipe.execute()
        return stale
