"""SchedulerClient against a real grpc.aio server that plays the scheduler's part of the contract."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import grpc
import pytest

from gateway.scheduler_client import SchedulerClient, SchedulerError
from services import codec
from services.types import (GenerateRequest, ModelInfo, RequestFailure, RequestOutput, SamplingParams,
                            TokenizerBundle)

BUNDLE = TokenizerBundle("m", {"tokenizer.json": b"{}"}, 512, [0], "rev1")


class ScriptedScheduler(codec.SchedulerServicer):
    """Each request on the GenerateMany stream gets three single-token outputs, or fails as its
    model name says; "endless" gets its outputs unfinished and then waits for its abort."""

    def __init__(self, hang_before_output: bool = False):
        self.hang_before_output = hang_before_output
        self.called = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.trace_context: dict[str, str] = {}
        self.calls = 0
        self.streams = 0

    async def GenerateMany(self, request_iterator, context):
        self.streams += 1
        outbox: asyncio.Queue = asyncio.Queue()
        scripts: dict[str, asyncio.Task] = {}

        async def read() -> None:
            async for message in request_iterator:
                command = codec.decode_gateway_msg(message)
                if isinstance(command, str):
                    scripts[command].cancel()
                else:
                    scripts[command.request_id] = asyncio.create_task(self._script(command, outbox))

        reader = asyncio.create_task(read())
        try:
            while True:
                yield codec.output_batch_to_pb([await outbox.get()])
        finally:
            reader.cancel()

    async def _script(self, request: GenerateRequest, outbox: asyncio.Queue) -> None:
        self.calls += 1
        self.called.set()
        self.trace_context = request.trace_context
        if request.model == "missing":
            outbox.put_nowait(RequestFailure(request.request_id, "NOT_FOUND", "The model `missing` does not exist."))
            return
        if request.model == "full":
            outbox.put_nowait(RequestFailure(request.request_id, "RESOURCE_EXHAUSTED", "queue full", 5))
            return
        if self.hang_before_output:
            await asyncio.Event().wait()
        try:
            for i in range(3):
                last = i == 2 and request.model != "endless"
                outbox.put_nowait(RequestOutput(request.request_id, [i], finish_reason="length" if last else ""))
            if request.model == "endless":
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ListModels(self, request, context):
        return codec.models_to_pb([ModelInfo("m", 512, 2, 1700000000)])

    async def GetTokenizer(self, request, context):
        if request.model != "m":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        return codec.tokenizer_to_pb(BUNDLE)


@pytest.fixture
async def scheduler():
    servicer = ScriptedScheduler()
    server = grpc.aio.server()
    codec.add_scheduler_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = SchedulerClient(f"127.0.0.1:{port}")
    yield servicer, client
    await client.close()
    await server.stop(None)


def request(model: str) -> GenerateRequest:
    return GenerateRequest("req-1", model, [1, 2, 3], SamplingParams(max_tokens=3),
                           trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})


async def test_generate_streams_outputs_and_sends_trace_context(scheduler):
    servicer, client = scheduler
    received = [o async for o in client.generate(request("m"))]
    assert [o.token_ids for o in received] == [[0], [1], [2]]
    assert received[-1].finish_reason == "length"
    assert servicer.trace_context["traceparent"].startswith("00-0af7651916cd43dd")


async def test_closing_the_iteration_early_aborts_the_request_on_the_scheduler(scheduler):
    servicer, client = scheduler
    async with aclosing(client.generate(request("endless"))) as outputs:
        async for output in outputs:
            assert not output.finish_reason
            break
    await asyncio.wait_for(servicer.cancelled.wait(), 10)


async def test_concurrent_requests_share_one_stream_and_each_gets_only_its_outputs(scheduler):
    servicer, client = scheduler

    async def run(request_id: str) -> list[RequestOutput]:
        one = GenerateRequest(request_id, "m", [1], SamplingParams(max_tokens=3))
        return [o async for o in client.generate(one)]

    results = await asyncio.gather(*(run(f"r{i}") for i in range(8)))
    for i, outputs in enumerate(results):
        assert [(o.request_id, o.token_ids) for o in outputs] == [(f"r{i}", [0]), (f"r{i}", [1]), (f"r{i}", [2])]
    assert servicer.calls == 8 and servicer.streams == 1


@pytest.mark.parametrize("model, code", [("missing", "NOT_FOUND"), ("full", "RESOURCE_EXHAUSTED")])
async def test_refusals_surface_as_scheduler_errors(scheduler, model, code):
    servicer, client = scheduler
    with pytest.raises(SchedulerError) as caught:
        async for _ in client.generate(request(model)):
            pass
    assert caught.value.code == code
    if code == "RESOURCE_EXHAUSTED":
        assert caught.value.retry_after_s == 5
    assert servicer.calls == 1  # answered by the scheduler itself: never retried


async def test_unary_calls_convert_to_internal_types(scheduler):
    _, client = scheduler
    assert await client.list_models() == [ModelInfo("m", 512, 2, 1700000000)]
    assert await client.get_tokenizer("m") == BUNDLE
    with pytest.raises(SchedulerError) as caught:
        await client.get_tokenizer("other")
    assert caught.value.code == "NOT_FOUND"


async def test_unreachable_scheduler_is_unavailable():
    client = SchedulerClient("127.0.0.1:1", reconnect_window_s=0.5)
    try:
        with pytest.raises(SchedulerError) as caught:
            async for _ in client.generate(request("m")):
                pass
    finally:
        await client.close()
    assert caught.value.code == "UNAVAILABLE"


async def _serve(servicer: ScriptedScheduler, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    codec.add_scheduler_servicer(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def test_generate_without_output_is_retried_when_the_scheduler_restarts():
    first, second = ScriptedScheduler(hang_before_output=True), ScriptedScheduler()
    server, port = await _serve(first)
    client = SchedulerClient(f"127.0.0.1:{port}", reconnect_window_s=20)
    restarted = None
    try:
        waiting = asyncio.create_task(anext(client.generate(request("m"))))
        await asyncio.wait_for(first.called.wait(), 10)
        await server.stop(None)
        restarted, _ = await _serve(second, port)
        output = await asyncio.wait_for(waiting, 20)
    finally:
        await client.close()
        if restarted is not None:
            await restarted.stop(None)
    assert output.token_ids == [0]
    assert second.calls == 1


async def test_a_stream_lost_mid_request_fails_it_and_the_next_request_opens_a_new_stream():
    first, second = ScriptedScheduler(), ScriptedScheduler()
    server, port = await _serve(first)
    client = SchedulerClient(f"127.0.0.1:{port}", reconnect_window_s=20)
    restarted = None
    try:
        async with aclosing(client.generate(request("endless"))) as outputs:
            assert (await anext(outputs)).token_ids == [0]
            await server.stop(None)
            with pytest.raises(SchedulerError) as caught:
                async for _ in outputs:
                    pass
        restarted, _ = await _serve(second, port)
        received = [o.token_ids async for o in client.generate(request("m"))]
    finally:
        await client.close()
        if restarted is not None:
            await restarted.stop(None)
    assert caught.value.code == "UNAVAILABLE", "tokens were already streamed: never sent again"
    assert received == [[0], [1], [2]]
    assert (first.streams, second.streams) == (1, 1)
