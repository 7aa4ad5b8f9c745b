"""The gateway's bound on concurrent upstream requests (one per choice) (max_concurrent_streams)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import too_many_requests


class StreamSlots:
    """Counts streams in flight; a request that would exceed the limit is refused whole (429)
    rather than queued, so one gateway's memory stays bounded under a burst."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0

    @contextmanager
    def hold(self, count: int) -> Iterator[None]:
        if self.in_use + count > self.limit:
            raise too_many_requests(
                f"this gateway is at its limit of {self.limit} concurrent streams; retry shortly")
        self.in_use += count
        try:
            yield
        finally:
            self.in_use -= count
