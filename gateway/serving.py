"""Runs a GenerationPlan and answers with one JSON body or one SSE stream.

A streaming response's status line is sent only with its first delta, so failures before any
output (unknown model, queue full, no worker) still reach the client as proper HTTP errors; later
failures become the shaper's error events (completions: an `{"error": ...}` event, then `[DONE]`).
The request deadline (request_timeout_s) and a vanished client both cancel every upstream stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from aiohttp import web

from gateway.choice_decoder import ChoiceDelta
from gateway.context import ARRIVED, GatewayContext
from gateway.errors import OpenAIError, timed_out
from gateway.generation import merged_deltas
from gateway.metrics import TokenTimer
from gateway.planning import GenerationPlan
from gateway.responses import ChoiceResult, ResponseShaper, UsageTally
from gateway.sse import open_event_stream

log = logging.getLogger(__name__)


class _Deltas:
    """The plan's merged deltas under the request deadline, tallied for usage and latency metrics."""

    def __init__(self, merged: AsyncIterator[ChoiceDelta], deadline: float, timeout_s: float,
                 usage: UsageTally, timer: TokenTimer):
        self._merged = merged
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._usage = usage
        self._timer = timer

    async def next(self) -> ChoiceDelta | None:
        try:
            async with asyncio.timeout_at(self._deadline):
                delta = await anext(self._merged, None)
        except TimeoutError:
            raise timed_out(f"the request did not finish within {self._timeout_s:g} seconds") from None
        if delta is not None:
            self._usage.add(delta)
            self._timer.tokens_arrived(delta.index, delta.new_tokens)
        return delta


async def serve_plan(request: web.Request, ctx: GatewayContext, plan: GenerationPlan, shaper: ResponseShaper,
                     stream: bool) -> web.StreamResponse:
    started = request.get(ARRIVED) or time.perf_counter()
    timeout_s = ctx.settings.request_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s
    usage = UsageTally(plan.prompt_lengths, plan.n)
    timer = TokenTimer(ctx.metrics, plan.model, started, time.perf_counter)
    with ctx.slots.hold(len(plan.requests)):
        merged = merged_deltas(ctx.client, ctx.executor, plan.requests, plan.decoders)
        async with aclosing(merged):
            deltas = _Deltas(merged, deadline, timeout_s, usage, timer)
            try:
                if stream:
                    return await _stream(request, plan, shaper, usage, deltas)
                return await _collect(plan, shaper, usage, deltas)
            finally:
                ctx.metrics.observe_tokens(plan.model, usage.prompt_tokens, usage.completion_tokens)
                duration_ms = round((time.perf_counter() - started) * 1000, 1)
                log.info("request %s done", plan.request_id, extra={
                    "request_id": plan.request_id, "model": plan.model, "choices": len(plan.requests),
                    "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                    "duration_ms": duration_ms})


async def _collect(plan: GenerationPlan, shaper: ResponseShaper, usage: UsageTally,
                   deltas: _Deltas) -> web.Response:
    results = [ChoiceResult(i) for i in range(len(plan.requests))]
    while (delta := await deltas.next()) is not None:
        results[delta.index].add(delta)
    return web.json_response(shaper.response(results, usage), headers={"X-Request-Id": plan.request_id})


async def _write(response: web.StreamResponse, shaper: ResponseShaper, payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        await response.write(shaper.encode(payload))


async def _stream(request: web.Request, plan: GenerationPlan, shaper: ResponseShaper, usage: UsageTally,
                  deltas: _Deltas) -> web.StreamResponse:
    delta = await deltas.next()  # errors before the first output are still plain HTTP errors
    response = await open_event_stream(request, {"X-Request-Id": plan.request_id})
    try:
        try:
            await _write(response, shaper, shaper.opening_chunks(len(plan.requests)))
            while delta is not None:
                await _write(response, shaper, shaper.chunks(delta))
                delta = await deltas.next()
            await _write(response, shaper, shaper.closing_chunks(usage))
        except OpenAIError as e:
            log.warning("request %s failed mid-stream: %s", plan.request_id, e.message,
                        extra={"request_id": plan.request_id})
            await _write(response, shaper, shaper.error_chunks(e))
        if shaper.stream_end:
            await response.write(shaper.stream_end)
        await response.write_eof()
    except ConnectionResetError:
        log.info("client of %s went away; upstream cancelled", plan.request_id,
                 extra={"request_id": plan.request_id})
    return response
