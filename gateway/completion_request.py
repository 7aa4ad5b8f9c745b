"""The request body of POST /v1/completions: one prompt or several, as text or token ids.

Its limits (MAX_PROMPTS, MAX_CHOICES of prompts x n) are gateway.protocol's, with the rest of the
input contract.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from gateway.errors import invalid_request
from gateway.protocol import INT32_MAX, MAX_CHOICES, MAX_PROMPTS, MAX_TOP_LOGPROBS, SamplingFields
from gateway.unsupported_fields import Suffix, refuse_suffix


def _check_prompt(value: Any) -> list[str] | list[list[int]]:
    """Normalise a prompt to a list of strings or a list of token-id lists."""
    def is_id(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise PydanticCustomError("prompt_type", "must be a string, a list of strings, a list of token "
                                                 "ids or a list of token-id lists, and not empty")
    if all(isinstance(p, str) for p in value):
        prompts: list = value
    elif all(is_id(t) for t in value):
        prompts = [value]
    elif all(isinstance(p, list) and p and all(is_id(t) for t in p) for p in value):
        prompts = value
    else:
        raise PydanticCustomError("prompt_type", "must be a string, a list of strings, a list of token "
                                                 "ids or a list of non-empty token-id lists")
    if len(prompts) > MAX_PROMPTS:
        raise PydanticCustomError("prompt_count", f"at most {MAX_PROMPTS} prompts per request")
    for p in prompts:
        if isinstance(p, list) and any(not 0 <= t <= INT32_MAX for t in p):
            raise PydanticCustomError("prompt_token", "token ids must be non-negative 32-bit integers")
    return prompts


_TOKEN_LIST_SCHEMA = {"type": "array", "minItems": 1,
                      "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX}}
_PROMPT_SCHEMA = {"anyOf": [
    {"type": "string"},
    {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": {"type": "string"}},
    _TOKEN_LIST_SCHEMA,
    {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": _TOKEN_LIST_SCHEMA},
]}


class CompletionRequest(SamplingFields):
    prompt: Annotated[Any, WithJsonSchema(_PROMPT_SCHEMA)]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Annotated[bool | None, WithJsonSchema({"anyOf": [{"const": False}, {"type": "null"}],
                                                 "description": "echoing the prompt is not supported"})] = None
    best_of: int | None = Field(None, ge=1)
    suffix: Suffix = None

    @field_validator("prompt")
    @classmethod
    def _valid_prompt(cls, value: Any) -> list[str] | list[list[int]]:
        return _check_prompt(value)

    def logprobs_k(self) -> int:
        return -1 if self.logprobs is None else self.logprobs

    def check(self) -> None:
        super().check()
        if self.echo:
            raise invalid_request("echo: echoing the prompt is not supported", param="echo")
        refuse_suffix(self.suffix)
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise invalid_request("best_of: only best_of equal to n is supported", param="best_of")
        if len(self.prompt) * (self.n or 1) > MAX_CHOICES:
            raise invalid_request(f"n: prompts x n may be at most {MAX_CHOICES}", param="n")
