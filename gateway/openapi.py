"""The gateway's OpenAPI 3.1 document: request schemas from the pydantic models, paths by hand."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.protocol import ChatCompletionRequest, CompletionRequest

_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "OpenAI-style error",
                     "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


def _json_ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _generation(summary: str, model: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "security": [{"bearer": []}, {}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}},
        "responses": {
            "200": {"description": "A completion, or an SSE stream of chunks when stream is true",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 404, 413, 429, 500, 502, 503, 504),
        },
    }}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
        ref_template=_REF)
    components = dict(schemas.get("$defs", {}))
    components["ErrorResponse"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ferrum Infer gateway", "version": "1",
                 "description": "OpenAI-compatible chat and text completions served by a Ferrum Infer cluster."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/chat/completions": _generation("Create a chat completion", "ChatCompletionRequest"),
            "/v1/completions": _generation("Create a text completion", "CompletionRequest"),
            "/v1/models": {"get": {"summary": "List served models", "security": [{"bearer": []}, {}],
                                   "responses": {"200": _json_ok("Model list"), **_errors(401, 503)}}},
            "/v1/models/{model}": {"get": {
                "summary": "Describe one served model", "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json_ok("Model"), **_errors(401, 404, 503)}}},
            "/health": {"get": {"summary": "Gateway and cluster health",
                                "responses": {"200": _json_ok("Healthy"), "503": _json_ok("Degraded")}}},
            "/ping": {"get": {"summary": "Liveness", "responses": {"200": {"description": "pong"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Prometheus text format"}}}},
        },
    }
