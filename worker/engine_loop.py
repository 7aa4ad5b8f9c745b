"""Runs an Engine on its own thread, fed by thread-safe commands from the asyncio side.

torch releases the GIL inside each operation, so the event loop (gRPC session, stats) stays
responsive while the engine steps. Invariants: only the engine thread touches the engine, and no
other living thread has run torch's parallel CPU work (load_engine below says why).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.types import FINISH_ERROR, GenerateRequest, RequestOutput, WorkerStats
from worker.engine_api import Engine, RequestRejected

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.25


async def load_engine(factory: Callable[[], Engine]) -> Engine:
    """`factory()` run on a thread of its own, which has ended when this returns.

    Why not asyncio.to_thread: every thread that runs a parallel CPU operation (loading weights
    does) keeps an OpenMP thread team for as long as it lives, and once libgomp manages more
    threads than there are CPUs it stops spinning between parallel regions, so each of a decode
    step's hundreds of regions starts with a futex wake-up. An executor thread lives on after
    loading; measured with bench-135m in bfloat16 (32 sequences, 2 cores), a decode step on the
    engine thread took 52 ms after loading on another living thread, 39 ms after loading on one
    that had ended, the same as on the loading thread itself.
    """
    outcome: dict = {}

    def load() -> None:
        try:
            outcome["engine"] = factory()
        except BaseException as exc:  # re-raised on the event loop below
            outcome["error"] = exc

    thread = threading.Thread(target=load, name="engine-load", daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join)  # the joining executor thread runs no torch work
    if "error" in outcome:
        raise outcome["error"]
    return outcome["engine"]


@dataclass
class _Add:
    request: GenerateRequest


@dataclass
class _Abort:
    request_id: str | None  # None: abort everything (the session was lost)


class EngineLoop:
    def __init__(self, engine: Engine, on_outputs: Callable[[list[RequestOutput]], None],
                 on_stats: Callable[[WorkerStats], None],
                 on_block_events: Callable[[list[bytes], list[bytes]], None] | None = None):
        self.engine = engine
        self._on_outputs = on_outputs
        self._on_stats = on_stats
        self._on_block_events = on_block_events
        self._commands: list[_Add | _Abort] = []
        self._active: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self.draining = False  # set on SIGTERM: reported in stats so the scheduler sends nothing new
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._commands and not self._active

    def start_draining(self) -> None:
        self.draining = True
        with self._cond:
            self._cond.notify()

    def add(self, request: GenerateRequest) -> None:
        self._command(_Add(request))

    def abort(self, request_id: str) -> None:
        self._command(_Abort(request_id))

    def abort_all(self) -> None:
        self._command(_Abort(None))

    def _command(self, command: _Add | _Abort) -> None:
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    def _apply(self, commands: list[_Add | _Abort]) -> list[RequestOutput]:
        rejected = []
        for command in commands:
            if isinstance(command, _Add):
                try:
                    self.engine.add_request(command.request)
                    self._active.add(command.request.request_id)
                except RequestRejected as exc:
                    rejected.append(RequestOutput(command.request.request_id, finish_reason=FINISH_ERROR,
                                                  prompt_tokens=len(command.request.prompt_token_ids),
                                                  error=str(exc)))
            else:
                ids = list(self._active) if command.request_id is None else [command.request_id]
                for request_id in ids:
                    self.engine.abort_request(request_id)
                    self._active.discard(request_id)
        return rejected

    def _run(self) -> None:
        last_stats = 0.0
        reported_draining = False
        while True:
            with self._cond:
                while not self._commands and not self._stopping and not self.engine.has_unfinished():
                    self._cond.wait(timeout=STATS_INTERVAL_S)
                    if time.monotonic() - last_stats >= STATS_INTERVAL_S or self.draining != reported_draining:
                        break
                if self._stopping:
                    return
                commands, self._commands = self._commands, []
            outputs = self._apply(commands)
            if self.engine.has_unfinished():
                try:
                    outputs += self.engine.step()
                except Exception:
                    log.exception("engine step failed; failing the running requests")
                    outputs += [RequestOutput(rid, finish_reason=FINISH_ERROR, error="internal engine error")
                                for rid in self._active]
                    self._apply([_Abort(None)])
            for out in outputs:
                if out.finished:
                    self._active.discard(out.request_id)
            if outputs:
                self._on_outputs(outputs)
            if self._on_block_events is not None:
                events = self.engine.take_block_events()
                if events.stored or events.removed:
                    self._on_block_events(events.stored, events.removed)
            now = time.monotonic()
            if now - last_stats >= STATS_INTERVAL_S or self.draining != reported_draining:
                last_stats = now
                stats = self.engine.stats()
                stats.draining = reported_draining = self.draining
                self._on_stats(stats)
