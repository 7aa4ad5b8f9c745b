"""The load generator against a scripted OpenAI-style SSE server: what it measures and how it paces."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.bench.endpoint import Endpoint
from tests.bench.loadgen import Schedule, run_load
from tests.bench.workloads import BenchRequest, Session

CHUNK_GAP_S = 0.02


class ScriptedServer:
    """Streams one chunk per requested token, CHUNK_GAP_S apart, then usage; tracks requests in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if body["max_tokens"] == 0:
            return web.json_response({"error": {"message": "max_tokens must be positive"}}, status=400)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(body["max_tokens"]):
                await asyncio.sleep(CHUNK_GAP_S)
                await response.write(b'data: {"choices": [{"index": 0, "text": " x"}]}\n\n')
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"],
                     "prompt_tokens_details": {"cached_tokens": 2}}
            await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        finally:
            self.in_flight -= 1
        return response


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_post("/v1/completions", scripted.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield scripted, Endpoint(f"http://127.0.0.1:{port}/v1", "m", "ferrum", tokenizer=None)
    await runner.cleanup()


def _sessions(count: int, tokens: int = 3) -> list[Session]:
    return [Session((BenchRequest((1, 2, 3, 4), tokens),)) for _ in range(count)]


async def test_a_stream_is_measured_from_its_chunks_and_usage(server):
    scripted, endpoint = server
    [record] = await run_load(endpoint, _sessions(1, tokens=4), Schedule(concurrency=1), "t")
    assert record.ok and record.output_tokens == 4 and record.prompt_tokens == 4 and record.cached_tokens == 2
    assert len(record.token_times) == 4
    assert record.ttft >= CHUNK_GAP_S and all(gap >= CHUNK_GAP_S * 0.9 for gap in record.inter_token_gaps)
    assert record.end >= record.token_times[-1]
    body = scripted.bodies[0]
    assert body["prompt"] == [1, 2, 3, 4] and body["ignore_eos"] and body["min_tokens"] == 4
    assert body["stream"] and body["stream_options"] == {"include_usage": True}


async def test_server_errors_are_recorded_not_raised(server):
    _, endpoint = server
    [record] = await run_load(endpoint, [Session((BenchRequest((1,), 0),))], Schedule(concurrency=1), "t")
    assert record.error.startswith("HTTP 400") and "max_tokens must be positive" in record.error


async def test_closed_loop_keeps_exactly_the_concurrency_in_flight(server):
    scripted, endpoint = server
    records = await run_load(endpoint, _sessions(12), Schedule(concurrency=4), "t")
    assert len(records) == 12 and all(r.ok for r in records)
    assert scripted.max_in_flight == 4


async def test_turns_of_a_session_go_one_after_another(server):
    scripted, endpoint = server
    conversation = Session(tuple(BenchRequest((1,) * n, 2) for n in (1, 2, 3)))
    records = await run_load(endpoint, [conversation], Schedule(concurrency=8), "t")
    assert [len(b["prompt"]) for b in scripted.bodies] == [1, 2, 3]
    assert all(later.start >= earlier.end for earlier, later in zip(records, records[1:]))
    assert scripted.max_in_flight == 1


async def test_sending_stops_after_the_time_limit(server):
    _, endpoint = server
    records = await run_load(endpoint, _sessions(100, tokens=5), Schedule(concurrency=2, stop_after_s=0.25), "t")
    assert 2 <= len(records) < 100 and all(r.ok for r in records)


async def test_requests_still_running_at_the_hard_limit_are_cut(server):
    _, endpoint = server
    schedule = Schedule(concurrency=2, stop_after_s=0.05, hard_stop_after_s=0.2)
    records = await run_load(endpoint, _sessions(4, tokens=1000), schedule, "t")
    assert len(records) == 2 and all(r.cut and not r.ok and not r.error for r in records)
    assert all(r.end - r.start < 1.0 for r in records)


async def test_open_loop_sends_everything_with_at_most_the_cap_in_flight(server):
    scripted, endpoint = server
    schedule = Schedule(concurrency=3, rate=200.0, seed=1)
    records = await run_load(endpoint, _sessions(20), schedule, "t")
    assert len(records) == 20 and scripted.max_in_flight == 3
