"""The scheduler's Generate stream and its trace span when grpc closes the stream from another task.

grpc.aio closes a streaming handler's generator from a task of its own when the client leaves
before the stream's end; the handler must not leave an OpenTelemetry context attached across its
`yield`, or every such request logs "Failed to detach context" as an error.
"""

from __future__ import annotations

import asyncio
import logging

from scheduler.core import SchedulerCore
from scheduler.servicer import SchedulerServicer
from services import codec
from services.types import GenerateRequest, RequestOutput, SamplingParams
from tests.unit.test_scheduler_core import handle, sent


class _Context:
    def invocation_metadata(self):
        return (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)


async def test_a_stream_closed_from_another_task_logs_no_error_and_releases_the_request(caplog):
    core = SchedulerCore(max_queue=10, worker_wait_s=1)
    worker = handle("w1")
    core.worker_joined(worker)
    servicer = SchedulerServicer(core)
    request = codec.request_to_pb(GenerateRequest("r1", "m", [1, 2, 3], SamplingParams(max_tokens=4)))
    stream = servicer.Generate(request, _Context())

    first = asyncio.ensure_future(anext(stream))
    while not core.is_pending("r1"):  # the stream's task submits the request
        await asyncio.sleep(0)
    core.dispatch()
    [(kind, assigned)] = sent(worker)
    assert kind == "assign" and assigned[0].request_id == "r1"
    assert assigned[0].trace_context["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    core.worker_outputs("w1", [RequestOutput("r1", [7])])
    assert codec.output_from_pb(await first).token_ids == [7]

    with caplog.at_level(logging.WARNING):
        await asyncio.create_task(stream.aclose())  # a task of its own, as grpc's
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert servicer.open_generates == 0
    assert not core.is_pending("r1"), "the request left the scheduler with its stream"
    assert sent(worker) == [("abort", "r1")], "the worker is told to stop"
