"""POST /v1/chat/completions, /v1/completions and /v1/responses: parse -> tokenize -> plan -> serve.

Each request runs inside one OpenTelemetry span whose context travels with every upstream
GenerateRequest, so the scheduler's and worker's spans join the same trace.
"""

from __future__ import annotations

import functools

from aiohttp import web

from gateway.completion_request import CompletionRequest
from gateway.context import CONTEXT, MODEL_LABEL, GatewayContext
from gateway.errors import OpenAIError
from gateway.model_tokenizer import ModelTokenizer
from gateway.planning import GenerationPlan, plan_generation
from gateway.prompts import chat_prompt_ids, completion_prompt_ids
from gateway.protocol import ChatCompletionRequest, RequestT, parse_request
from gateway.responses import ChatShaper, CompletionShaper, ResponseShaper
from gateway.responses_request import ResponsesRequest
from gateway.responses_shaper import ResponsesShaper
from gateway.serving import serve_plan
from services import tracing

_tracer = tracing.tracer("ferrum.gateway")


async def read_body(request: web.Request, limit: int) -> bytes:
    too_large = OpenAIError(413, f"The request body is larger than the limit of {limit} bytes.",
                            code="request_too_large")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


async def parsed_request(request: web.Request,
                         model: type[RequestT]) -> tuple[GatewayContext, RequestT, ModelTokenizer]:
    """The shared start of a request for a model: read and validate its body, and fetch the model's
    tokenizer (a 404 for a model not served)."""
    ctx = request.app[CONTEXT]
    req = parse_request(await read_body(request, ctx.settings.max_body_bytes), model)
    tokenizer = await ctx.tokenizers.get(req.model)
    request[MODEL_LABEL] = req.model
    return ctx, req, tokenizer


async def _generation_request(request: web.Request,
                              model: type[RequestT]) -> tuple[GatewayContext, RequestT, ModelTokenizer]:
    """parsed_request, counted in /health's total_requests (valid or not)."""
    request.app[CONTEXT].total_requests += 1
    return await parsed_request(request, model)


async def _serve(request: web.Request, ctx: GatewayContext, plan: GenerationPlan, shaper: ResponseShaper,
                 stream: bool, span) -> web.StreamResponse:
    span.set_attribute("ferrum.request_id", plan.request_id)
    span.set_attribute("ferrum.model", plan.model)
    span.set_attribute("ferrum.choices", len(plan.requests))
    carrier = tracing.inject()
    for upstream in plan.requests:
        upstream.trace_context = dict(carrier)
    return await serve_plan(request, ctx, plan, shaper, stream)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    with _tracer.start_as_current_span("gateway.chat_completions") as span:
        ctx, req, tokenizer = await _generation_request(request, ChatCompletionRequest)
        prompt = await ctx.run_blocking(functools.partial(chat_prompt_ids, tokenizer, req.model, req.messages,
                                                          **req.template_options()))
        max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        plan = plan_generation(req, [prompt], tokenizer, "chatcmpl", "messages", max_param)
        shaper = ChatShaper(plan.request_id, plan.created, req.model, with_logprobs=req.logprobs_k() >= 0,
                            include_usage=req.include_usage)
        return await _serve(request, ctx, plan, shaper, bool(req.stream), span)


async def completions(request: web.Request) -> web.StreamResponse:
    with _tracer.start_as_current_span("gateway.completions") as span:
        ctx, req, tokenizer = await _generation_request(request, CompletionRequest)
        prompts = await ctx.run_blocking(completion_prompt_ids, tokenizer, req)
        plan = plan_generation(req, prompts, tokenizer, "cmpl", "prompt", "max_tokens")
        shaper = CompletionShaper(plan.request_id, plan.created, req.model,
                                  with_logprobs=req.logprobs_k() >= 0, include_usage=req.include_usage)
        return await _serve(request, ctx, plan, shaper, bool(req.stream), span)


async def responses(request: web.Request) -> web.StreamResponse:
    with _tracer.start_as_current_span("gateway.responses") as span:
        ctx, req, tokenizer = await _generation_request(request, ResponsesRequest)
        prompt = await ctx.run_blocking(chat_prompt_ids, tokenizer, req.model, req.conversation(), "input")
        max_param = "max_output_tokens" if req.max_output_tokens is not None else "max_tokens"
        plan = plan_generation(req, [prompt], tokenizer, "resp", "input", max_param)
        shaper = ResponsesShaper(plan.request_id, plan.created, req.model, with_logprobs=req.logprobs_k() >= 0,
                                 settings=req.echoed_settings())
        return await _serve(request, ctx, plan, shaper, bool(req.stream), span)


async def stored_response(request: web.Request) -> web.StreamResponse:
    """GET or DELETE /v1/responses/{response_id}: nothing is stored, so the answer is always a 404
    that says why, rather than a bare "Not Found" for a path a client expects to exist."""
    raise OpenAIError(404, f"Response `{request.match_info['response_id']}` is not stored: this server keeps no "
                           "responses (store is always false), so none can be retrieved or deleted.",
                      param="response_id", code="not_found")
