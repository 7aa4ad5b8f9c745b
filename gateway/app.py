"""The gateway's aiohttp application: routes, middlewares and the shared context."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import endpoints, info_handlers, tokenization
from gateway.context import CONTEXT, GatewayContext
from gateway.middleware import authenticate, observe, openai_errors
from gateway.scheduler_client import SchedulerApi
from services.config import GatewaySettings


def create_app(settings: GatewaySettings, client: SchedulerApi) -> web.Application:
    """An app serving the OpenAI API through `client`. The caller owns the client's lifetime.
    Serve it with handler_cancellation=True so a client that leaves cancels its upstream work."""
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[observe, openai_errors, authenticate])
    context = GatewayContext(settings, client)
    app[CONTEXT] = context

    async def preload_tokenizers(_: web.Application):
        preloading = asyncio.create_task(context.tokenizers.preload())
        yield
        preloading.cancel()
        await asyncio.gather(preloading, return_exceptions=True)
        context.close()

    app.cleanup_ctx.append(preload_tokenizers)
    app.router.add_post("/v1/chat/completions", endpoints.chat_completions)
    app.router.add_post("/v1/completions", endpoints.completions)
    app.router.add_post("/v1/responses", endpoints.responses)
    app.router.add_get("/v1/responses/{response_id}", endpoints.stored_response)
    app.router.add_delete("/v1/responses/{response_id}", endpoints.stored_response)
    app.router.add_post("/tokenize", tokenization.tokenize)
    app.router.add_post("/detokenize", tokenization.detokenize)
    app.router.add_get("/v1/models", info_handlers.list_models)
    app.router.add_get("/v1/models/{model}", info_handlers.retrieve_model)
    app.router.add_get("/health", info_handlers.health)
    app.router.add_get("/ping", info_handlers.ping)
    app.router.add_get("/metrics", info_handlers.metrics)
    app.router.add_get("/openapi.json", info_handlers.openapi)
    return app
