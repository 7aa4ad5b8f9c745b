"""The scheduler's state machine: admit requests, hand them to workers, relay their outputs.

All methods run on the scheduler's event loop; nothing here touches gRPC. Request lifecycle:
queued (in RequestQueue) → assigned (in a worker's `inflight`) → finished (dropped). A request whose
worker vanishes goes back to the queue with the tokens already relayed as `resume_token_ids`, so the
next worker continues where the first stopped and the client sees each token once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

from scheduler import metrics
from scheduler.prefix_router import Affinity, PrefixRouter
from scheduler.registry import END_SESSION, WorkerHandle, WorkerRegistry
from scheduler.request_queue import RequestQueue
from services import codec
from services.types import GenerateRequest, RequestOutput

log = logging.getLogger(__name__)

# Workers reconnect with a backoff of at most 5 s: this long after the first one, all are back.
REJOIN_WINDOW_S = 6.0


class AdmissionError(Exception):
    """A request refused at submit; `kind` picks the gRPC status the servicer answers with."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "not_found" | "invalid" | "queue_full" | "unavailable"


@dataclass
class Pending:
    request: GenerateRequest
    arrival: int
    submitted_at: float
    outputs: asyncio.Queue = field(default_factory=asyncio.Queue)
    affinity: Affinity | None = None
    submitted_ns: int = field(default_factory=time.time_ns)
    dispatched_ns: int = 0
    route_reason: str = ""
    worker_id: str | None = None
    emitted: list[int] = field(default_factory=list)


class SchedulerCore:
    def __init__(self, max_queue: int, worker_wait_s: float, router: PrefixRouter | None = None,
                 max_queue_per_model: int | None = None):
        self.router = router or PrefixRouter("least_loaded", None)
        self.registry = WorkerRegistry()
        self.queue = RequestQueue(max_queue, max_queue_per_model)
        self.draining = False  # SIGTERM: admit nothing new, finish what is in flight
        self.closed = False  # the drain is over: no request and no worker session is served
        self.worker_wait_s = worker_wait_s
        self.total_requests = 0
        self._pending: dict[str, Pending] = {}
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()
        self._joined = asyncio.Event()  # set and replaced whenever a worker joins
        self._started = time.monotonic()
        self._first_join: float | None = None

    # ------------------------------------------------------------------ requests

    async def wait_for_model(self, model: str) -> None:
        """A restarted scheduler learns its models as workers reconnect: a request for a model it
        does not know yet waits, for up to worker_wait_s after start, and no longer than
        REJOIN_WINDOW_S after the first worker came back (the others follow within their backoff)."""
        while not self.registry.knows(model) and (remaining := self._model_wait_deadline() - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(self._joined.wait(), remaining)
            except TimeoutError:
                return

    def _model_wait_deadline(self) -> float:
        deadline = self._started + self.worker_wait_s
        if self._first_join is not None:
            deadline = min(deadline, self._first_join + REJOIN_WINDOW_S)
        return deadline

    async def affinity(self, request: GenerateRequest) -> Affinity | None:
        """Which workers already hold how much of this prompt (None for an unknown model)."""
        if not self.registry.knows(request.model):
            return None
        _, block_size, _ = self.registry.limits(request.model)
        live = {w.worker_id: w.info.epoch for w in self.registry.for_model(request.model)}
        return await self.router.affinity(request.model, request.prompt_token_ids, request.cache_salt,
                                          block_size, live)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, request: GenerateRequest, affinity: Affinity | None = None) -> Pending:
        model = request.model
        if self.draining:
            raise AdmissionError("unavailable", "the scheduler is shutting down; retry")
        if not self.registry.knows(model):
            raise AdmissionError("not_found", f"The model `{model}` does not exist.")
        if request.request_id in self._pending:
            raise AdmissionError("invalid", f"request id {request.request_id!r} is already in flight")
        self._check_fits(request)
        arrival = next(self._arrivals)
        try:
            self.queue.push(request, arrival)
        except Exception as exc:  # QueueFull
            raise AdmissionError("queue_full", str(exc)) from exc
        pending = Pending(request, arrival, time.monotonic(), affinity=affinity)
        self._pending[request.request_id] = pending
        self.total_requests += 1
        self._wake.set()
        return pending

    def _check_fits(self, request: GenerateRequest) -> None:
        max_len, block_size, num_blocks = self.registry.limits(request.model)
        prompt = len(request.prompt_token_ids)
        total = prompt + request.sampling.max_tokens
        if prompt == 0:
            raise AdmissionError("invalid", "the prompt is empty")
        if total > max_len:
            raise AdmissionError("invalid", (
                f"This model's maximum context length is {max_len} tokens. However, you requested {total} "
                f"tokens ({prompt} in the prompt, {request.sampling.max_tokens} for the completion)."))
        blocks = -(-total // block_size)
        if blocks > num_blocks:
            raise AdmissionError("invalid", (
                f"The request needs {total} tokens of KV cache ({blocks} blocks of {block_size}), more than "
                f"a worker's whole cache holds ({num_blocks} blocks)."))

    def close(self) -> None:
        """End of the drain: fail whatever has not finished (it has nowhere to go on this scheduler)
        and end every worker session, so that workers move to the next scheduler at once."""
        self.draining = self.closed = True
        for request_id, pending in list(self._pending.items()):
            self.queue.remove(request_id)
            pending.outputs.put_nowait(AdmissionError(
                "unavailable", "the scheduler stopped before the request finished; retry"))
        self._pending.clear()
        for worker in self.registry.all():
            worker.inflight.clear()
            worker.outbox.put_nowait(END_SESSION)

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    def cancel(self, request_id: str) -> None:
        """The client went away or stopped reading: drop the request wherever it is."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        self.queue.remove(request_id)
        worker = self.registry.get(pending.worker_id) if pending.worker_id else None
        if worker is not None:
            worker.inflight.discard(request_id)
            worker.outbox.put_nowait(codec.abort_msg(request_id))
            self._wake.set()

    # ------------------------------------------------------------------ workers

    def worker_joined(self, handle: WorkerHandle) -> None:
        old = self.registry.get(handle.worker_id)
        if old is not None:
            self.worker_left(old.worker_id)
        self.registry.add(handle)
        if self._first_join is None:
            self._first_join = time.monotonic()
        self._joined.set()
        self._joined = asyncio.Event()
        log.info("worker %s joined serving %s (epoch %d)", handle.worker_id, handle.model, handle.info.epoch)
        self._wake.set()

    def worker_left(self, worker_id: str) -> None:
        handle = self.registry.remove(worker_id)
        if handle is None:
            return
        requeued = 0
        for request_id in handle.inflight:
            pending = self._pending.get(request_id)
            if pending is None:
                continue
            pending.worker_id = None
            pending.request.resume_token_ids = list(pending.emitted)
            self.queue.push(pending.request, pending.arrival, force=True)
            requeued += 1
        self.router.forget_worker(worker_id)
        metrics.REQUEUED.labels(handle.model).inc(requeued)
        log.warning("worker %s left; %d requests re-queued", worker_id, requeued)
        self._wake.set()

    def worker_outputs(self, worker_id: str, outputs: list[RequestOutput]) -> None:
        handle = self.registry.get(worker_id)
        for out in outputs:
            pending = self._pending.get(out.request_id)
            if pending is None or pending.worker_id != worker_id:
                continue  # aborted meanwhile, or a stale output of a request moved elsewhere
            pending.emitted.extend(out.token_ids)
            pending.outputs.put_nowait(out)
            if out.finished:
                del self._pending[out.request_id]
                if handle is not None:
                    handle.inflight.discard(out.request_id)
                self._wake.set()

    def worker_stats_changed(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ dispatch

    async def run(self) -> None:
        """Dispatch loop: whenever something changes, hand queued requests to workers with credit."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()
            self.dispatch()
            self.expire_unserved()

    def dispatch(self) -> None:
        now = time.monotonic()
        for model in self.queue.models():
            batches: dict[str, list[GenerateRequest]] = {}
            workers = self.registry.for_model(model)
            while (head := self.queue.peek(model)) is not None:
                pending = self._pending[head.request_id]
                decision = self.router.choose(workers, pending.affinity)
                if decision is None:
                    break
                worker = decision.worker
                request = self.queue.pop(model)
                metrics.QUEUE_TIME.labels(model).observe(now - pending.submitted_at)
                pending.dispatched_ns = time.time_ns()
                pending.route_reason = decision.reason
                pending.worker_id = worker.worker_id
                worker.inflight.add(request.request_id)
                batches.setdefault(worker.worker_id, []).append(request)
            for worker_id, requests in batches.items():
                self.registry.get(worker_id).outbox.put_nowait(codec.assign_msg(requests))
        self._update_gauges()

    def _update_gauges(self) -> None:
        models = {w.model for w in self.registry.all()} | set(self.queue.models())
        for model in models:
            workers = self.registry.for_model(model)
            metrics.WORKERS.labels(model).set(len(workers))
            metrics.RUNNING.labels(model).set(sum(len(w.inflight) for w in workers))
            metrics.QUEUE_DEPTH.labels(model).set(self.queue.depth(model))
        for w in self.registry.all():
            metrics.KV_USAGE.labels(w.worker_id).set(w.stats.kv_usage)

    def expire_unserved(self) -> None:
        """Fail requests that waited longer than worker_wait_s for a model with no live worker."""
        now = time.monotonic()
        for request in self.queue.waiting():
            if self.registry.for_model(request.model):
                continue
            pending = self._pending[request.request_id]
            if now - pending.submitted_at >= self.worker_wait_s:
                self.queue.remove(request.request_id)
                del self._pending[request.request_id]
                pending.outputs.put_nowait(AdmissionError(
                    "unavailable", f"no worker is serving model `{request.model}` (waited {self.worker_wait_s:g} s)"))

