"""gRPC servicer: converts messages and delegates to SchedulerCore. No scheduling logic here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import grpc

from scheduler import metrics
from scheduler.core import AdmissionError, SchedulerCore
from scheduler.registry import END_SESSION, WorkerHandle
from services import codec, tracing
from services.types import ClusterStatus, WorkerInfo, WorkerRegister, WorkerStats

log = logging.getLogger(__name__)

_STATUS = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


_tracer = tracing.tracer("ferrum.scheduler")


def _record_queue_span(pending, parent) -> None:
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


class SchedulerServicer(codec.SchedulerServicer):
    def __init__(self, core: SchedulerCore):
        self.core = core
        # Generate calls not yet returned. A request leaves the core when its worker finishes it,
        # but its last outputs may still be on their way to a slow gateway: the drain waits for both.
        self.open_generates = 0

    @contextlib.contextmanager
    def _open_generate(self) -> Iterator[None]:
        self.open_generates += 1
        try:
            yield
        finally:
            self.open_generates -= 1

    async def Generate(self, request, context):
        req = codec.request_from_pb(request)
        parent = tracing.extract(dict(context.invocation_metadata() or ()))
        with self._open_generate(), tracing.unattached_span(_tracer, "scheduler.generate", parent) as (span, traced):
            span.set_attribute("ferrum.request_id", req.request_id)
            span.set_attribute("ferrum.model", req.model)
            req.trace_context = tracing.inject(traced)  # the worker's spans become children of this one
            status = "ok"
            try:
                await self.core.wait_for_model(req.model)
                pending = self.core.submit(req, await self.core.affinity(req))
            except AdmissionError as exc:
                metrics.REQUESTS.labels(req.model if exc.kind != "not_found" else "", exc.kind).inc()
                await context.abort(_STATUS[exc.kind], str(exc))
            try:
                while True:
                    item = await pending.outputs.get()
                    if isinstance(item, AdmissionError):
                        status = item.kind
                        await context.abort(_STATUS[item.kind], str(item))
                    if item.finished:
                        # Set before the yield: a gateway that has its last output may close the
                        # stream at once, and grpc then never resumes this generator.
                        status = item.finish_reason
                    yield codec.output_to_pb(item)
                    if item.finished:
                        return
            except asyncio.CancelledError:
                status = "cancelled"
                raise
            finally:
                # Runs on normal completion too, where it finds nothing left to cancel.
                self.core.cancel(req.request_id)
                metrics.REQUESTS.labels(req.model, status).inc()
                _record_queue_span(pending, traced)

    async def Abort(self, request, context):
        found = self.core.is_pending(request.request_id)
        self.core.cancel(request.request_id)
        return codec.messages.AbortReply(found=found)

    async def ListModels(self, request, context):
        return codec.models_to_pb(self.core.registry.served_models())

    async def GetTokenizer(self, request, context):
        await self.core.wait_for_model(request.model)
        bundle = self.core.registry.tokenizer(request.model)
        if bundle is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist.")
        return codec.tokenizer_to_pb(bundle)

    async def ClusterStatus(self, request, context):
        workers = [WorkerInfo(w.worker_id, w.model, w.info.epoch, w.stats) for w in self.core.registry.all()]
        status = ClusterStatus(workers, len(self.core.queue), self.core.total_requests, self.core.draining)
        return codec.cluster_status_to_pb(status)

    async def WorkerSession(self, request_iterator, context):
        """First message registers the worker; then stats and outputs flow up while assignments and
        aborts flow down through the worker's outbox. The worker is gone when either side ends."""
        first = await anext(request_iterator, None)
        if first is None:
            return
        info = codec.decode_worker_msg(first)
        if not isinstance(info, WorkerRegister):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first session message must register")
        if self.core.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down")
        handle = WorkerHandle(info=info, outbox=asyncio.Queue())
        self.core.worker_joined(handle)
        reader = asyncio.create_task(self._read_worker(handle, request_iterator))
        try:
            while not reader.done():
                getter = asyncio.create_task(handle.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    if (message := getter.result()) is END_SESSION:
                        return
                    yield message
                else:
                    getter.cancel()
        finally:
            reader.cancel()
            if self.core.registry.get(info.worker_id) is handle:
                self.core.worker_left(info.worker_id)

    async def _read_worker(self, handle: WorkerHandle, request_iterator) -> None:
        try:
            async for message in request_iterator:
                item = codec.decode_worker_msg(message)
                if isinstance(item, WorkerStats):
                    handle.stats = item
                    self.core.worker_stats_changed()
                elif isinstance(item, list):
                    self.core.worker_outputs(handle.worker_id, item)
        except grpc.aio.AioRpcError as exc:
            log.info("session of worker %s ended: %s", handle.worker_id, exc.code())
