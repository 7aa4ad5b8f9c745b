"""Response schemas of /openapi.json: the OpenAI objects exactly as this gateway sends them.

They are components of the document (`RESPONSE_SCHEMAS`, referenced by name), so a client or a
fuzzer validates every body against them; gateway/responses.py, info_handlers.py and errors.py
are what produces those bodies, and the OpenAPI fuzz test holds the two together.
"""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer", "minimum": 0}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_LOGPROBS = {"type": ["object", "null"]}
_FINISHED = {"enum": ["stop", "length"]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _envelope(obj: str, choice: dict[str, Any], *, chunk: bool) -> dict[str, Any]:
    """A response carries its usage; a chunk carries none, null, or (the last) the usage."""
    fields = {"id": _STRING, "object": {"const": obj}, "created": _INT, "model": _STRING,
              "choices": {"type": "array", "items": choice}}
    if chunk:
        return _object(fields, {"usage": {"anyOf": [ref("Usage"), {"type": "null"}]}})
    return _object({**fields, "usage": ref("Usage")})


_USAGE = _object({"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
                 {"prompt_tokens_details": _object({"cached_tokens": _INT})})
_CHUNK_FINISH = {"enum": ["stop", "length", None]}
RESPONSE_EVENTS = ("created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
                   "output_text.done", "content_part.done", "output_item.done", "completed", "incomplete", "failed")

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ErrorResponse": _object({"error": _object({"message": _STRING, "type": _STRING,
                                                "param": _NULLABLE_STRING, "code": _NULLABLE_STRING})}),
    "Usage": _USAGE,
    "ChatCompletion": _envelope(
        "chat.completion",
        _object({"index": _INT, "finish_reason": _FINISHED, "logprobs": _LOGPROBS,
                 "message": _object({"role": {"const": "assistant"}, "content": _STRING})}), chunk=False),
    "ChatCompletionChunk": _envelope(
        "chat.completion.chunk",
        _object({"index": _INT, "finish_reason": _CHUNK_FINISH, "logprobs": _LOGPROBS,
                 "delta": _object({}, {"role": {"const": "assistant"}, "content": _STRING})}), chunk=True),
    "Completion": _envelope(
        "text_completion",
        _object({"index": _INT, "text": _STRING, "finish_reason": _FINISHED, "logprobs": _LOGPROBS}),
        chunk=False),
    "CompletionChunk": _envelope(
        "text_completion",
        _object({"index": _INT, "text": _STRING, "finish_reason": _CHUNK_FINISH, "logprobs": _LOGPROBS}),
        chunk=True),
    "Response": _object(
        {"id": _STRING, "object": {"const": "response"}, "created_at": _INT, "model": _STRING,
         "status": {"enum": ["completed", "incomplete"]},
         "output": {"type": "array", "minItems": 1, "maxItems": 1, "items": ref("ResponseOutputMessage")},
         "usage": ref("ResponseUsage"),
         "incomplete_details": {"anyOf": [_object({"reason": {"const": "max_output_tokens"}}), {"type": "null"}]},
         "error": {"type": "null"}},
        {"completed_at": {"type": ["integer", "null"]}, "instructions": _NULLABLE_STRING,
         "max_output_tokens": {"type": ["integer", "null"]}, "temperature": {"type": "number"},
         "top_p": {"type": "number"}, "store": {"const": False}}),
    "ResponseOutputMessage": _object(
        {"id": _STRING, "type": {"const": "message"}, "role": {"const": "assistant"},
         "status": {"enum": ["in_progress", "completed", "incomplete"]},
         "content": {"type": "array", "items": _object(
             {"type": {"const": "output_text"}, "text": _STRING, "annotations": {"type": "array", "maxItems": 0},
              "logprobs": {"type": "array"}})}}),
    "ResponseUsage": _object({"input_tokens": _INT, "output_tokens": _INT, "total_tokens": _INT,
                              "input_tokens_details": _object({"cached_tokens": _INT}),
                              "output_tokens_details": _object({"reasoning_tokens": _INT})}),
    "ResponseStreamEvent": _object(
        {"type": {"enum": [f"response.{name}" for name in RESPONSE_EVENTS]}, "sequence_number": _INT},
        {"response": {"type": "object"}, "item": ref("ResponseOutputMessage"), "item_id": _STRING,
         "output_index": _INT, "content_index": _INT, "delta": _STRING, "text": _STRING,
         "logprobs": {"type": "array"}, "part": {"type": "object"}}),
    "Tokenized": _object({"count": _INT, "max_model_len": _INT, "tokens": {"type": "array", "items": _INT},
                          "token_strs": {"anyOf": [{"type": "array", "items": _STRING}, {"type": "null"}]}}),
    "Detokenized": _object({"prompt": _STRING}),
    "Model": _object({"id": _STRING, "object": {"const": "model"}, "created": _INT, "owned_by": _STRING},
                     {"max_model_len": _INT}),
    "ModelList": _object({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}),
    "Health": _object({"status": {"enum": ["ok", "degraded", "draining"]}, "uptime_seconds": {"type": "number"},
                       "total_requests": _INT, "workers": {"type": "object", "additionalProperties": _INT}},
                      {"detail": _STRING, "queued": _INT, "cluster_total_requests": _INT}),
}


def sse_event(chunk: str) -> dict[str, Any]:
    """One event of a completion stream (Open API 3.1 has a text/event-stream schema describe each
    event): a `chunk`, a mid-stream error body, or the closing `[DONE]`."""
    payload = {"type": "string", "contentMediaType": "application/json",
               "contentSchema": {"anyOf": [ref(chunk), ref("ErrorResponse")]}}
    return _object({"data": {"anyOf": [{"const": "[DONE]"}, payload]}})


def named_sse_event(payload_schema: str) -> dict[str, Any]:
    """One event of a Responses API stream: its `event` name is the payload's `type`; no `[DONE]`."""
    return _object({"event": _STRING, "data": {"type": "string", "contentMediaType": "application/json",
                                               "contentSchema": ref(payload_schema)}})
