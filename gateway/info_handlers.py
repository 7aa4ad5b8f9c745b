"""GET endpoints: /v1/models, /v1/models/{model}, /health, /ping, /metrics, /openapi.json."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiohttp import web

from gateway.context import CONTEXT
from gateway.errors import model_not_found, unavailable
from gateway.openapi import openapi_document
from gateway.scheduler_client import SchedulerError
from services.process_metrics import resident_memory_bytes
from services.types import ModelInfo

HEALTH_TIMEOUT_S = 3.0
OWNER = "ferrum-infer"


def _model_card(m: ModelInfo) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": OWNER,
            "max_model_len": m.max_model_len}


async def _models(request: web.Request) -> list[ModelInfo]:
    try:
        return await request.app[CONTEXT].client.list_models()
    except SchedulerError as e:
        raise unavailable(f"cannot list models: {e.message}") from None


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(m) for m in await _models(request)]})


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for m in await _models(request):
        if m.name == name:
            return web.json_response(_model_card(m))
    raise model_not_found(name)


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body: dict[str, Any] = {
        "status": "ok",
        "uptime_seconds": round(time.monotonic() - ctx.started_at, 3),
        "total_requests": ctx.total_requests,
        "cache_hit_rate": 0.0,
        "memory_usage_mb": round(resident_memory_bytes() / 2**20, 1),
        "workers": {},
    }
    try:
        cluster = await asyncio.wait_for(ctx.client.cluster_status(), HEALTH_TIMEOUT_S)
    except (SchedulerError, TimeoutError) as e:
        body["status"] = "degraded"
        body["detail"] = f"scheduler unreachable: {e}"
        return web.json_response(body, status=503)
    hit_tokens = sum(w.stats.prefix_hit_tokens for w in cluster.workers)
    prompt_tokens = sum(w.stats.prompt_tokens for w in cluster.workers)
    body["cache_hit_rate"] = round(hit_tokens / prompt_tokens, 4) if prompt_tokens else 0.0
    body["workers"] = dict(Counter(w.model for w in cluster.workers))
    body["queued"] = cluster.queued
    body["cluster_total_requests"] = cluster.total_requests
    if cluster.draining:
        # The scheduler is shutting down: a load balancer should stop sending here until it is back.
        body["status"] = "draining"
        return web.json_response(body, status=503)
    return web.json_response(body)


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def metrics(request: web.Request) -> web.Response:
    payload, content_type = request.app[CONTEXT].metrics.render()
    return web.Response(body=payload, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
