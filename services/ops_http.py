"""A small HTTP server for a process's operational endpoints: /metrics, /health, /ready.

Scheduler and worker serve it on their metrics port (the gateway serves the same paths on its API
port). Readiness is a callable so each process decides what "ready" means (a worker: model loaded
and registered).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.process_metrics import resident_memory_bytes


def metrics_response(registry=REGISTRY) -> web.Response:
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_ops_server(host: str, port: int, ready: Callable[[], bool],
                           health: Callable[[], dict] | None = None) -> web.AppRunner:
    """Start the server in the running loop and return its runner (call `runner.cleanup()` to stop)."""
    started = time.monotonic()

    async def metrics(_request: web.Request) -> web.Response:
        return metrics_response()

    async def health_handler(_request: web.Request) -> web.Response:
        body = {"status": "ok", "uptime_seconds": round(time.monotonic() - started, 3),
                "memory_usage_mb": round(resident_memory_bytes() / 2**20, 1)}
        if health is not None:
            body.update(health())
        return web.json_response(body)

    async def ready_handler(_request: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health_handler)
    app.router.add_get("/ready", ready_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
