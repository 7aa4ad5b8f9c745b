"""The request body of POST /v1/responses (OpenAI's Responses API) and the conversation it asks for.

The text subset of the API: `input` as a string or a list of message items whose content is text,
`instructions` (a system message before them), `max_output_tokens`, the sampling fields that chat
completions take (OpenAI's `temperature`, `top_p`, and vLLM's extras), and logprobs through
`top_logprobs` with `include: ["message.output_text.logprobs"]`.

Refused with a 400 naming the field, never answered as if absent, as gateway.unsupported_fields
does for chat: items other than messages (function calls and their outputs, reasoning, item
references) and content other than text (images, files, audio); `previous_response_id` (responses
are not stored, so there is nothing to continue); `background`; `truncation` "auto"; a
`reasoning.effort`; `text.format` other than text; tools unless `tool_choice` is "none"; `n` above
1 (a response has one output message). `store` is accepted and answered with `store: false`, as
vLLM does without a response store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from gateway.errors import invalid_request
from gateway.protocol import (DEFAULT_TEMPERATURE, INT32_MAX, MAX_MESSAGES, MAX_TOP_LOGPROBS, STREAM_OPTIONS_RULE,
                              ChatMessage, SamplingFields, StrictModel)
from gateway.unsupported_fields import TOOL_RULES, check_response_format, refuse_tool_use

OUTPUT_TEXT_LOGPROBS = "message.output_text.logprobs"

_TEXT_FORMAT_SCHEMA = {"anyOf": [
    {"type": "object", "properties": {"format": {"anyOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}, {"type": "null"}]}}},
    {"type": "null"}],
    "description": 'text.format: only {"type": "text"} is supported (no JSON or schema-constrained decoding)'}
_NO_REASONING_SCHEMA = {"anyOf": [
    {"type": "object", "properties": {"effort": {"type": "null"}}}, {"type": "null"}],
    "description": "served models are not reasoning models: no reasoning.effort"}
_ABSENT = {"type": "null", "description": "not supported"}


class InputText(StrictModel):
    """A text part of a message: `input_text` in what the user sends, `output_text` in an earlier
    assistant reply sent back as context."""

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | Annotated[list[InputText], Field(max_length=MAX_MESSAGES)]

    def as_chat(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ChatMessage(role=self.role, content=text)


class ResponsesRequest(SamplingFields):
    """Invariant after `check()`: one choice (n is 1), and the conversation is text only."""

    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_RULE, TOOL_RULES[0]]})

    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1,
                                                                                     max_length=MAX_MESSAGES)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include: list[str] | None = Field(None, max_length=32)
    store: bool | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    text: Annotated[Any, WithJsonSchema(_TEXT_FORMAT_SCHEMA)] = None
    reasoning: Annotated[Any, WithJsonSchema(_NO_REASONING_SCHEMA)] = None
    truncation: Annotated[str | None, WithJsonSchema({"anyOf": [{"const": "disabled"}, {"type": "null"}]})] = None
    background: Annotated[bool | None, WithJsonSchema({"anyOf": [{"const": False}, {"type": "null"}]})] = None
    previous_response_id: Annotated[str | None, WithJsonSchema(_ABSENT)] = None
    # accepted only with the choice "none": see gateway.unsupported_fields
    tools: list[Any] | None = None
    tool_choice: Any = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_messages_only(cls, value: Any) -> Any:
        """Name an item or part of a kind this server does not serve, rather than every way the
        union of string and message list failed to match it."""
        for i, item in enumerate(value if isinstance(value, list) else []):
            if not isinstance(item, dict):
                continue
            kind = item.get("type", "message")
            if kind != "message":
                raise PydanticCustomError("input_item", f"input.{i}: items of type {kind!r} are not supported; "
                                                        "only messages with text content (no tool calls or their "
                                                        "outputs, reasoning, or item references)")
            for j, part in enumerate(item.get("content") if isinstance(item.get("content"), list) else []):
                if isinstance(part, dict) and part.get("type") not in ("input_text", "output_text"):
                    raise PydanticCustomError("input_part", f"input.{i}.content.{j}: content of type "
                                                            f"{part.get('type')!r} is not supported; only text "
                                                            "(input_text, output_text)")
        return value

    @field_validator("text")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is not None:
            if not isinstance(value, dict):
                raise ValueError("must be an object such as {\"format\": {\"type\": \"text\"}}")
            check_response_format(value.get("format"))
        return value

    @field_validator("reasoning")
    @classmethod
    def _no_reasoning(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, dict) or value.get("effort") is not None):
            raise ValueError("served models are not reasoning models: reasoning.effort is not supported")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_output_tokens or self.max_tokens

    def logprobs_k(self) -> int:
        return (self.top_logprobs or 0) if OUTPUT_TEXT_LOGPROBS in (self.include or []) else -1

    def check(self) -> None:
        super().check()
        if (self.n or 1) != 1:
            raise invalid_request("n: a response has one output message; n must be 1", param="n")
        if self.previous_response_id is not None:
            raise invalid_request("previous_response_id: responses are not stored, so none can be continued; "
                                  "send the earlier turns in `input`", param="previous_response_id")
        if self.background:
            raise invalid_request("background: responses run only in the foreground", param="background")
        if self.truncation not in (None, "disabled"):
            raise invalid_request('truncation: only "disabled" is supported (a conversation longer than the '
                                  "context is refused, not cut)", param="truncation")
        refuse_tool_use(self.tools, self.tool_choice)

    def echoed_settings(self) -> dict[str, Any]:
        """The fields a response object repeats from its request, as this server applied them."""
        return {"background": False, "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "metadata": self.metadata or {}, "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": None, "store": False,
                "temperature": DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
                "text": {"format": {"type": "text"}}, "tool_choice": "none" if self.tool_choice == "none" else "auto",
                "tools": [], "top_logprobs": self.top_logprobs or 0, "top_p": 1.0 if self.top_p is None else self.top_p,
                "truncation": "disabled", "user": self.user}

    def conversation(self) -> list[ChatMessage]:
        """The chat the model continues: `instructions` as a system message, then `input`."""
        messages = [ChatMessage(role="user", content=self.input)] if isinstance(self.input, str) \
            else [m.as_chat() for m in self.input]
        if self.instructions:
            messages.insert(0, ChatMessage(role="system", content=self.instructions))
        return messages
