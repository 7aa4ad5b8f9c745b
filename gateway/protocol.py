"""Request bodies of the OpenAI endpoints as pydantic models: the gateway's input contract (with
gateway/completion_request.py, responses_request.py and tokenization.py, built on this file's parts).

Parsing is strict (no string-to-number coercion, no NaN or infinity) and unknown fields are
ignored, as OpenAI and vLLM do. Limits a client can hit, chosen to bound the work one request can
cause (each is also in /openapi.json):

- `n` <= MAX_N; prompts per completions request <= MAX_PROMPTS; prompts x n <= MAX_CHOICES
- `stop`: at most MAX_STOP_STRINGS strings of 1..MAX_STOP_LENGTH characters
- `stop_token_ids`: at most MAX_STOP_TOKEN_IDS ids; `logprobs` / `top_logprobs` <= MAX_TOP_LOGPROBS
- `logit_bias`: at most MAX_LOGIT_BIAS token ids (decimal strings, as OpenAI's), each bias within
  +-MAX_BIAS
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.errors import from_validation_error, invalid_request
from gateway.unsupported_fields import TOOL_RULES, ResponseFormat, check_response_format, refuse_tool_use

MAX_N = 16
MAX_PROMPTS = 64
MAX_CHOICES = 64
MAX_STOP_STRINGS = 32
MAX_STOP_LENGTH = 256
MAX_STOP_TOKEN_IDS = 256
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_BIAS = 100  # OpenAI's bound: +-100 already bans or forces a token
MAX_MESSAGES = 4096
MAX_TEMPLATE_KWARGS = 64
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default; send temperature=0 for greedy decoding

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
_TOKEN_ID_KEY = r"^[0-9]{1,9}$"  # a token id as a JSON object key, below 10**9 (fits int32)
_BIAS_SCHEMA = {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS}
_Bias = Annotated[float, Field(ge=-MAX_BIAS, le=MAX_BIAS)]
LogitBias = Annotated[
    Annotated[dict[Annotated[str, Field(pattern=_TOKEN_ID_KEY)], _Bias], Field(max_length=MAX_LOGIT_BIAS)] | None,
    WithJsonSchema({"anyOf": [{"type": "object", "maxProperties": MAX_LOGIT_BIAS,
                               "propertyNames": {"pattern": _TOKEN_ID_KEY}, "additionalProperties": _BIAS_SCHEMA},
                              {"type": "null"}]}),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    def check(self) -> None:
        """Cross-field rules pydantic cannot express per field; raises a 400 naming the field."""


class StreamOptions(StrictModel):
    include_usage: bool | None = None


def _check_stop(value: Any) -> list[str]:
    if value is None:
        return []
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise PydanticCustomError("stop_type", "must be a string or a list of strings")
    if len(strings) > MAX_STOP_STRINGS:
        raise PydanticCustomError("stop_count", f"at most {MAX_STOP_STRINGS} stop strings are allowed")
    for s in strings:
        if not 1 <= len(s) <= MAX_STOP_LENGTH:
            raise PydanticCustomError(
                "stop_length", f"each stop string must have 1 to {MAX_STOP_LENGTH} characters")
    return strings


_STOP_SCHEMA = {"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH},
    {"type": "array", "maxItems": MAX_STOP_STRINGS,
     "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH}},
    {"type": "null"},
]}


def only_with(field: str, other: str) -> dict[str, Any]:
    """JSON Schema for "`field` is absent or null unless `other` is true": a cross-field rule of
    `check()` stated in /openapi.json, so that clients (and the fuzzer) see it."""
    return {"anyOf": [{"properties": {field: {"type": "null"}}},
                      {"required": [other], "properties": {other: {"const": True}}}]}


STREAM_OPTIONS_RULE = only_with("stream_options", "stream")


class SamplingFields(StrictModel):
    """Fields shared by chat and text completions (OpenAI's plus vLLM's extras).
    A subclass that sets its own json_schema_extra replaces this one, so repeats its rules."""

    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_RULE]})

    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: Annotated[Any, WithJsonSchema(_STOP_SCHEMA)] = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=1024)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    # vLLM extras
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    priority: int | None = Field(None, ge=-INT32_MAX, le=INT32_MAX)
    cache_salt: str | None = Field(None, min_length=1, max_length=256)
    logit_bias: LogitBias = None
    response_format: ResponseFormat = None  # accepted for text only: see gateway.unsupported_fields

    @field_validator("stop")
    @classmethod
    def _valid_stop(cls, value: Any) -> list[str]:
        return _check_stop(value)

    @field_validator("response_format")
    @classmethod
    def _valid_response_format(cls, value: Any) -> Any:
        return check_response_format(value)

    @property
    def stop_strings(self) -> list[str]:
        return self.stop or []

    @property
    def logit_bias_by_id(self) -> dict[int, float]:
        return {int(token): bias for token, bias in (self.logit_bias or {}).items()}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int:
        """Alternatives per position to ask the worker for, or -1 for no logprobs at all."""
        return -1

    def check(self) -> None:
        """Cross-field rules pydantic cannot express per field; raises a 400 naming the field."""
        if self.stream_options is not None and not self.stream:
            raise invalid_request("stream_options: only allowed when stream is true",
                                  param="stream_options")


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    # The document's form of _content_required.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"role": {"const": "assistant"}}},
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # Only an assistant turn may come without content (OpenAI's rule, for tool calls).
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a `{self.role}` message needs `content`")
        return self

    def for_template(self) -> dict[str, str]:
        """The message as chat templates expect it: role and one string of content."""
        if isinstance(self.content, list):
            text = "".join(p.text for p in self.content)
        else:
            text = self.content or ""
        message = {"role": self.role, "content": text}
        if self.name:
            message["name"] = self.name
        return message


class ChatTemplateFields(StrictModel):
    """vLLM's chat template extras: continue the last (assistant) message instead of starting a
    reply; extra template variables (Qwen3's enable_thinking, ...)."""

    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, max_length=MAX_TEMPLATE_KWARGS)

    def check_template_options(self, messages: list[ChatMessage]) -> None:
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise invalid_request("continue_final_message: cannot be combined with add_generation_prompt "
                                      "true (send add_generation_prompt false)", param="continue_final_message")
            if messages[-1].role != "assistant":
                raise invalid_request("continue_final_message: the last message must be the assistant's, "
                                      "which the model then continues", param="continue_final_message")

    def template_options(self) -> dict[str, Any]:
        """chat_prompt_ids' keywords, with vLLM's defaults: a reply is started unless the last
        message is continued."""
        continuing = bool(self.continue_final_message)
        return {"add_generation_prompt": not continuing if self.add_generation_prompt is None
                else self.add_generation_prompt,
                "continue_final_message": continuing, "template_kwargs": self.chat_template_kwargs}


class ChatCompletionRequest(SamplingFields, ChatTemplateFields):
    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_RULE,
                                                           only_with("top_logprobs", "logprobs"), *TOOL_RULES]})

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # accepted only with the choice "none": see gateway.unsupported_fields
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else -1

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid_request("top_logprobs: requires logprobs to be true", param="top_logprobs")
        refuse_tool_use(self.tools, self.tool_choice)
        refuse_tool_use(self.functions, self.function_call, "functions", "function_call")
        self.check_template_options(self.messages)


RequestT = TypeVar("RequestT", bound=StrictModel)


def parse_request(body: bytes, model: type[RequestT]) -> RequestT:
    """Validate a raw JSON body; any problem becomes a 400 OpenAIError naming the field."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
    request.check()
    return request
