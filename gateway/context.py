"""Everything the handlers share, attached to the aiohttp app under CONTEXT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.scheduler_client import SchedulerApi
from gateway.stream_slots import StreamSlots
from gateway.tokenizer_cache import TokenizerCache
from services.config import GatewaySettings

# Threads that tokenize, template and detokenize, so the event loop never does.
TOKENIZER_THREADS = 4
T = TypeVar("T")


class GatewayContext:
    def __init__(self, settings: GatewaySettings, client: SchedulerApi):
        self.settings = settings
        self.client = client
        self.executor = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix="gateway-tokenizer")
        self.tokenizers = TokenizerCache(client, self.executor)
        self.slots = StreamSlots(settings.max_concurrent_streams)
        self.metrics = GatewayMetrics(active_streams=lambda: self.slots.in_use)
        self.accepted_keys = [k.encode() for k in settings.accepted_keys()]
        self.started_at = time.monotonic()
        self.total_requests = 0

    async def run_blocking(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


CONTEXT = web.AppKey("ferrum_gateway_context", GatewayContext)
# Request-scoped: the model label for metrics, set once the model is known to be served.
MODEL_LABEL = web.RequestKey("ferrum_model_label", str)
# Request-scoped: time.perf_counter() when the request reached the gateway.
ARRIVED = web.RequestKey("ferrum_arrived", float)
