"""One gateway's GenerateMany stream: its requests in, their outputs out in batches.

Why one stream per gateway rather than one call per request: a worker step produces one output
per running request, and as separate gRPC messages on separate calls those cost the scheduler and
the gateway CPU for every token of every request, taken from the engine on a machine they share.
Here whatever is ready when the stream's writer runs goes out as one OutputBatch, in practice one
message per worker step.

Invariants: each request runs as its own relay task (scheduler/request_relay.py); its items leave
in the order it delivered them; an abort, or the end of the stream (the gateway went away, or the
scheduler stopped), cancels the relays, which drops their requests everywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from scheduler.core import SchedulerCore
from scheduler.request_relay import STATUS_CODES, relay_request
from services import codec
from services.types import GenerateRequest, RequestFailure

log = logging.getLogger(__name__)

_END = object()  # in the outbox: the stream is over


class GatewayStream:
    def __init__(self, core: SchedulerCore):
        self._core = core
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._relays: dict[str, asyncio.Task] = {}

    @property
    def unfinished(self) -> int:
        """Requests still relaying plus items not yet sent: what a drain waits for."""
        return len(self._relays) + self._outbox.qsize()

    def end_if_idle(self) -> None:
        """Once the scheduler is closed, the stream ends as soon as no request is left on it."""
        if self._core.closed and not self._relays:
            self._outbox.put_nowait(_END)

    async def serve(self, messages: AsyncIterator) -> AsyncIterator:
        """The OutputBatch messages to send, until the stream is over. Use inside `aclosing`."""
        reader = asyncio.create_task(self._read(messages))
        try:
            while True:
                items = [await self._outbox.get()]
                while not self._outbox.empty():
                    items.append(self._outbox.get_nowait())
                ended = _END in items
                items = [item for item in items if item is not _END]
                if items:
                    yield codec.output_batch_to_pb(items)
                if ended:
                    return
        finally:
            reader.cancel()
            for relay in list(self._relays.values()):
                relay.cancel()

    async def _read(self, messages: AsyncIterator) -> None:
        try:
            async for message in messages:
                command = codec.decode_gateway_msg(message)
                if isinstance(command, GenerateRequest):
                    self._start(command)
                elif (relay := self._relays.get(command)) is not None:
                    relay.cancel()
        except Exception as exc:  # a broken connection: the stream ends below, like any other end
            log.info("gateway stream ended: %s: %s", type(exc).__name__, exc)
        finally:
            # The gateway closed its side or the connection broke: it will read nothing more.
            self._outbox.put_nowait(_END)

    def _start(self, request: GenerateRequest) -> None:
        if request.request_id in self._relays:
            self._outbox.put_nowait(RequestFailure(request.request_id, STATUS_CODES["invalid"],
                                                   f"request id {request.request_id!r} is already in flight"))
            return
        relay = asyncio.create_task(relay_request(self._core, request, self._outbox.put_nowait))
        self._relays[request.request_id] = relay
        relay.add_done_callback(lambda _: self._finished(request.request_id, relay))

    def _finished(self, request_id: str, relay: asyncio.Task) -> None:
        if self._relays.get(request_id) is relay:
            del self._relays[request_id]
        self.end_if_idle()
