"""The gateway's only line to the scheduler: a grpc.aio channel behind five async methods.

Every request travels on one long-lived GenerateMany stream (gateway/multiplexed_stream.py),
opened on first use and again after it breaks.

Handlers depend on the `SchedulerApi` protocol, so tests can hand them an in-memory scheduler.
Failures surface as `SchedulerError`, carrying the gRPC status name (e.g. "NOT_FOUND"), never a
grpc exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from gateway.multiplexed_stream import MultiplexedStream, StreamBroken
from services import codec
from services.types import (ClusterStatus, GenerateRequest, ModelInfo, RequestFailure, RequestOutput,
                            TokenizerBundle)

# Tokenizer bundles of real models are several MiB; gRPC's default receive limit is 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
UNARY_TIMEOUT_S = 10.0
# A request that failed because the scheduler went away before any token is sent again while the
# channel reconnects, for at most this long since it was first sent.
RECONNECT_WINDOW_S = 10.0


class SchedulerError(Exception):
    """A failed scheduler call: `code` is the gRPC status name, `message` its details."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class SchedulerApi(Protocol):
    def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> bool: ...
    async def list_models(self) -> list[ModelInfo]: ...
    async def get_tokenizer(self, model: str) -> TokenizerBundle: ...
    async def cluster_status(self) -> ClusterStatus: ...


def _error_from_rpc(error: grpc.aio.AioRpcError) -> SchedulerError:
    retry_after = None
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after" and str(value).isdigit():
            retry_after = int(value)
    return SchedulerError(error.code().name, error.details() or error.code().name, retry_after)


class SchedulerClient:
    """Calls the scheduler at `address`. Create inside the event loop that will use it."""

    def __init__(self, address: str, *, reconnect_window_s: float = RECONNECT_WINDOW_S):
        self._channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        self._stub = codec.SchedulerStub(self._channel)
        self._reconnect_window_s = reconnect_window_s
        self._stream: MultiplexedStream | None = None

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
        await self._channel.close()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs. Closing or cancelling the iteration before the last one
        aborts the request on the scheduler."""
        started = time.monotonic()
        produced = False
        while True:
            stream = self._open_stream()
            inbox = stream.open(request)
            finished = False
            try:
                while True:
                    item = await inbox.get()
                    if isinstance(item, RequestFailure):
                        raise SchedulerError(item.code, item.message, item.retry_after_s)
                    if isinstance(item, StreamBroken):
                        if produced or not await self._reconnected(item.code, started):
                            raise SchedulerError(item.code.name, item.details)
                        break  # sent again, on a fresh stream
                    produced = True
                    finished = item.finished
                    yield item
                    if finished:
                        return
            finally:
                stream.release(request.request_id, abort=not finished)

    def _open_stream(self) -> MultiplexedStream:
        """The live GenerateMany stream; a fresh one when there is none yet or it broke."""
        # A broken stream's call has ended and its reader with it: nothing is left to close.
        if self._stream is None or self._stream.broken is not None:
            self._stream = MultiplexedStream(self._stub)
        return self._stream

    async def _reconnected(self, code: grpc.StatusCode, started: float) -> bool:
        """True when a request failed because the connection broke (not because the scheduler
        answered UNAVAILABLE itself) and the channel came back within the reconnect window."""
        if code != grpc.StatusCode.UNAVAILABLE:
            return False
        if self._channel.get_state() == grpc.ChannelConnectivity.READY:
            return False
        remaining = self._reconnect_window_s - (time.monotonic() - started)
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._channel.channel_ready(), remaining)
        except TimeoutError:
            return False
        return True

    async def abort(self, request_id: str) -> bool:
        reply = await self._unary(self._stub.Abort, codec.abort_request(request_id))
        return reply.found

    async def list_models(self) -> list[ModelInfo]:
        reply = await self._unary(self._stub.ListModels, codec.messages.ListModelsRequest())
        return codec.models_from_pb(reply)

    async def get_tokenizer(self, model: str) -> TokenizerBundle:
        reply = await self._unary(self._stub.GetTokenizer, codec.messages.GetTokenizerRequest(model=model))
        return codec.tokenizer_from_pb(reply)

    async def cluster_status(self) -> ClusterStatus:
        reply = await self._unary(self._stub.ClusterStatus, codec.messages.ClusterStatusRequest())
        return codec.cluster_status_from_pb(reply)

    @staticmethod
    async def _unary(method, message):
        try:
            return await method(message, timeout=UNARY_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise _error_from_rpc(e) from None
