"""What clients see when things go wrong: status codes, OpenAI error bodies, auth and limits."""

from __future__ import annotations

import json

import pytest

from gateway.scheduler_client import SchedulerError
from services.types import RequestOutput
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

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def assert_openai_error(body: dict, code: str | None = None) -> dict:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
async def gateway(bundle):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    yield client, fake
    await client.close()


@pytest.mark.parametrize("raw", [
    b"{oops", b"[]", b'"a string"', b'{"model": "tiny", "messages": [{"role": "user", "content": "\xc3\x28"}]}',
    json.dumps(CHAT | {"temperature": float("nan")}).encode(), json.dumps(CHAT | {"n": 10**6}).encode(),
    json.dumps(CHAT | {"max_tokens": 10**30}).encode(), json.dumps(CHAT | {"stop": ["x"] * 3000}).encode(),
    json.dumps(CHAT | {"messages": []}).encode(), json.dumps(CHAT | {"temperature": -1}).encode(),
])
async def test_hostile_bodies_get_400_and_never_reach_the_scheduler(gateway, raw):
    client, fake = gateway
    response = await client.post("/v1/chat/completions", data=raw)
    assert response.status == 400
    assert assert_openai_error(await response.json())["type"] == "invalid_request_error"
    assert fake.requests == []


async def test_token_ids_outside_the_vocabulary_get_400(gateway):
    client, fake = gateway
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 2**31 - 1]})
    assert response.status == 400
    assert "vocabulary" in assert_openai_error(await response.json())["message"]
    assert fake.requests == []


async def test_oversized_body_gets_413(gateway):
    client, fake = gateway
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 100_000})
    assert response.status == 413
    assert_openai_error(await response.json(), "request_too_large")


async def test_unknown_model_gets_404_model_not_found(gateway):
    client, _ = gateway
    response = await client.post("/v1/chat/completions", json=CHAT | {"model": "no-such-model"})
    assert response.status == 404
    error = assert_openai_error(await response.json(), "model_not_found")
    assert "no-such-model" in error["message"]


async def test_unknown_route_and_wrong_method_get_openai_bodies(gateway):
    client, _ = gateway
    missing = await client.get("/v1/nothing-here")
    assert missing.status == 404
    assert_openai_error(await missing.json())
    embeddings = await client.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    error = (await embeddings.json())["error"]
    assert embeddings.status == 404 and error["code"] == "unknown_endpoint"
    assert error["message"].startswith("Unknown endpoint POST /v1/embeddings; this server serves POST "
                                       "/v1/chat/completions")
    wrong = await client.get("/v1/chat/completions")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]
    assert_openai_error(await wrong.json())


@pytest.mark.parametrize("code, status", [
    ("NOT_FOUND", 404), ("UNAVAILABLE", 503), ("RESOURCE_EXHAUSTED", 429), ("INVALID_ARGUMENT", 400),
    ("DEADLINE_EXCEEDED", 504), ("INTERNAL", 502),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_scheduler_refusals_map_to_http_statuses(bundle, code, status, stream):
    fake = FakeScheduler(bundle, lambda r: [SchedulerError(code, "the scheduler's own words", retry_after_s=3)])
    client = await start_gateway(fake)
    try:
        response = await client.post("/v1/chat/completions", json=CHAT | {"stream": stream})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == status
    error = assert_openai_error(body)
    if status in (400, 503):
        assert error["message"] == "the scheduler's own words"
    if status in (429, 503):  # both are worth retrying, after the scheduler's hint
        assert response.headers["Retry-After"] == "3"


async def test_worker_error_mid_stream_becomes_an_error_event(bundle, tokenizer):
    ids = tokenizer.encode("partial", False)
    fake = FakeScheduler(bundle, lambda r: [*outputs(r.request_id, ids, finish=""),
                                            RequestOutput(r.request_id, finish_reason="error", error="CUDA fell over")])
    client = await start_gateway(fake)
    try:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
        payloads = sse_payloads(await response.text())
    finally:
        await client.close()
    assert response.status == 200 and payloads[-1] == "[DONE]"
    error = assert_openai_error(json.loads(payloads[-2]))
    assert error["message"] == "CUDA fell over" and error["type"] == "server_error"


async def test_worker_error_without_streaming_is_a_500_with_its_message(bundle):
    fake = FakeScheduler(bundle, lambda r: [RequestOutput(r.request_id, finish_reason="error", error="boom")])
    client = await start_gateway(fake)
    try:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 500 and assert_openai_error(body)["message"] == "boom"


async def test_one_failing_choice_cancels_its_siblings(bundle):
    def script(r):
        return [SchedulerError("UNAVAILABLE", "worker lost")] if r.request_id.endswith("-1") else [HOLD]
    fake = FakeScheduler(bundle, script)
    client = await start_gateway(fake)
    try:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "n": 2})
    finally:
        await client.close()
    assert response.status == 503
    assert all(fake.closed_event(r.request_id).is_set() for r in fake.requests)


async def test_gateway_stream_limit_refuses_with_429(bundle):
    client = await start_gateway(FakeScheduler(bundle), max_concurrent_streams=2)
    try:
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "n": 3})
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 429 and response.headers["Retry-After"] == "1"
    assert_openai_error(body, "rate_limit_exceeded")


@pytest.fixture
async def keyed_gateway(bundle):
    client = await start_gateway(FakeScheduler(bundle), api_key="sk-main", api_keys="sk-old, sk-new")
    yield client
    await client.close()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "sk-main", "Basic sk-main", "Bearer ", "Bearer sk-mainx"])
async def test_missing_or_wrong_key_gets_401(keyed_gateway, header):
    headers = {"Authorization": header} if header is not None else {}
    response = await keyed_gateway.get("/v1/models", headers=headers)
    assert response.status == 401
    assert assert_openai_error(await response.json(), "invalid_api_key")["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", ["sk-main", "sk-old", "sk-new"])
async def test_every_configured_key_is_accepted(keyed_gateway, key):
    response = await keyed_gateway.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200


@pytest.mark.parametrize("path", ["/health", "/ping", "/metrics", "/openapi.json"])
async def test_operational_endpoints_stay_open_with_auth_on(keyed_gateway, path):
    response = await keyed_gateway.get(path)
    assert response.status == 200


async def test_auth_is_checked_before_the_body_is_read(keyed_gateway):
    response = await keyed_gateway.post("/v1/completions", data=b"x" * 200_000)
    assert response.status == 401
