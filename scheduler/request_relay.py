"""One request's life on the scheduler: admission, then its outputs relayed until the last one.

The relay runs as a task of its own (one per request on a gateway stream); cancelling it is how a
request is aborted, and wherever the request is then (queued, on a worker) it is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from opentelemetry.trace import Status, StatusCode

from scheduler import metrics
from scheduler.core import AdmissionError, Pending, SchedulerCore
from services import tracing
from services.types import GenerateRequest, RequestFailure, RequestOutput

# AdmissionError.kind -> the gRPC status name a gateway maps to an HTTP status.
STATUS_CODES = {
    "not_found": "NOT_FOUND",
    "invalid": "INVALID_ARGUMENT",
    "queue_full": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
}

_tracer = tracing.tracer("ferrum.scheduler")

Deliver = Callable[[RequestOutput | RequestFailure], None]


async def relay_request(core: SchedulerCore, request: GenerateRequest, deliver: Deliver) -> None:
    """Submit `request` and `deliver` each of its outputs, up to and with the finished one; a
    refusal (at admission, or the scheduler stopping later) is delivered as a RequestFailure.
    Invariant: after this returns or is cancelled, the core holds nothing of the request."""
    parent = tracing.extract(request.trace_context)
    with tracing.unattached_span(_tracer, "scheduler.generate", parent) as (span, traced):
        span.set_attribute("ferrum.request_id", request.request_id)
        span.set_attribute("ferrum.model", request.model)
        request.trace_context = tracing.inject(traced)  # the worker's spans become children of this one
        pending: Pending | None = None
        status = "ok"
        try:
            await core.wait_for_model(request.model)
            pending = core.submit(request, await core.affinity(request))
            while True:
                item = await pending.outputs.get()
                if isinstance(item, AdmissionError):
                    raise item
                deliver(item)
                if item.finished:
                    status = item.finish_reason
                    return
        except AdmissionError as exc:
            status = exc.kind
            span.set_status(Status(StatusCode.ERROR, f"{exc.kind}: {exc}"))
            deliver(RequestFailure(request.request_id, STATUS_CODES[exc.kind], str(exc)))
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            # Never for a request refused at submit: its id may belong to another one in flight.
            if pending is not None:
                core.cancel(request.request_id)
                _record_queue_span(pending, traced)
            unknown_model = pending is None and status == "not_found"
            metrics.REQUESTS.labels("" if unknown_model else request.model, status).inc()


def _record_queue_span(pending: Pending, parent) -> None:
    """The time a request waited in the global queue, and where routing sent it, as a child span."""
    if not pending.dispatched_ns:
        return
    span = _tracer.start_span("scheduler.queue", context=parent, start_time=pending.submitted_ns)
    span.set_attribute("ferrum.worker_id", pending.worker_id or "")
    span.set_attribute("ferrum.route_reason", pending.route_reason)
    if pending.affinity is not None:
        span.set_attribute("ferrum.prefix_blocks", len(pending.affinity.hashes))
        span.set_attribute("ferrum.matched_blocks", pending.affinity.matched.get(pending.worker_id, 0))
    span.end(end_time=pending.dispatched_ns)
