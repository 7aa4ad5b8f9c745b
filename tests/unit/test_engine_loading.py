"""worker.engine_loop.load_engine: the engine is built on a thread that has ended by the time the
worker gets it, so the engine thread is the only living thread that ever ran torch's parallel work
(with a second one, libgomp stops spinning and a bfloat16 decode step went from 39 to 52 ms)."""

from __future__ import annotations

import threading

import pytest

from worker.engine_loop import load_engine


async def test_the_engine_is_built_on_a_thread_that_has_ended():
    built_on = []

    def factory():
        built_on.append(threading.current_thread())
        return "engine"

    assert await load_engine(factory) == "engine"
    (thread,) = built_on
    assert thread is not threading.current_thread() and thread is not threading.main_thread()
    assert not thread.is_alive()


async def test_a_failure_to_load_reaches_the_caller():
    def factory():
        raise FileNotFoundError("no config.json in /models/missing")

    with pytest.raises(FileNotFoundError, match="no config.json"):
        await load_engine(factory)
