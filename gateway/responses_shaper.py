"""The Responses API's objects: the `response` a request returns, and the named events of its
stream, in OpenAI's shapes.

A response has one output item, an assistant `message` with one `output_text` part. Its status is
"completed" when generation stopped by itself (end of sequence, a stop string or token) and
"incomplete" with reason "max_output_tokens" when it ran out of tokens. A stream is:
response.created, response.in_progress, response.output_item.added, response.content_part.added,
then response.output_text.delta per increment, then response.output_text.done,
response.content_part.done, response.output_item.done and response.completed (or
response.incomplete); a failure after the stream opened ends it with response.failed instead.
Every event carries a `sequence_number` that counts up from 0, and the stream has no `[DONE]`.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.choice_decoder import ChoiceDelta
from gateway.errors import OpenAIError
from gateway.logprobs_format import chat_logprobs
from gateway.responses import ChoiceResult, ResponseShaper, UsageTally
from gateway.sse import encode_event

FINISH_LENGTH = "length"


class ResponsesShaper(ResponseShaper):
    """`settings`: the request's fields a response echoes (instructions, temperature, ...)."""

    response_object = "response"
    stream_end = b""

    def __init__(self, request_id: str, created: int, model: str, *, with_logprobs: bool,
                 settings: dict[str, Any]):
        super().__init__(request_id, created, model, with_logprobs=with_logprobs, include_usage=True)
        self._settings = settings
        self._item_id = "msg-" + request_id.partition("-")[2]
        self._sequence = 0
        self._streamed = ChoiceResult(0)

    def encode(self, payload: dict[str, Any]) -> bytes:
        return encode_event(payload, event=payload["type"])

    def response(self, results: list[ChoiceResult], usage: UsageTally) -> dict[str, Any]:
        return self._response(results[0], usage)

    def opening_chunks(self, choice_count: int) -> list[dict[str, Any]]:
        opening = self._response_object("in_progress", [])
        return [
            self._event("response.created", response=opening),
            self._event("response.in_progress", response=opening),
            self._event("response.output_item.added", output_index=0,
                        item=self._message("in_progress", [])),
            self._event("response.content_part.added", item_id=self._item_id, output_index=0, content_index=0,
                        part=self._text_part("", [])),
        ]

    def chunks(self, delta: ChoiceDelta) -> list[dict[str, Any]]:
        self._streamed.add(delta)
        if not delta.text and not delta.logprobs:
            return []
        return [self._event("response.output_text.delta", item_id=self._item_id, output_index=0, content_index=0,
                            delta=delta.text, logprobs=self._logprobs(delta.logprobs))]

    def closing_chunks(self, usage: UsageTally) -> list[dict[str, Any]]:
        final = self._response(self._streamed, usage)
        message = final["output"][0]
        part = message["content"][0]
        return [
            self._event("response.output_text.done", item_id=self._item_id, output_index=0, content_index=0,
                        text=part["text"], logprobs=part["logprobs"]),
            self._event("response.content_part.done", item_id=self._item_id, output_index=0, content_index=0,
                        part=part),
            self._event("response.output_item.done", output_index=0, item=message),
            self._event(f"response.{final['status']}", response=final),
        ]

    def error_chunks(self, error: OpenAIError) -> list[dict[str, Any]]:
        failed = self._response_object("failed", [])
        failed["error"] = {"code": error.code or "server_error", "message": error.message}
        return [self._event("response.failed", response=failed)]

    def _event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": event_type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _response(self, result: ChoiceResult, usage: UsageTally) -> dict[str, Any]:
        status = "incomplete" if result.finish_reason == FINISH_LENGTH else "completed"
        body = self._response_object(status, [self._message(status, [
            self._text_part(result.text, self._logprobs(result.logprobs))])])
        body["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            body["completed_at"] = int(time.time())
        return body

    def _response_object(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": self.response_object, "created_at": self.created,
                "status": status, "completed_at": None, "error": None, "incomplete_details": None,
                "model": self.model, "output": output, "usage": None, **self._settings}

    def _message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self._item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}

    def _logprobs(self, entries) -> list[dict[str, Any]]:
        return chat_logprobs(entries)["content"] if self.with_logprobs else []
