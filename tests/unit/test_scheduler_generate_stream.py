"""The scheduler's Generate stream when grpc closes it from another task.

grpc.aio closes a streaming handler's generator from a task of its own when the client stops
reading, which a gateway does as soon as it has a request's last output. The handler must not
keep an OpenTelemetry context attached across its `yield` (else "Failed to detach context" is
logged as an error), and must count the request by its real finish reason even though the
generator is never resumed after that last output.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import REGISTRY

from scheduler.core import SchedulerCore
from scheduler.servicer import SchedulerServicer
from services import codec
from services.types import GenerateRequest, RequestOutput, SamplingParams
from tests.unit.test_scheduler_core import handle, sent


class _Context:
    def invocation_metadata(self):
        return (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)


async def _open_stream(request_id: str):
    """A servicer with one worker and a Generate stream whose request has been assigned to it."""
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    worker = handle("w1")
    core.worker_joined(worker)
    servicer = SchedulerServicer(core)
    request = codec.request_to_pb(GenerateRequest(request_id, "m", [1, 2, 3], SamplingParams(max_tokens=4)))
    stream = servicer.Generate(request, _Context())
    first = asyncio.ensure_future(anext(stream))
    while not core.is_pending(request_id):  # the stream's task submits the request
        await asyncio.sleep(0)
    core.dispatch()
    [(kind, assigned)] = sent(worker)
    assert kind == "assign" and assigned[0].request_id == request_id
    return core, worker, servicer, stream, first, assigned[0]


async def test_a_stream_closed_from_another_task_logs_no_error_and_releases_the_request(caplog):
    core, worker, servicer, stream, first, assigned = await _open_stream("r1")
    assert assigned.trace_context["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    core.worker_outputs("w1", [RequestOutput("r1", [7])])
    assert codec.output_from_pb(await first).token_ids == [7]

    with caplog.at_level(logging.WARNING):
        await asyncio.create_task(stream.aclose())  # a task of its own, as grpc's
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert servicer.open_generates == 0
    assert not core.is_pending("r1"), "the request left the scheduler with its stream"
    assert sent(worker) == [("abort", "r1")], "the worker is told to stop"


async def test_a_stream_closed_right_after_its_last_output_is_counted_by_its_finish_reason():
    def finished(status: str) -> float:
        labels = {"model": "m", "status": status}
        return REGISTRY.get_sample_value("ferrum_infer_scheduler_requests_total", labels) or 0.0

    before_length, before_ok = finished("length"), finished("ok")
    core, worker, servicer, stream, first, _ = await _open_stream("r2")
    core.worker_outputs("w1", [RequestOutput("r2", [7, 8, 9, 10], finish_reason="length")])
    assert codec.output_from_pb(await first).finish_reason == "length"
    await asyncio.create_task(stream.aclose())  # the gateway has its last output and stops reading
    assert finished("length") - before_length == 1
    assert finished("ok") == before_ok
    assert servicer.open_generates == 0
