"""Live workers, as known from their session streams, and the models they serve."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from services.types import ModelInfo, TokenizerBundle, WorkerRegister, WorkerStats

# Put in a worker's outbox instead of a message: its session ends (cleanly, not as an error), and
# the worker re-registers with whichever scheduler answers next.
END_SESSION = None


@dataclass
class WorkerHandle:
    """One connected worker. `inflight` holds the ids assigned to it and not yet finished."""

    info: WorkerRegister
    outbox: asyncio.Queue  # SchedulerMessage protobufs to send down the session, or END_SESSION
    stats: WorkerStats = field(default_factory=WorkerStats)
    inflight: set[str] = field(default_factory=set)

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def credit(self) -> int:
        """Sequences it can take now: its slots minus what it already holds; none while draining."""
        if self.stats.draining:
            return 0
        return self.info.max_running - len(self.inflight)

    @property
    def load(self) -> float:
        return len(self.inflight) / max(1, self.info.max_running)

    @property
    def kv_usage(self) -> float:
        return self.stats.kv_usage


@dataclass
class _ModelRecord:
    tokenizer: TokenizerBundle
    max_model_len: int
    block_size: int
    num_blocks: int
    created: int


class WorkerRegistry:
    """Workers by id and the models ever served. A model stays known after its last worker leaves,
    so that requests for it wait for a worker (then 503) instead of being told it does not exist."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerHandle] = {}
        self._models: dict[str, _ModelRecord] = {}

    def add(self, handle: WorkerHandle) -> None:
        info = handle.info
        record = self._models.get(info.model)
        if record is None or record.tokenizer.revision != info.tokenizer.revision:
            created = record.created if record else int(time.time())
            record = _ModelRecord(info.tokenizer, info.max_model_len, info.block_size, info.num_blocks, created)
            self._models[info.model] = record
        else:
            # Several workers of one model: admit what every one of them can hold.
            record.max_model_len = min(record.max_model_len, info.max_model_len)
            record.num_blocks = min(record.num_blocks, info.num_blocks)
        self._workers[info.worker_id] = handle

    def remove(self, worker_id: str) -> WorkerHandle | None:
        return self._workers.pop(worker_id, None)

    def get(self, worker_id: str) -> WorkerHandle | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerHandle]:
        return list(self._workers.values())

    def for_model(self, model: str) -> list[WorkerHandle]:
        return [w for w in self._workers.values() if w.model == model]

    def knows(self, model: str) -> bool:
        return model in self._models

    def tokenizer(self, model: str) -> TokenizerBundle | None:
        record = self._models.get(model)
        return record.tokenizer if record else None

    def limits(self, model: str) -> tuple[int, int, int]:
        """(max_model_len, block_size, num_blocks) a request for `model` must fit."""
        r = self._models[model]
        return r.max_model_len, r.block_size, r.num_blocks

    def served_models(self) -> list[ModelInfo]:
        counts: dict[str, int] = {}
        for w in self._workers.values():
            counts[w.model] = counts.get(w.model, 0) + 1
        return [ModelInfo(name, self._models[name].max_model_len, n, self._models[name].created)
                for name, n in sorted(counts.items())]
