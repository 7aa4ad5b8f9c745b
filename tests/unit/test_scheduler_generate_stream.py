"""The scheduler's GenerateMany stream, served by the real servicer and core with a fake worker.

What a gateway relies on: the outputs of one worker step for all its requests arrive as one batch,
refusals arrive as failures without disturbing other requests, an abort or the end of the stream
drops the request on its worker, and requests are counted by how they ended.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from scheduler.core import SchedulerCore
from scheduler.servicer import SchedulerServicer
from services import codec
from services.types import GenerateRequest, RequestFailure, RequestOutput, SamplingParams
from tests.unit.test_scheduler_core import handle, sent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Gateway:
    """The gateway's side of one stream: messages to send, batches received."""

    def __init__(self, servicer: SchedulerServicer):
        self.sends: asyncio.Queue = asyncio.Queue()
        self.stream = servicer.GenerateMany(self._messages(), context=None)

    async def _messages(self):
        while (message := await self.sends.get()) is not None:
            yield message

    def generate(self, request_id: str, model: str = "m") -> None:
        request = GenerateRequest(request_id, model, [1, 2, 3], SamplingParams(max_tokens=4),
                                  trace_context={"traceparent": TRACEPARENT})
        self.sends.put_nowait(codec.generate_msg(request))

    def abort(self, request_id: str) -> None:
        self.sends.put_nowait(codec.gateway_abort_msg(request_id))

    async def batch(self) -> list[RequestOutput | RequestFailure]:
        return codec.output_batch_from_pb(await asyncio.wait_for(anext(self.stream), 10))


async def _served(*request_ids: str):
    """A servicer with one worker (room for 2), a gateway stream, and these requests assigned."""
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    worker = handle("w1")
    core.worker_joined(worker)
    servicer = SchedulerServicer(core)
    gateway = _Gateway(servicer)
    for request_id in request_ids:
        gateway.generate(request_id)
    reading = asyncio.ensure_future(gateway.batch())
    while not all(core.is_pending(r) for r in request_ids):  # the stream's tasks submit them
        await asyncio.sleep(0)
    core.dispatch()
    assigned = [request for kind, requests in sent(worker) if kind == "assign" for request in requests]
    assert sorted(r.request_id for r in assigned) == sorted(request_ids)
    return core, worker, servicer, gateway, reading, assigned


def _finished(status: str, model: str = "m") -> float:
    labels = {"model": model, "status": status}
    return REGISTRY.get_sample_value("ferrum_infer_scheduler_requests_total", labels) or 0.0


async def test_one_worker_step_reaches_the_gateway_as_one_batch_with_trace_context():
    core, worker, servicer, gateway, reading, assigned = await _served("a", "b")
    assert all(r.trace_context["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-") for r in assigned)
    core.worker_outputs("w1", [RequestOutput("a", [7]), RequestOutput("b", [8])])
    assert await reading == [RequestOutput("a", [7]), RequestOutput("b", [8])]
    core.worker_outputs("w1", [RequestOutput("a", [9], finish_reason="stop"), RequestOutput("b", [10])])
    assert await gateway.batch() == [RequestOutput("a", [9], finish_reason="stop"), RequestOutput("b", [10])]
    assert servicer.open_requests == 1, "b is still running"
    await gateway.stream.aclose()


async def test_an_abort_drops_the_request_on_its_worker_and_others_go_on():
    core, worker, servicer, gateway, reading, _ = await _served("a", "b")
    cancelled_before = _finished("cancelled")
    gateway.abort("a")
    while core.is_pending("a"):
        await asyncio.sleep(0)
    assert sent(worker) == [("abort", "a")]
    assert _finished("cancelled") - cancelled_before == 1
    core.worker_outputs("w1", [RequestOutput("b", [1, 2, 3, 4], finish_reason="length")])
    assert await reading == [RequestOutput("b", [1, 2, 3, 4], finish_reason="length")]
    await gateway.stream.aclose()


async def test_refusals_arrive_as_failures_and_a_finished_request_counts_by_its_reason():
    core, worker, servicer, gateway, reading, _ = await _served("a")
    length_before, unknown_before = _finished("length"), _finished("not_found", model="")
    gateway.generate("x", model="nope")
    gateway.generate("a")  # already in flight on this stream
    refusals = await reading  # the duplicate at once; the unknown model after the wait for workers
    refusals += await gateway.batch()
    assert [(f.request_id, f.code) for f in refusals] == [("a", "INVALID_ARGUMENT"), ("x", "NOT_FOUND")]
    assert "already in flight" in refusals[0].message and "does not exist" in refusals[1].message
    core.worker_outputs("w1", [RequestOutput("a", [1, 2, 3, 4], finish_reason="length")])
    assert await gateway.batch() == [RequestOutput("a", [1, 2, 3, 4], finish_reason="length")]
    while servicer.open_requests:
        await asyncio.sleep(0)
    assert _finished("length") - length_before == 1
    assert _finished("not_found", model="") - unknown_before == 1
    assert sent(worker) == [], "a finished request needs no abort"
    await gateway.stream.aclose()


async def test_a_gateway_gone_drops_all_its_requests():
    core, worker, servicer, gateway, reading, _ = await _served("a", "b")
    reading.cancel()  # as grpc cancels the handler when its client goes away
    with pytest.raises(asyncio.CancelledError):
        await reading
    while core.in_flight:
        await asyncio.sleep(0)
    assert sorted(sent(worker)) == [("abort", "a"), ("abort", "b")]
    assert servicer.open_requests == 0


async def test_a_closing_scheduler_fails_what_is_left_and_ends_the_stream():
    core, worker, servicer, gateway, reading, _ = await _served("a")
    core.close()
    servicer.end_idle_streams()  # what the drain does; "a" ends the stream itself once failed
    [failure] = await reading
    assert (failure.request_id, failure.code) == ("a", "UNAVAILABLE")
    assert await anext(gateway.stream, None) is None, "the stream ends once nothing is left on it"
