"""gRPC servicer: converts messages and delegates to SchedulerCore. No scheduling logic here."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing

import grpc

from scheduler.core import SchedulerCore
from scheduler.gateway_stream import GatewayStream
from scheduler.registry import END_SESSION, WorkerHandle
from services import codec
from services.types import ClusterStatus, WorkerInfo, WorkerRegister, WorkerStats

log = logging.getLogger(__name__)


class SchedulerServicer(codec.SchedulerServicer):
    def __init__(self, core: SchedulerCore):
        self.core = core
        self._streams: set[GatewayStream] = set()

    @property
    def open_requests(self) -> int:
        """Requests on gateway streams not yet done: relaying, or their last outputs not yet sent.
        A request leaves the core when its worker finishes it, but those outputs may still be on
        their way to a slow gateway: the drain waits for both."""
        return sum(stream.unfinished for stream in self._streams)

    def end_idle_streams(self) -> None:
        """After the core closed: end the gateway streams with nothing left on them."""
        for stream in self._streams:
            stream.end_if_idle()

    async def GenerateMany(self, request_iterator, context):
        stream = GatewayStream(self.core)
        self._streams.add(stream)
        try:
            async with aclosing(stream.serve(request_iterator)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            self._streams.discard(stream)

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
