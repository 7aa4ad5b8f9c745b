"""The global waiting queue: per model, ordered by (priority, arrival), bounded in total."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from services.types import GenerateRequest


class QueueFull(Exception):
    """The global bound is reached; the caller answers 429."""


@dataclass(order=True)
class _Entry:
    priority: int
    arrival: int
    request_id: str = field(compare=False)


class RequestQueue:
    """Waiting requests not yet handed to a worker.

    Invariants: every queued id is in `_requests`; removal is lazy (heap entries whose id is gone are
    skipped on pop), so `remove` is O(1) and `len` counts live entries only. Arrival numbers are kept
    by the caller across re-queues, so a request handed back by a lost worker keeps its place.
    """

    def __init__(self, max_size: int, max_per_model: int | None = None):
        self.max_size = max_size
        self.max_per_model = max_per_model or max_size
        self._heaps: dict[str, list[_Entry]] = {}
        self._requests: dict[str, GenerateRequest] = {}
        self._depths: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def depth(self, model: str) -> int:
        return self._depths.get(model, 0)

    def models(self) -> list[str]:
        return [m for m, heap in self._heaps.items() if heap]

    def push(self, request: GenerateRequest, arrival: int, *, force: bool = False) -> None:
        """Queue a request; raises QueueFull past the bound unless `force` (re-queues of work already admitted)."""
        if not force and len(self._requests) >= self.max_size:
            raise QueueFull(f"the scheduler queue is full ({self.max_size} requests waiting)")
        if not force and self.depth(request.model) >= self.max_per_model:
            raise QueueFull(f"the queue for model `{request.model}` is full ({self.max_per_model} requests waiting)")
        self._requests[request.request_id] = request
        self._depths[request.model] = self.depth(request.model) + 1
        heapq.heappush(self._heaps.setdefault(request.model, []),
                       _Entry(request.priority, arrival, request.request_id))

    def pop(self, model: str) -> GenerateRequest | None:
        heap = self._heaps.get(model, [])
        while heap:
            entry = heapq.heappop(heap)
            request = self._requests.pop(entry.request_id, None)
            if request is not None:
                self._depths[model] -= 1
                return request
        return None

    def peek(self, model: str) -> GenerateRequest | None:
        heap = self._heaps.get(model, [])
        while heap and heap[0].request_id not in self._requests:
            heapq.heappop(heap)
        return self._requests[heap[0].request_id] if heap else None

    def remove(self, request_id: str) -> GenerateRequest | None:
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._depths[request.model] -= 1
        return request

    def waiting(self) -> list[GenerateRequest]:
        return list(self._requests.values())
