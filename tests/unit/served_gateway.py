"""The real gateway app served on a loopback port from a background thread, for synchronous HTTP
clients (schemathesis sends its cases with `requests`) that would block an in-test event loop.

The scheduler behind it is whatever SchedulerApi the caller hands in (usually FakeScheduler).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from gateway.app import create_app
from gateway.scheduler_client import SchedulerApi
from tests.unit.test_gateway_support import gateway_settings

START_TIMEOUT_S = 30.0


@contextmanager
def served_gateway(client: SchedulerApi, **settings) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) of a running gateway around `client`; the app,
    its loop and its thread are gone when the block exits."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="served-gateway", daemon=True)
    thread.start()
    runner = web.AppRunner(create_app(gateway_settings(**settings), client), handler_cancellation=True)

    async def start() -> str:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(START_TIMEOUT_S)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        loop.close()
