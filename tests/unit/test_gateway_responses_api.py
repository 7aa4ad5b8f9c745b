"""POST /v1/responses (OpenAI's Responses API, text only) through the official `openai` client and
raw HTTP, with an in-memory scheduler playing scripted outputs: the conversation that reaches the
worker, the response object, the named event stream, logprobs, and the refusals."""

from __future__ import annotations

import dataclasses
import json

import openai
import pytest

from tests.unit.served_gateway import served_gateway
from tests.unit.test_gateway_app import post
from tests.unit.test_gateway_support import (  # noqa: F401  (bundle, tokenizer: fixtures)
    HOLD,
    MODEL,
    FakeScheduler,
    bundle,
    outputs,
    start_gateway,
    tokenizer,
)

REPLY = "Hello there, café 😀!"


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer.encode(tokenizer.render_chat(messages), False)


def named_events(raw: str) -> list[tuple[str, dict]]:
    """(event name, payload) of each event of a Responses stream, asserting its framing: an `event:`
    line naming the payload's type, then one `data:` line."""
    assert raw.endswith("\n\n")
    events = []
    for block in raw[:-2].split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        payload = json.loads(data_line[len("data: "):])
        assert payload["type"] == name_line[len("event: "):]
        events.append((payload["type"], payload))
    return events


@pytest.fixture
def reply_ids(tokenizer) -> list[int]:
    return tokenizer.encode(REPLY, False)


def test_official_client_gets_the_text_usage_and_status(bundle, tokenizer, reply_ids):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, reply_ids, per_step=3, finish="stop",
                                                   cached_tokens=4))
    with served_gateway(fake) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        response = client.responses.create(model=MODEL, instructions="Answer briefly.", input="Say hello",
                                           max_output_tokens=50, temperature=0)
    prompt = chat_prompt(tokenizer, [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "Say hello"}])
    sent = fake.requests[0]
    assert sent.prompt_token_ids == prompt
    assert sent.sampling.max_tokens == 50 and sent.sampling.temperature == 0
    assert response.output_text == REPLY
    assert response.status == "completed" and response.incomplete_details is None
    assert response.object == "response" and response.model == MODEL and response.id.startswith("resp-")
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.usage.input_tokens == len(prompt) and response.usage.output_tokens == len(reply_ids)
    assert response.usage.total_tokens == len(prompt) + len(reply_ids)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.instructions == "Answer briefly." and response.max_output_tokens == 50
    assert response.store is False  # nothing is kept to retrieve or continue later


def test_running_out_of_tokens_is_an_incomplete_response(bundle, reply_ids):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, reply_ids[:2], finish="length"))
    with served_gateway(fake) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        response = client.responses.create(model=MODEL, input="Say hello", max_output_tokens=2)
    assert response.status == "incomplete" and response.output[0].status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


def test_message_items_become_the_same_conversation_as_chat_messages(bundle, tokenizer):
    fake = FakeScheduler(bundle)
    turns = [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"},
                                                         {"type": "input_text", "text": " you"}]},
        # an earlier reply sent back as it came out of a response's `output`
        {"type": "message", "role": "assistant", "id": "msg-1", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
        {"role": "user", "content": "And now?"},
    ]
    with served_gateway(fake) as url:
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused").responses.create(model=MODEL, input=turns)
    assert fake.requests[0].prompt_token_ids == chat_prompt(tokenizer, [
        {"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi you"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"}])


def test_stream_has_openais_event_sequence_and_the_sdk_assembles_it(bundle, reply_ids):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, reply_ids, per_step=2, finish="stop"))
    with served_gateway(fake) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        events = list(client.responses.create(model=MODEL, input="Say hello", stream=True))
        with client.responses.stream(model=MODEL, input="Say hello") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    names = [e.type for e in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(names[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == REPLY and "\ufffd" not in text
    assert events[-4].text == REPLY
    done = events[-1].response
    assert done.status == "completed" and done.output_text == REPLY and done.usage.output_tokens == len(reply_ids)
    assert len({e.item_id for e in events if hasattr(e, "item_id")} | {done.output[0].id}) == 1
    assert "".join(deltas) == REPLY and final.output_text == REPLY


async def test_raw_stream_names_every_event_and_has_no_done_marker(bundle, reply_ids):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, reply_ids, finish="length"))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/responses", {"model": MODEL, "input": "Hi", "stream": True})
        raw = await response.text()
    finally:
        await client.close()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert "[DONE]" not in raw
    events = named_events(raw)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_logprobs_come_with_include_and_top_logprobs(bundle, tokenizer, reply_ids):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, reply_ids[:3], logprobs=True, finish="stop"))
    with served_gateway(fake) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        with_logprobs = client.responses.create(model=MODEL, input="Hi", top_logprobs=2,
                                                include=["message.output_text.logprobs"])
        streamed = list(client.responses.create(model=MODEL, input="Hi", top_logprobs=2, stream=True,
                                                include=["message.output_text.logprobs"]))
        without = client.responses.create(model=MODEL, input="Hi", top_logprobs=2)
    assert [r.sampling.logprobs for r in fake.requests] == [2, 2, -1]
    entries = with_logprobs.output[0].content[0].logprobs
    assert [e.logprob for e in entries] == [-t / 1000 for t in reply_ids[:3]]
    assert [[a.logprob for a in e.top_logprobs] for e in entries] == [[-1.5, -2.5]] * 3
    assert "".join(e.token for e in entries) == tokenizer.decode(reply_ids[:3])
    streamed_entries = [e for ev in streamed if ev.type == "response.output_text.delta" for e in ev.logprobs]
    assert [e.logprob for e in streamed_entries] == [e.logprob for e in entries]
    assert without.output[0].content[0].logprobs == []


async def test_a_failure_after_the_stream_opened_ends_it_with_response_failed(bundle, tokenizer):
    ids = tokenizer.encode("slow", False)
    fake = FakeScheduler(bundle, lambda r: [*outputs(r.request_id, ids, finish=""), HOLD])
    client = await start_gateway(fake, request_timeout_s=0.3)
    try:
        response = await post(client, "/v1/responses", {"model": MODEL, "input": "Q", "stream": True})
        events = named_events(await response.text())
    finally:
        await client.close()
    assert response.status == 200
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    name, failed = events[-1]
    assert name == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "timeout"
    assert "".join(p["delta"] for n, p in events if n == "response.output_text.delta") == "slow"
    assert fake.closed_event(fake.requests[0].request_id).is_set()


@pytest.mark.parametrize("fields, param", [
    ({"previous_response_id": "resp-123"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"n": 2}, "n"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "42"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"top_logprobs": 21}, "top_logprobs"),
])
async def test_what_is_not_supported_is_refused_naming_the_field(bundle, fields, param):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/responses", {"model": MODEL, "input": "Hi"} | fields)
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 400, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error", body
    assert fake.requests == []


async def test_an_item_the_server_cannot_read_is_named_with_its_kind(bundle):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        call = await post(client, "/v1/responses", {"model": MODEL, "input": [
            {"role": "user", "content": "Hi"}, {"type": "function_call_output", "call_id": "c1", "output": "42"}]})
        image = await post(client, "/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "http://x/y.png"}]}]})
        messages = [(await r.json())["error"]["message"] for r in (call, image)]
    finally:
        await client.close()
    assert messages[0].startswith("input: input.1: items of type 'function_call_output' are not supported")
    assert messages[1].startswith("input: input.0.content.1: content of type 'input_image' is not supported")


async def test_long_text_and_many_parts_are_accepted(bundle, tokenizer):
    fake = FakeScheduler(dataclasses.replace(bundle, max_model_len=100_000))
    long_text = "word " * 2000  # 10,000 characters: limits count items, not characters
    parts = [{"type": "input_text", "text": "a"}] * 100
    client = await start_gateway(fake)
    try:
        as_string = await post(client, "/v1/responses", {"model": MODEL, "input": long_text})
        as_parts = await post(client, "/v1/responses", {"model": MODEL, "input": [
            {"role": "user", "content": long_text}, {"role": "user", "content": parts}]})
    finally:
        await client.close()
    assert (as_string.status, as_parts.status) == (200, 200)
    assert fake.requests[0].prompt_token_ids == chat_prompt(tokenizer, [{"role": "user", "content": long_text}])


async def test_store_and_tools_with_choice_none_are_accepted(bundle):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/responses", {
            "model": MODEL, "input": "Hi", "store": True, "tool_choice": "none", "metadata": {"k": "v"},
            "tools": [{"type": "function", "name": "f", "parameters": {}}]})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 200, body
    assert body["store"] is False and body["tool_choice"] == "none" and body["metadata"] == {"k": "v"}


async def test_context_overflow_names_max_output_tokens(bundle):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/responses",
                              {"model": MODEL, "input": "Hi", "max_output_tokens": bundle.max_model_len})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "max_output_tokens" and "max_output_tokens" in body["error"]["message"]


def test_retrieving_or_deleting_a_response_is_a_404_that_says_nothing_is_stored(bundle):
    fake = FakeScheduler(bundle)
    with served_gateway(fake) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        created = client.responses.create(model=MODEL, input="Hi", store=True)
        with pytest.raises(openai.NotFoundError) as retrieving:
            client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError) as deleting:
            client.responses.delete(created.id)
    for caught in (retrieving, deleting):
        assert caught.value.body["param"] == "response_id" and "not stored" in caught.value.body["message"]
        assert created.id in caught.value.body["message"]
