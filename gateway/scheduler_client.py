"""The gateway's only line to the scheduler: a grpc.aio channel behind five async methods.

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

from services import codec
from services.types import ClusterStatus, GenerateRequest, ModelInfo, RequestOutput, TokenizerBundle

# Tokenizer bundles of real models are several MiB; gRPC's default receive limit is 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
UNARY_TIMEOUT_S = 10.0
# A Generate that failed because the scheduler went away before any token is retried while the
# channel reconnects, for at most this long since the call started.
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

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs. Closing or cancelling the iteration cancels the call,
        which the scheduler treats as an abort."""
        started = time.monotonic()
        message = codec.request_to_pb(request)
        metadata = tuple(request.trace_context.items())  # W3C trace context, read by the scheduler
        produced = False
        while True:
            call = self._stub.Generate(message, metadata=metadata)
            try:
                async for output in call:
                    produced = True
                    yield codec.output_from_pb(output)
                return
            except grpc.aio.AioRpcError as e:
                if produced or not await self._reconnected(e, started):
                    raise _error_from_rpc(e) from None
            finally:
                call.cancel()

    async def _reconnected(self, error: grpc.aio.AioRpcError, started: float) -> bool:
        """True when a Generate failed because the connection broke (not because the scheduler
        answered UNAVAILABLE itself) and the channel came back within the reconnect window."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
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
