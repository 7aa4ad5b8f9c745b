"""`python -m gateway`: serve the OpenAI API, forwarding generation to the scheduler.

Flags override FERRUM_INFER_* environment variables and config.toml (services.config).
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from gateway.app import create_app
from gateway.scheduler_client import SchedulerClient
from services import event_loop, tracing
from services.config import GatewaySettings
from services.logging_setup import configure_logging

# Open streams get this long to finish after SIGTERM before connections are closed.
DRAIN_TIMEOUT_S = 30.0
log = logging.getLogger("gateway")


def parse_settings(argv: list[str] | None = None) -> GatewaySettings:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", help="address to listen on (FERRUM_INFER_HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (FERRUM_INFER_PORT)")
    parser.add_argument("--scheduler-addr", help="host:port of the scheduler (FERRUM_INFER_SCHEDULER_ADDR)")
    parser.add_argument("--api-key", help="require this bearer key on /v1/* (FERRUM_INFER_API_KEY)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (FERRUM_INFER_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return GatewaySettings(**overrides)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level, "gateway")
    tracing.setup_tracing("gateway")

    async def build() -> web.Application:
        client = SchedulerClient(settings.scheduler_addr)  # inside the loop that will use it
        app = create_app(settings, client)

        async def close_client(_: web.Application) -> None:
            await client.close()

        app.on_cleanup.append(close_client)
        return app

    def announce(_: str) -> None:
        log.info("gateway listening on http://%s:%d (scheduler %s, auth %s)", settings.host, settings.port,
                 settings.scheduler_addr, "on" if settings.accepted_keys() else "off")

    web.run_app(build(), host=settings.host, port=settings.port, handler_cancellation=True,
                shutdown_timeout=DRAIN_TIMEOUT_S, print=announce, access_log=None, loop=event_loop.new_event_loop())


if __name__ == "__main__":
    main()
