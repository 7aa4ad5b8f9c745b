"""Request middlewares, outermost first: metrics, OpenAI error bodies, API-key authentication."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from aiohttp import web

from gateway.context import ARRIVED, CONTEXT, MODEL_LABEL
from gateway.errors import INVALID_REQUEST, OpenAIError, internal

log = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the response ended
AUTHENTICATED_PREFIX = "/v1/"
AUTHENTICATED_PATHS = ("/tokenize", "/detokenize")  # vLLM's paths, outside /v1/


def _endpoint(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    started = request[ARRIVED] = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        request.app[CONTEXT].metrics.observe_request(
            request.get(MODEL_LABEL, ""), _endpoint(request), status, (time.perf_counter() - started) * 1000)


def error_response(error: OpenAIError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def _api_endpoints(app: web.Application) -> str:
    """The OpenAI API's routes, for the 404 of an unknown path: a client that called an endpoint
    this server lacks (e.g. /v1/embeddings) learns what it can call instead."""
    routes = [f"{route.method} {route.resource.canonical}" for route in app.router.routes()
              if route.method in ("GET", "POST") and route.resource is not None
              and route.resource.canonical.startswith(AUTHENTICATED_PREFIX) and "{" not in route.resource.canonical]
    return ", ".join(routes)


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OpenAIError as e:
        return error_response(e)
    except web.HTTPNotFound:
        return error_response(OpenAIError(404, f"Unknown endpoint {request.method} {request.path}; this server "
                                               f"serves {_api_endpoints(request.app)} (all of them in "
                                               "/openapi.json).", type=INVALID_REQUEST, code="unknown_endpoint"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(OpenAIError(e.status, e.reason, type=INVALID_REQUEST, headers=headers))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(internal("The server failed to handle the request."))


def _presented_key(request: web.Request) -> bytes | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("utf-8", errors="surrogateescape")


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    """Require a configured key on /v1/*, /tokenize and /detokenize; /health, /ping, /metrics and
    /openapi.json stay open.
    Every configured key is compared in constant time, whichever matches."""
    keys = request.app[CONTEXT].accepted_keys
    if keys and (request.path.startswith(AUTHENTICATED_PREFIX) or request.path in AUTHENTICATED_PATHS):
        presented = _presented_key(request)
        matched = False
        for key in keys:
            matched |= presented is not None and hmac.compare_digest(presented, key)
        if not matched:
            raise OpenAIError(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)
