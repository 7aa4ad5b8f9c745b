"""The gateway app end to end over HTTP, with an in-memory scheduler playing scripted outputs."""

from __future__ import annotations

import asyncio
import json

from tests.unit.test_gateway_support import (  # noqa: F401  (bundle, tokenizer: fixtures)
    HOLD,
    MODEL,
    FakeScheduler,
    bundle,
    outputs,
    sse_payloads,
    start_gateway,
    tokenizer,
)

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}


async def post(client, path: str, body: dict, **kwargs):
    return await client.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"},
                              **kwargs)


async def test_chat_completion_returns_the_decoded_text_and_usage(bundle, tokenizer):
    text = "Hello there, café 😀!"
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, tokenizer.encode(text, False),
                                                    per_step=3, finish="stop", cached_tokens=4))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/chat/completions", CHAT | {"temperature": 0, "max_tokens": 50})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": text},
                                "logprobs": None, "finish_reason": "stop"}]
    sent = fake.requests[0]
    prompt = tokenizer.encode(tokenizer.render_chat([{"role": "user", "content": "Say hello"}]), False)
    assert sent.prompt_token_ids == prompt
    assert sent.sampling.max_tokens == 50 and sent.sampling.temperature == 0
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(tokenizer.encode(text, False)),
                             "total_tokens": len(prompt) + len(tokenizer.encode(text, False)),
                             "prompt_tokens_details": {"cached_tokens": 4}}


async def test_streamed_chat_uses_openai_chunks_and_ends_with_usage_and_done(bundle, tokenizer):
    text = "Streaming works 👍🏽 fine"
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, tokenizer.encode(text, False), finish="stop"))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/chat/completions",
                              CHAT | {"stream": True, "stream_options": {"include_usage": True}})
        raw = await response.text()
    finally:
        await client.close()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}]
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert "".join(content) == text
    assert not any("\ufffd" in piece for piece in content)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(tokenizer.encode(text, False))


async def test_n_choices_run_as_separate_upstream_requests_merged_by_index(bundle, tokenizer):
    texts = {"0": " first answer", "1": " second answer"}
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, tokenizer.encode(texts[r.request_id[-1]], False)))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": "Once", "n": 2, "max_tokens": 5, "seed": 7})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 200, body
    assert body["object"] == "text_completion"
    assert sorted((c["index"], c["text"]) for c in body["choices"]) == [(0, texts["0"]), (1, texts["1"])]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    ids = [r.request_id for r in fake.requests]
    assert len(set(ids)) == 2 and {i[-2:] for i in ids} == {"-0", "-1"}
    assert sorted(r.sampling.seed for r in fake.requests) == [7, 8]
    prompt_len = len(tokenizer.encode("Once", True))
    assert body["usage"]["prompt_tokens"] == prompt_len  # counted once, not once per choice
    assert body["usage"]["completion_tokens"] == sum(len(tokenizer.encode(t, False)) for t in texts.values())


async def test_several_prompts_times_n_index_choices_prompt_major(bundle, tokenizer):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, tokenizer.encode(" x", False)))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": ["alpha", "beta gamma"], "n": 2, "max_tokens": 3})
        body = await response.json()
    finally:
        await client.close()
    assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2, 3]
    by_id = {r.request_id.rsplit("-", 1)[1]: r.prompt_token_ids for r in fake.requests}
    assert by_id["0"] == by_id["1"] == tokenizer.encode("alpha", True)
    assert by_id["2"] == by_id["3"] == tokenizer.encode("beta gamma", True)


async def test_stop_string_cuts_output_and_cancels_the_upstream_stream(bundle, tokenizer):
    ids = tokenizer.encode("Answer: 42\n\nMore text", False)
    fake = FakeScheduler(bundle, lambda r: [*outputs(r.request_id, ids, finish=""), HOLD])
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": "Q", "stop": ["\n\n"], "max_tokens": 30})
        body = await response.json()
    finally:
        await client.close()
    assert body["choices"][0]["text"] == "Answer: 42"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert fake.closed_event(fake.requests[0].request_id).is_set()


async def test_completion_logprobs_have_openai_shape_with_offsets(bundle, tokenizer):
    ids = tokenizer.encode("The quick fox", False)
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, ids, logprobs=True))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": "Q", "logprobs": 2, "max_tokens": 10})
        body = await response.json()
    finally:
        await client.close()
    assert fake.requests[0].sampling.logprobs == 2
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert logprobs["token_logprobs"] == [-t / 1000 for t in ids]
    assert logprobs["text_offset"] == [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    first = logprobs["top_logprobs"][0]
    assert first == {tokenizer.decode([ids[0] + 1]): -1.5, tokenizer.decode([ids[0] + 2]): -2.5,
                     tokenizer.decode([ids[0]]): -ids[0] / 1000}


async def test_chat_logprobs_report_bytes_of_partial_characters(bundle, tokenizer):
    ids = tokenizer.encode("é!", False)
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, ids, logprobs=True, finish="stop"))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/chat/completions", CHAT | {"logprobs": True, "top_logprobs": 1})
        body = await response.json()
    finally:
        await client.close()
    assert fake.requests[0].sampling.logprobs == 1
    content = body["choices"][0]["logprobs"]["content"]
    assert b"".join(bytes(c["bytes"]) for c in content) == "é!".encode()
    assert content[0]["token"] == "\\xc3" and content[0]["logprob"] == -ids[0] / 1000
    assert [len(c["top_logprobs"]) for c in content] == [2] * len(ids)  # the worker's alternatives
    assert set(content[0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}


async def test_streamed_logprobs_accompany_their_text(bundle, tokenizer):
    ids = tokenizer.encode("one two", False)
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, ids, logprobs=True))
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": "Q", "logprobs": 0, "stream": True, "max_tokens": 9})
        chunks = [json.loads(p) for p in sse_payloads(await response.text())[:-1]]
    finally:
        await client.close()
    tokens = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert tokens == [tokenizer.decode([t]) for t in ids]
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["logprobs"]:
            assert "".join(choice["logprobs"]["tokens"]) == choice["text"]


async def test_client_disconnect_mid_stream_cancels_the_upstream_call(bundle, tokenizer):
    ids = tokenizer.encode("partial", False)
    fake = FakeScheduler(bundle, lambda r: [*outputs(r.request_id, ids, finish=""), HOLD])
    client = await start_gateway(fake)
    try:
        response = await post(client, "/v1/chat/completions", CHAT | {"stream": True, "n": 2})
        first_line = await response.content.readline()
        assert first_line.startswith(b"data: ")
        response.close()
        for request in fake.requests:
            await asyncio.wait_for(fake.closed_event(request.request_id).wait(), 10)
    finally:
        await client.close()
    assert len(fake.requests) == 2


async def test_request_deadline_cancels_upstream_and_returns_504(bundle):
    fake = FakeScheduler(bundle, lambda r: [HOLD])
    client = await start_gateway(fake, request_timeout_s=0.2)
    try:
        response = await post(client, "/v1/completions", {"model": MODEL, "prompt": "Q", "max_tokens": 5})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 504 and body["error"]["code"] == "timeout"
    assert fake.closed_event(fake.requests[0].request_id).is_set()


async def test_deadline_mid_stream_ends_with_an_error_event_then_done(bundle, tokenizer):
    ids = tokenizer.encode("slow", False)
    fake = FakeScheduler(bundle, lambda r: [*outputs(r.request_id, ids, finish=""), HOLD])
    client = await start_gateway(fake, request_timeout_s=0.3)
    try:
        response = await post(client, "/v1/completions",
                              {"model": MODEL, "prompt": "Q", "stream": True, "max_tokens": 5})
        payloads = sse_payloads(await response.text())
    finally:
        await client.close()
    assert response.status == 200
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "timeout"
    assert "".join(json.loads(p)["choices"][0]["text"] for p in payloads[:-2]) == "slow"


async def test_client_that_gives_up_before_any_output_cancels_the_upstream_call(bundle):
    fake = FakeScheduler(bundle, lambda r: [HOLD])  # e.g. still queued for a worker
    client = await start_gateway(fake)
    try:
        waiting = asyncio.create_task(post(client, "/v1/chat/completions", CHAT | {"stream": True}))
        await asyncio.wait_for(fake.generating.wait(), 10)
        waiting.cancel()
        await asyncio.wait_for(fake.closed_event(fake.requests[0].request_id).wait(), 10)
    finally:
        await client.close()
