"""The gateway's OpenAPI 3.1 document: request schemas from the pydantic models, response schemas
from gateway/openapi_schemas.py, paths by hand.

Invariant (held by tests/unit/test_gateway_openapi_fuzz.py): every status, content type, header
and body the gateway answers with is documented here, and a body this document forbids is refused.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.completion_request import CompletionRequest
from gateway.openapi_schemas import RESPONSE_SCHEMAS, named_sse_event, ref, sse_event
from gateway.protocol import ChatCompletionRequest
from gateway.responses_request import ResponsesRequest
from gateway.tokenization import DetokenizeRequest, TokenizeRequest

_REF = "#/components/schemas/{model}"
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                                "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_OPEN = [{"bearer": []}, {}]  # a key is required only when the gateway has one configured


def _errors(*statuses: int) -> dict[str, Any]:
    """OpenAI error responses; 429 and 503 always say when to retry."""
    return {str(s): {"description": "OpenAI-style error",
                     "content": {"application/json": {"schema": ref("ErrorResponse")}},
                     **({"headers": _RETRY_AFTER} if s in (429, 503) else {})} for s in statuses}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _generation(summary: str, request: str, response: str,
                stream_event: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "security": _OPEN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request)}}},
        "responses": {
            "200": {"description": "A completion, or an SSE stream of chunks when stream is true",
                    "content": {"application/json": {"schema": ref(response)},
                                "text/event-stream": {"schema": stream_event or sse_event(f"{response}Chunk")}}},
            **_errors(400, 401, 404, 413, 429, 500, 502, 503, 504),
        },
    }}


def _tokenization(summary: str, request: str, response: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "security": _OPEN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request)}}},
        "responses": {"200": _json(summary, response), **_errors(400, 401, 404, 413, 503)},
    }}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(model, "validation") for model in (ChatCompletionRequest, CompletionRequest, ResponsesRequest,
                                             TokenizeRequest, DetokenizeRequest)],
        ref_template=_REF)
    components = {**schemas.get("$defs", {}), **RESPONSE_SCHEMAS}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ferrum Infer gateway", "version": "1",
                 "description": "OpenAI-compatible chat and text completions and responses served by a "
                                "Ferrum Infer cluster."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": _generation("Create a chat completion", "ChatCompletionRequest",
                                                "ChatCompletion"),
            "/v1/completions": _generation("Create a text completion", "CompletionRequest", "Completion"),
            "/v1/responses": _generation("Create a response (the Responses API, text only)", "ResponsesRequest",
                                         "Response", named_sse_event("ResponseStreamEvent")),
            "/v1/responses/{response_id}": {method: {
                "summary": f"{verb} a stored response: none is stored, so always 404", "security": _OPEN,
                "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": _errors(401, 404)} for method, verb in (("get", "Retrieve"), ("delete", "Delete"))},
            "/tokenize": _tokenization("A model's token ids for a text or a conversation (vLLM's)",
                                       "TokenizeRequest", "Tokenized"),
            "/detokenize": _tokenization("The text of token ids (vLLM's)", "DetokenizeRequest", "Detokenized"),
            "/v1/models": {"get": {"summary": "List served models", "security": _OPEN,
                                   "responses": {"200": _json("Model list", "ModelList"), **_errors(401, 503)}}},
            "/v1/models/{model}": {"get": {
                "summary": "Describe one served model", "security": _OPEN,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Model", "Model"), **_errors(401, 404, 503)}}},
            "/health": {"get": {"summary": "Gateway and cluster health",
                                "responses": {"200": _json("Healthy", "Health"),
                                              "503": _json("Degraded (the scheduler does not answer) or "
                                                           "draining (it is shutting down)", "Health")}}},
            "/ping": {"get": {"summary": "Liveness", "responses": {"200": _text("pong")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": _text("Prometheus text format")}}},
        },
    }
