"""The worker's long-lived session with the scheduler: register, then relay both ways.

Down: assignments and aborts go to the EngineLoop. Up: step outputs and stats. When the session
drops (scheduler restart, network), every running request is aborted locally (the scheduler has
re-queued or failed them already) and the worker re-registers with backoff.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services import codec
from services.types import RequestOutput, WorkerRegister, WorkerStats
from worker.engine_loop import EngineLoop
from worker.request_observer import RequestObserver

log = logging.getLogger(__name__)

_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0
_MAX_MESSAGE = 64 * 1024 * 1024


class WorkerSession:
    def __init__(self, scheduler_addr: str, register: WorkerRegister):
        self.scheduler_addr = scheduler_addr
        self.register = register
        self.registered = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue = asyncio.Queue()
        self.engine_loop: EngineLoop | None = None
        self.observer = RequestObserver()

    # Called from the engine thread.
    def post_outputs(self, outputs: list[RequestOutput]) -> None:
        self._loop.call_soon_threadsafe(self._send_outputs, outputs)

    def post_stats(self, stats: WorkerStats) -> None:
        self._loop.call_soon_threadsafe(self._send_stats, stats)

    def _send_outputs(self, outputs: list[RequestOutput]) -> None:
        self.observer.outputs(outputs)
        self._outbox.put_nowait(codec.outputs_msg(outputs))

    def _send_stats(self, stats: WorkerStats) -> None:
        self.observer.stats(stats)
        self._outbox.put_nowait(codec.stats_msg(stats))

    async def _upstream(self):
        yield codec.register_msg(self.register)
        while True:
            yield await self._outbox.get()

    async def run_forever(self) -> None:
        backoff = _BACKOFF_START_S
        while True:
            try:
                await self._run_once()
                backoff = _BACKOFF_START_S
            except grpc.aio.AioRpcError as exc:
                log.warning("scheduler session lost: %s %s; reconnecting in %.1f s",
                            exc.code().name, exc.details(), backoff)
            finally:
                self.registered.clear()
                self.engine_loop.abort_all()
                self.observer.aborted()
                self._outbox = asyncio.Queue()
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_MAX_S, backoff * 2)

    async def _run_once(self) -> None:
        options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
        async with grpc.aio.insecure_channel(self.scheduler_addr, options=options) as channel:
            await channel.channel_ready()
            call = codec.SchedulerStub(channel).WorkerSession(self._upstream())
            log.info("registered with scheduler", extra={"scheduler": self.scheduler_addr,
                                                          "worker_id": self.register.worker_id})
            self.registered.set()
            async for message in call:
                kind, payload = codec.decode_scheduler_msg(message)
                if kind == "assign":
                    for request in payload:
                        self.observer.assigned(request)
                        self.engine_loop.add(request)
                else:
                    self.observer.aborted(payload)
                    self.engine_loop.abort(payload)
