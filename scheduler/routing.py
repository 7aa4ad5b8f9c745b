"""Choosing a worker for a request. Pure functions over worker views; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    worker_id: str

    @property
    def credit(self) -> int: ...

    @property
    def load(self) -> float: ...


def least_loaded(candidates: Sequence[Candidate]) -> Candidate | None:
    """The worker with free credit and the lowest load (running relative to capacity); ties by id,
    so the choice is deterministic."""
    ready = [c for c in candidates if c.credit > 0]
    if not ready:
        return None
    return min(ready, key=lambda c: (c.load, c.worker_id))
