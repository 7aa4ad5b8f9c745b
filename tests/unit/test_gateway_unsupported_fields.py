"""Fields of features the server lacks (JSON mode, tool calling, suffix) are refused with a 400 that
names them, not silently ignored; their forms that ask for nothing are accepted."""

from __future__ import annotations

import json

import pytest

from gateway.completion_request import CompletionRequest
from gateway.protocol import ChatCompletionRequest, parse_request
from tests.unit.test_gateway_validation import CHAT, TEXT, rejected

FUNCTION = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
TOOL = {"type": "function", "function": FUNCTION}


@pytest.mark.parametrize("body, model, param, words", [
    (CHAT | {"response_format": {"type": "json_object"}}, ChatCompletionRequest, "response_format", "JSON"),
    (CHAT | {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     ChatCompletionRequest, "response_format", "JSON"),
    (CHAT | {"response_format": "json"}, ChatCompletionRequest, "response_format", "JSON"),
    (TEXT | {"response_format": {"type": "json_object"}}, CompletionRequest, "response_format", "JSON"),
    (CHAT | {"tools": [TOOL]}, ChatCompletionRequest, "tools", 'tool_choice "none"'),
    (CHAT | {"tools": [TOOL], "tool_choice": "auto"}, ChatCompletionRequest, "tools", "tool calling"),
    (CHAT | {"tools": [TOOL], "tool_choice": "required"}, ChatCompletionRequest, "tools", "tool calling"),
    (CHAT | {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     ChatCompletionRequest, "tools", "tool calling"),
    (CHAT | {"functions": [FUNCTION]}, ChatCompletionRequest, "functions", 'function_call "none"'),
    (TEXT | {"suffix": " and that is all."}, CompletionRequest, "suffix", "suffix"),
])
def test_a_feature_the_server_lacks_is_refused_naming_its_field(body, model, param, words):
    error = rejected(body, model)
    assert error.param == param and words in error.message


def test_the_forms_that_ask_for_nothing_are_accepted():
    chat = parse_request(json_bytes(CHAT | {"response_format": {"type": "text"}, "tools": [TOOL],
                                            "tool_choice": "none", "functions": [FUNCTION],
                                            "function_call": "none"}), ChatCompletionRequest)
    assert chat.tool_choice == "none"
    parse_request(json_bytes(CHAT | {"tools": []}), ChatCompletionRequest)
    parse_request(json_bytes(TEXT | {"suffix": "", "response_format": None}), CompletionRequest)


def json_bytes(body: dict) -> bytes:
    return json.dumps(body).encode()
