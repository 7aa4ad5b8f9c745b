"""OpenAI request fields whose feature this server does not have: JSON or schema-constrained output,
tool calling, and insertion before a suffix.

Unknown fields are ignored, but these are known: a client that sends one relies on it, so each is
accepted only in its forms that ask for nothing (`response_format` text, no tools or `tool_choice`
"none", an empty `suffix`), and otherwise refused with a 400 naming it, never answered as if it
were absent. /openapi.json states the same rules.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import WithJsonSchema
from pydantic_core import PydanticCustomError

from gateway.errors import invalid_request

NO_CONSTRAINED_DECODING = ('only {"type": "text"} is supported: this server has no JSON or '
                           'schema-constrained decoding')

ResponseFormat = Annotated[Any, WithJsonSchema({
    "anyOf": [{"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}},
              {"type": "null"}],
    "description": NO_CONSTRAINED_DECODING})]

Suffix = Annotated[str | None, WithJsonSchema({
    "anyOf": [{"const": ""}, {"type": "null"}], "description": "inserting before a suffix is not supported"})]


def check_response_format(value: Any) -> Any:
    """A pydantic field validator's body: None or {"type": "text"} pass, anything else is refused."""
    if value is not None and (not isinstance(value, dict) or value.get("type") != "text"):
        raise PydanticCustomError("response_format", NO_CONSTRAINED_DECODING)
    return value


def _only_when_none(field: str, choice: str) -> dict[str, Any]:
    """JSON Schema for "`field` is absent, null or empty unless `choice` is "none"" (the tools rule)."""
    return {"anyOf": [{"properties": {field: {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}}},
                      {"required": [choice], "properties": {choice: {"const": "none"}}}]}


TOOL_RULES = [_only_when_none("tools", "tool_choice"), _only_when_none("functions", "function_call")]


def refuse_tool_use(tools: list[Any] | None, tool_choice: Any, field: str = "tools",
                    choice_field: str = "tool_choice") -> None:
    """Tools are accepted only with `tool_choice` "none", which asks the model for text (an empty
    list is no tools: some clients always send one)."""
    if tools and tool_choice != "none":
        raise invalid_request(
            f'{field}: tool calling is not supported (no tool-call parsing); send {choice_field} "none" '
            f"to have the model answer in text", param=field)


def refuse_suffix(suffix: str | None) -> None:
    if suffix:
        raise invalid_request("suffix: inserting text before a suffix is not supported", param="suffix")
