"""Request validation: every rule gives a 400 OpenAI error naming the field; valid input passes."""

from __future__ import annotations

import json

import pytest

from gateway.errors import OpenAIError
from gateway.planning import plan_generation
from gateway.prompts import chat_prompt_ids, completion_prompt_ids
from gateway.completion_request import CompletionRequest
from gateway.protocol import MAX_LOGIT_BIAS, MAX_N, MAX_STOP_STRINGS, ChatCompletionRequest, parse_request
from tests.unit.test_gateway_support import bundle, tokenizer  # noqa: F401  (fixtures)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"model": "m", "prompt": "hi"}


def rejected(body: dict | bytes, model=ChatCompletionRequest) -> OpenAIError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(OpenAIError) as caught:
        parse_request(raw, model)
    error = caught.value
    assert error.status == 400 and error.type == "invalid_request_error"
    return error


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", "0.5"),
    ("top_p", 0), ("top_p", 1.1),
    ("n", 0), ("n", MAX_N + 1), ("n", 10**30), ("n", 1.5), ("n", True),
    ("presence_penalty", 2.1), ("frequency_penalty", -3),
    ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 2**40), ("max_completion_tokens", 0),
    ("top_logprobs", 21), ("seed", 2**70), ("seed", "7"),
    ("top_k", -2), ("min_p", 1.5), ("repetition_penalty", 0), ("min_tokens", -1),
    ("stop_token_ids", [-1]), ("stop_token_ids", list(range(300))),
    ("logit_bias", {"x": 1}), ("logit_bias", {"-1": 1}), ("logit_bias", {"5": 101}), ("logit_bias", {"5": "1"}),
    ("logit_bias", [5]), ("logit_bias", {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}),
    ("stream", "yes"), ("stream_options", {"include_usage": "yes"}),
    ("cache_salt", ""), ("priority", 2**40), ("user", 5), ("model", ""),
])
def test_each_sampling_rule_names_its_field(field, value):
    error = rejected(CHAT | {field: value})
    assert error.param == field or error.param.startswith(field + ".")
    assert field in error.message


@pytest.mark.parametrize("raw", [b'{"model": "m", "temperature": NaN}', b'{"model": "m", "temperature": Infinity}',
                                 b'{"model": "m", "top_p": 1e999}'])
def test_non_finite_numbers_are_rejected(raw):
    assert rejected(raw).message.split(":")[0] in ("temperature", "top_p")


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "wizard", "content": "x"}], "messages.0.role"),
    ([{"content": "x"}], "messages.0.role"),
    ([{"role": "user", "content": 5}], "messages.0.content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content"),
    ("hello", "messages"),
])
def test_malformed_messages_are_rejected(messages, param):
    assert rejected(CHAT | {"messages": messages}).param == param


@pytest.mark.parametrize("prompt", [[], "", [[]], [1, "a"], [[1, 2], [-1]], [2**40], {"text": "x"}, None,
                                    ["x"] * 65])
def test_malformed_prompts_are_rejected(prompt):
    body = TEXT | {"prompt": prompt}
    if prompt == "":
        parse_request(json.dumps(body).encode(), CompletionRequest)  # empty text is caught after tokenizing
        return
    assert rejected(body, CompletionRequest).param == "prompt"


@pytest.mark.parametrize("stop", [[""], ["x" * 257], ["s"] * (MAX_STOP_STRINGS + 1), [1], 5, ["s"] * 5000])
def test_stop_strings_are_bounded(stop):
    assert rejected(CHAT | {"stop": stop}).param == "stop"


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b'"text"', "invalid_json"),
    (b"", "invalid_json"), (b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid_json"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json"),
])
def test_unparseable_bodies_are_400(raw, code):
    assert rejected(raw).code == code


def test_cross_field_rules():
    assert rejected(CHAT | {"top_logprobs": 2}).param == "top_logprobs"
    assert rejected(CHAT | {"stream_options": {"include_usage": True}}).param == "stream_options"
    assert rejected(TEXT | {"echo": True}, CompletionRequest).param == "echo"
    assert rejected(TEXT | {"prompt": ["a"] * 8, "n": 9}, CompletionRequest).param == "n"


def test_unknown_fields_are_ignored_and_forms_normalised():
    chat = parse_request(json.dumps(CHAT | {"store": True, "surprise": {"x": 1}, "stop": "END"}).encode(),
                         ChatCompletionRequest)
    assert chat.stop_strings == ["END"]
    assert parse_request(json.dumps(TEXT | {"prompt": [1, 2, 3]}).encode(), CompletionRequest).prompt == [[1, 2, 3]]
    assert parse_request(json.dumps(TEXT | {"prompt": ["a", "b"]}).encode(), CompletionRequest).prompt == ["a", "b"]
    nulls = parse_request(json.dumps(CHAT | {"temperature": None, "n": None, "stop": None}).encode(),
                          ChatCompletionRequest)
    assert nulls.stop_strings == [] and nulls.n is None


def parsed(body: dict, model=CompletionRequest):
    return parse_request(json.dumps(body).encode(), model)


def test_prompt_plus_max_tokens_beyond_context_names_both_numbers(tokenizer):
    limit = tokenizer.max_model_len
    req = parsed(TEXT | {"prompt": [5] * 100, "max_tokens": limit - 50})
    with pytest.raises(OpenAIError) as caught:
        plan_generation(req, completion_prompt_ids(tokenizer, req), tokenizer, "cmpl", "prompt", "max_tokens")
    message = caught.value.message
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
    assert str(limit) in message and "100 in the prompt" in message and f"{limit - 50} in the completion" in message


def test_absent_max_tokens_uses_all_remaining_context(tokenizer):
    req = parsed(TEXT | {"prompt": [5] * 100})
    plan = plan_generation(req, completion_prompt_ids(tokenizer, req), tokenizer, "cmpl", "prompt", "max_tokens")
    assert plan.requests[0].sampling.max_tokens == tokenizer.max_model_len - 100


def test_prompt_filling_the_context_leaves_no_room(tokenizer):
    req = parsed(TEXT | {"prompt": [5] * tokenizer.max_model_len})
    with pytest.raises(OpenAIError) as caught:
        plan_generation(req, completion_prompt_ids(tokenizer, req), tokenizer, "cmpl", "prompt", "max_tokens")
    assert caught.value.param == "prompt" and str(tokenizer.max_model_len) in caught.value.message


@pytest.mark.parametrize("body, param", [
    (TEXT | {"prompt": [1, 2, 10**6]}, "prompt"),
    (TEXT | {"prompt": "x", "stop_token_ids": [10**6]}, "stop_token_ids"),
    (TEXT | {"prompt": "x", "logit_bias": {"5": 1, "1000000": -1}}, "logit_bias"),
    (TEXT | {"prompt": "x", "max_tokens": 5, "min_tokens": 6}, "min_tokens"),
])
def test_token_ids_outside_vocab_and_inconsistent_limits(tokenizer, body, param):
    req = parsed(body)
    with pytest.raises(OpenAIError) as caught:
        plan_generation(req, completion_prompt_ids(tokenizer, req), tokenizer, "cmpl", "prompt", "max_tokens")
    assert caught.value.status == 400 and caught.value.param == param


def test_empty_text_prompt_is_rejected_after_tokenizing(tokenizer):
    with pytest.raises(OpenAIError) as caught:
        completion_prompt_ids(tokenizer, parsed(TEXT | {"prompt": ""}))
    assert caught.value.param == "prompt"


def test_chat_template_failure_is_a_400(tokenizer):
    # Real templates reject conversations they cannot render (e.g. a system message); that is the
    # input's fault, so the client gets the template's own words in a 400.
    req = parsed(CHAT | {"messages": [{"role": "system", "content": "x"}]}, ChatCompletionRequest)
    original = tokenizer.tokenizer.chat_template
    tokenizer.tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}"
                                         "{{ raise_exception('System role not supported') }}{% endif %}")
    try:
        with pytest.raises(OpenAIError) as caught:
            chat_prompt_ids(tokenizer, req.model, req.messages)
    finally:
        tokenizer.tokenizer.chat_template = original
    assert caught.value.status == 400 and "System role not supported" in caught.value.message


def test_sampling_defaults_and_vllm_extras_reach_the_worker(tokenizer):
    req = parsed(TEXT | {"max_tokens": 4, "top_k": -1, "ignore_eos": True, "stop_token_ids": [7],
                         "min_tokens": 2, "priority": -3, "cache_salt": "s", "repetition_penalty": 1.2,
                         "logit_bias": {"7": -2.5, "0": 100}})
    upstream = plan_generation(req, completion_prompt_ids(tokenizer, req), tokenizer, "cmpl", "prompt",
                               "max_tokens").requests[0]
    s = upstream.sampling
    assert (s.temperature, s.top_p, s.top_k, s.logprobs) == (1.0, 1.0, 0, -1)
    assert (s.ignore_eos, s.stop_token_ids, s.min_tokens, s.repetition_penalty) == (True, [7], 2, 1.2)
    assert s.logit_bias == {7: -2.5, 0: 100.0}
    assert (upstream.priority, upstream.cache_salt) == (-3, "s")
