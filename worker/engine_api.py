"""The small interface between the worker's process shell and whatever engine generates tokens.

The shell (worker/session.py) owns gRPC and threads; an engine owns the model and the KV cache.
An engine is driven from one thread only: the shell queues `add_request`/`abort_request` calls and
applies them between steps, so implementations need no locking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.types import GenerateRequest, RequestOutput, WorkerStats


class BlockEvents(Protocol):
    stored: list[bytes]
    removed: list[bytes]


class RequestRejected(ValueError):
    """Raised by `add_request` for a request this engine can never serve (e.g. longer than its cache)."""


class UnsupportedModel(RuntimeError):
    """Raised while loading a model the engine cannot run correctly (the message says why)."""


@dataclass(frozen=True)
class EngineCapacity:
    """What the worker registers with the scheduler."""

    max_running: int  # sequences that may run at once
    num_blocks: int  # KV cache blocks in total
    block_size: int  # tokens per KV block
    max_model_len: int  # prompt + output tokens one sequence may reach


class Engine(Protocol):
    capacity: EngineCapacity

    def add_request(self, request: GenerateRequest) -> None:
        """Queue a request. `request.resume_token_ids` are outputs an earlier worker already
        produced: they are treated as part of the prompt and not emitted again, but they count
        towards max_tokens. Raises RequestRejected when the request can never fit."""

    def abort_request(self, request_id: str) -> None:
        """Drop a request and free what it holds; unknown ids are ignored. No output follows."""

    def step(self) -> list[RequestOutput]:
        """Run one iteration and return, per request that advanced, its new tokens since the last
        step; the last output of a request has finish_reason set and nothing follows it."""

    def has_unfinished(self) -> bool:
        """True while any request is waiting or running."""

    def stats(self) -> WorkerStats:
        """A snapshot for the scheduler: running, waiting, KV blocks, prefix hits, tokens/s."""

    def take_block_events(self) -> BlockEvents:
        """Hashes of full blocks that became cached (`stored`) and that were evicted (`removed`)
        since the last call."""

    def cached_block_hashes(self) -> list[bytes]:
        """Every block hash the prefix cache holds now (for a full republish to the index)."""
