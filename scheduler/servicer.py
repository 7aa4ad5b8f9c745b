"""gRPC servicer: converts messages and delegates to SchedulerCore. No scheduling logic here."""

from __future__ import annotations

import asyncio
import logging

import grpc

from scheduler.core import AdmissionError, SchedulerCore
from scheduler.registry import WorkerHandle
from services import codec
from services.types import ClusterStatus, WorkerInfo, WorkerRegister, WorkerStats

log = logging.getLogger(__name__)

_STATUS = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "queue_full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


class SchedulerServicer(codec.SchedulerServicer):
    def __init__(self, core: SchedulerCore):
        self.core = core

    async def Generate(self, request, context):
        req = codec.request_from_pb(request)
        try:
            pending = self.core.submit(req, await self.core.affinity(req))
        except AdmissionError as exc:
            await context.abort(_STATUS[exc.kind], str(exc))
        try:
            while True:
                item = await pending.outputs.get()
                if isinstance(item, AdmissionError):
                    await context.abort(_STATUS[item.kind], str(item))
                yield codec.output_to_pb(item)
                if item.finished:
                    return
        finally:
            # Runs on normal completion too, where it finds nothing left to cancel.
            self.core.cancel(req.request_id)

    async def Abort(self, request, context):
        found = self.core.is_pending(request.request_id)
        self.core.cancel(request.request_id)
        return codec.messages.AbortReply(found=found)

    async def ListModels(self, request, context):
        return codec.models_to_pb(self.core.registry.served_models())

    async def GetTokenizer(self, request, context):
        bundle = self.core.registry.tokenizer(request.model)
        if bundle is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"The model `{request.model}` does not exist.")
        return codec.tokenizer_to_pb(bundle)

    async def ClusterStatus(self, request, context):
        workers = [WorkerInfo(w.worker_id, w.model, w.info.epoch, w.stats) for w in self.core.registry.all()]
        status = ClusterStatus(workers, len(self.core.queue), self.core.total_requests)
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
        handle = WorkerHandle(info=info, outbox=asyncio.Queue())
        self.core.worker_joined(handle)
        reader = asyncio.create_task(self._read_worker(handle, request_iterator))
        try:
            while not reader.done():
                getter = asyncio.create_task(handle.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
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
