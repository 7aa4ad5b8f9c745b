"""services.event_loop: the processes run on uvloop where it is installed (a dependency off Windows)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from services import event_loop


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build")
def test_processes_run_on_uvloop():
    import uvloop

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert isinstance(event_loop.run(running_loop()), uvloop.Loop)
    loop = event_loop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_run_returns_the_coroutines_result_and_raises_its_error():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("inside the loop")

    assert event_loop.run(answer()) == 42
    with pytest.raises(ValueError, match="inside the loop"):
        event_loop.run(fail())
