"""`python -m scheduler`: the central gRPC scheduler.

Listens on FERRUM_INFER_SCHEDULER_ADDR for gateways (GenerateMany, Abort, ListModels, ...) and for
worker sessions; serves /metrics, /health and /ready on FERRUM_INFER_METRICS_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from scheduler.core import SchedulerCore
from scheduler.prefix_router import PrefixRouter
from scheduler.servicer import SchedulerServicer
from services import codec, event_loop
from services.config import SchedulerSettings
from services.logging_setup import configure_logging
from services.ops_http import start_ops_server
from services.tracing import setup_tracing

log = logging.getLogger("scheduler")
# After the drain no call is meant to be open; this only lets the last statuses reach their peers.
STOP_GRACE_S = 2.0


def parse_settings(argv: list[str] | None = None) -> SchedulerSettings:
    parser = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__)
    parser.add_argument("--scheduler-addr", help="host:port to listen on (FERRUM_INFER_SCHEDULER_ADDR)")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics, /health, /ready")
    parser.add_argument("--redis-url", help="prefix index (FERRUM_INFER_REDIS_URL)")
    parser.add_argument("--max-queue", type=int, help="waiting requests before 429")
    parser.add_argument("--routing-policy", choices=["cache_aware", "least_loaded", "round_robin"])
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    return SchedulerSettings(**{k: v for k, v in vars(args).items() if v is not None})


async def serve(settings: SchedulerSettings) -> None:
    router = PrefixRouter(settings.routing_policy, settings.redis_url, settings.index_sweep_interval_s)
    core = SchedulerCore(settings.max_queue, settings.worker_wait_s, router, settings.max_queue_per_model)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ])
    servicer = SchedulerServicer(core)
    codec.add_scheduler_servicer(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(settings.scheduler_addr)
    if port == 0:
        raise SystemExit(f"cannot listen on {settings.scheduler_addr}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ops = await start_ops_server("0.0.0.0", settings.metrics_port, ready=lambda: not core.draining,
                                 health=lambda: {"workers": len(core.registry.all()), "queued": len(core.queue)})
    log.info("scheduler listening", extra={"addr": settings.scheduler_addr, "metrics_port": settings.metrics_port})
    dispatcher = asyncio.create_task(core.run())
    sweeper = asyncio.create_task(router.sweep_forever(lambda: [m.name for m in core.registry.served_models()]))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(core, servicer, health_servicer, settings.drain_grace_s)
    dispatcher.cancel()
    sweeper.cancel()
    await server.stop(grace=STOP_GRACE_S)
    await ops.cleanup()


async def drain(core: SchedulerCore, servicer: SchedulerServicer, health_servicer: health.aio.HealthServicer,
                grace_s: float) -> None:
    """SIGTERM: refuse new requests (the gateways answer 503 with Retry-After), let every admitted
    one finish and reach its gateway for up to `grace_s`, then fail what is left and end the worker
    sessions cleanly, so that workers re-register with the next scheduler as soon as it listens."""
    log.info("scheduler draining", extra={"in_flight": core.in_flight, "grace_s": grace_s})
    core.draining = True
    await health_servicer.enter_graceful_shutdown()
    deadline = time.monotonic() + grace_s
    while (core.in_flight or servicer.open_requests) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log.info("scheduler stopping", extra={"unfinished": core.in_flight, "open_requests": servicer.open_requests})
    core.close()
    servicer.end_idle_streams()


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level, "scheduler")
    setup_tracing("scheduler")
    event_loop.run(serve(settings))


if __name__ == "__main__":
    main()
