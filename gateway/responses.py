"""Response bodies and stream chunks of chat and text completions, in OpenAI's exact shapes, and
the shaper interface that gateway/serving.py drives for every generation endpoint.

Usage counts each prompt once however many choices it has (`n`); completion tokens sum over all
choices; `cached_tokens` of a prompt is the most any of its choices found in the prefix cache.
"""

from __future__ import annotations

from typing import Any

from gateway.choice_decoder import ChoiceDelta, TokenLogprobs
from gateway.errors import OpenAIError
from gateway.logprobs_format import chat_logprobs, completion_logprobs
from gateway.sse import DONE_EVENT, encode_event


class ChoiceResult:
    """A choice accumulated over its deltas, for non-streaming responses."""

    def __init__(self, index: int):
        self.index = index
        self._parts: list[str] = []
        self.logprobs: list[TokenLogprobs] = []
        self.finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self._parts.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        self.finish_reason = delta.finish_reason or self.finish_reason

    @property
    def text(self) -> str:
        return "".join(self._parts)


class UsageTally:
    def __init__(self, prompt_lengths: list[int], n: int):
        self._prompt_lengths = prompt_lengths
        self._n = n
        self._completion: dict[int, int] = {}
        self._cached: dict[int, int] = {}

    def add(self, delta: ChoiceDelta) -> None:
        self._completion[delta.index] = delta.completion_tokens
        prompt = delta.index // self._n
        self._cached[prompt] = max(self._cached.get(prompt, 0), delta.cached_tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(self._prompt_lengths)

    @property
    def completion_tokens(self) -> int:
        return sum(self._completion.values())

    @property
    def cached_tokens(self) -> int:
        return sum(self._cached.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class ResponseShaper:
    """Shapes deltas and results into one endpoint's OpenAI objects. A stream is: opening_chunks,
    chunks of each delta, closing_chunks (or error_chunks on a failure), then stream_end; each
    payload framed by encode."""

    response_object = ""
    chunk_object = ""
    stream_end = DONE_EVENT

    def __init__(self, request_id: str, created: int, model: str, *, with_logprobs: bool,
                 include_usage: bool):
        self.request_id = request_id
        self.created = created
        self.model = model
        self.with_logprobs = with_logprobs
        self.include_usage = include_usage

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = self._envelope(self.chunk_object, choices)
        if self.include_usage:
            chunk["usage"] = None  # OpenAI: every chunk but the last carries "usage": null
        return chunk

    def encode(self, payload: dict[str, Any]) -> bytes:
        return encode_event(payload)

    def opening_chunks(self, choice_count: int) -> list[dict[str, Any]]:
        return []

    def chunks(self, delta: ChoiceDelta) -> list[dict[str, Any]]:
        return [self.chunk(delta)]

    def closing_chunks(self, usage: UsageTally) -> list[dict[str, Any]]:
        return [self.usage_chunk(usage)] if self.include_usage else []

    def error_chunks(self, error: OpenAIError) -> list[dict[str, Any]]:
        return [error.body()]

    def usage_chunk(self, usage: UsageTally) -> dict[str, Any]:
        chunk = self._envelope(self.chunk_object, [])
        chunk["usage"] = usage.as_dict()
        return chunk

    def response(self, results: list[ChoiceResult], usage: UsageTally) -> dict[str, Any]:
        body = self._envelope(self.response_object, [self._final_choice(r) for r in results])
        body["usage"] = usage.as_dict()
        return body

    def chunk(self, delta: ChoiceDelta) -> dict[str, Any]:
        raise NotImplementedError

    def _final_choice(self, result: ChoiceResult) -> dict[str, Any]:
        raise NotImplementedError


class ChatShaper(ResponseShaper):
    response_object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def opening_chunks(self, choice_count: int) -> list[dict[str, Any]]:
        return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
                for i in range(choice_count)]

    def chunk(self, delta: ChoiceDelta) -> dict[str, Any]:
        logprobs = chat_logprobs(delta.logprobs) if self.with_logprobs and delta.logprobs else None
        return self._chunk([{"index": delta.index, "delta": {"content": delta.text} if delta.text else {},
                             "logprobs": logprobs, "finish_reason": delta.finish_reason}])

    def _final_choice(self, result: ChoiceResult) -> dict[str, Any]:
        return {"index": result.index, "message": {"role": "assistant", "content": result.text},
                "logprobs": chat_logprobs(result.logprobs) if self.with_logprobs else None,
                "finish_reason": result.finish_reason}


class CompletionShaper(ResponseShaper):
    response_object = "text_completion"
    chunk_object = "text_completion"

    def chunk(self, delta: ChoiceDelta) -> dict[str, Any]:
        logprobs = completion_logprobs(delta.logprobs) if self.with_logprobs and delta.logprobs else None
        return self._chunk([{"index": delta.index, "text": delta.text, "logprobs": logprobs,
                             "finish_reason": delta.finish_reason}])

    def _final_choice(self, result: ChoiceResult) -> dict[str, Any]:
        return {"index": result.index, "text": result.text,
                "logprobs": completion_logprobs(result.logprobs) if self.with_logprobs else None,
                "finish_reason": result.finish_reason}
