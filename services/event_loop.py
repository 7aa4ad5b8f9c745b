"""The event loop every Ferrum process runs on: uvloop where it is installed, asyncio's own otherwise.

Why: the gateway, the scheduler and the worker's session spend their CPU per streamed token in the
event loop (socket writes, gRPC completions, task wake-ups), and on a machine they share with the
engine each of those microseconds is taken from a matmul. uvloop's loop (libuv, in C) does that
work for less. Measured with the bench's plumbing figure (tiny model, 64 streams, 1024 requests,
2 cores), streamed tokens/s through the whole path: 5,297 and 4,042 with asyncio's loop, 6,024 and
4,955 with uvloop (alternating runs). vLLM's API server runs on uvloop for the same reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # uvloop has no Windows build; the standard loop does the same work, slower
    uvloop = None

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    return uvloop.new_event_loop if uvloop is not None else asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
