"""The gateway's end of one GenerateMany stream: many requests on one gRPC call.

Each open request has an inbox; the reader task sorts every incoming OutputBatch into the inboxes.
When the call ends for any reason, every open inbox gets a `StreamBroken` and the stream takes no
new request (the client opens a fresh one). Invariant: an inbox receives its request's outputs in
order, then at most one RequestFailure or StreamBroken, and nothing after its finished output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from services import codec
from services.types import GenerateRequest, RequestFailure, RequestOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamBroken:
    """The call ended before the request did: `code` and `details` as gRPC reported them."""

    code: grpc.StatusCode
    details: str


Inbox = asyncio.Queue  # of RequestOutput | RequestFailure | StreamBroken


class MultiplexedStream:
    """Open inside the event loop that will use it; `close` when done."""

    def __init__(self, stub):
        self._sends: asyncio.Queue = asyncio.Queue()
        self._inboxes: dict[str, Inbox] = {}
        self._call = stub.GenerateMany(self._messages())
        self.broken: StreamBroken | None = None
        self._reader = asyncio.create_task(self._read())

    def open(self, request: GenerateRequest) -> Inbox:
        """Send `request` on this stream; its outputs arrive in the returned inbox."""
        inbox: Inbox = asyncio.Queue()
        if self.broken is not None:
            inbox.put_nowait(self.broken)
            return inbox
        self._inboxes[request.request_id] = inbox
        self._sends.put_nowait(codec.generate_msg(request))
        return inbox

    def release(self, request_id: str, abort: bool) -> None:
        """The caller reads no more of this request; `abort` tells the scheduler to drop it."""
        if self._inboxes.pop(request_id, None) is not None and abort and self.broken is None:
            self._sends.put_nowait(codec.gateway_abort_msg(request_id))

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _messages(self) -> AsyncIterator:
        while True:
            yield await self._sends.get()

    async def _read(self) -> None:
        broken = StreamBroken(grpc.StatusCode.UNAVAILABLE, "the scheduler ended the stream")
        try:
            async for batch in self._call:
                for item in codec.output_batch_from_pb(batch):
                    self._route(item)
        except grpc.aio.AioRpcError as e:
            broken = StreamBroken(e.code(), e.details() or e.code().name)
        except asyncio.CancelledError:
            broken = StreamBroken(grpc.StatusCode.CANCELLED, "the gateway closed the stream")
            raise
        except Exception as e:  # a message this code cannot read: fail its requests, not hang them
            log.exception("scheduler stream failed")
            broken = StreamBroken(grpc.StatusCode.INTERNAL, f"the scheduler stream failed: {type(e).__name__}")
            self._call.cancel()  # the scheduler then drops this stream's requests
        finally:
            self.broken = broken
            log.info("scheduler stream ended: %s", broken.details)
            for inbox in self._inboxes.values():
                inbox.put_nowait(broken)
            self._inboxes.clear()

    def _route(self, item: RequestOutput | RequestFailure) -> None:
        inbox = self._inboxes.get(item.request_id)
        if inbox is None:  # released already: the caller stopped reading
            return
        inbox.put_nowait(item)
        if isinstance(item, RequestFailure) or item.finished:
            del self._inboxes[item.request_id]
