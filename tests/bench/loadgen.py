"""The load generator: sends a workload's sessions to one endpoint on a schedule.

Closed loop (`rate` None): `concurrency` clients, each taking the next session as soon as its
previous one finished. Open loop: sessions start at Poisson arrival times of `rate` per second
(seeded), with at most `concurrency` in flight when it is set. After `stop_after_s` no new request
is sent (those in flight finish and count); at `hard_stop_after_s` the ones still in flight are
cancelled and recorded as cut. Together they bound a slow system's run time.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import aiohttp
from tqdm import tqdm

from tests.bench import sse_client
from tests.bench.endpoint import Endpoint
from tests.bench.records import RequestRecord
from tests.bench.workloads import Session

REQUEST_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Schedule:
    concurrency: int | None = None
    rate: float | None = None  # requests per second, Poisson arrivals
    stop_after_s: float | None = None
    hard_stop_after_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency is None and self.rate is None:
            raise ValueError("a schedule needs a concurrency, a rate or both")

    @property
    def label(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}/s")
        if self.concurrency is not None:
            parts.append(f"c={self.concurrency}")
        return " ".join(parts)


class _Run:
    def __init__(self, client: aiohttp.ClientSession, endpoint: Endpoint, deadline: float | None, bar: tqdm):
        self.client, self.endpoint, self.deadline, self.bar = client, endpoint, deadline, bar
        self.records: list[RequestRecord] = []

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    async def session(self, session: Session) -> None:
        for request in session.requests:
            if self.expired():
                return
            started = time.perf_counter()
            try:
                record = await sse_client.send(self.client, self.endpoint, request)
            except asyncio.CancelledError:
                self.records.append(RequestRecord(start=started, end=time.perf_counter(), cut=True))
                raise
            self.records.append(record)
            self.bar.update(1)
            if record.error:
                self.bar.set_postfix_str(f"errors={sum(1 for r in self.records if r.error)}")
                return


async def _closed_loop(run: _Run, sessions: Sequence[Session], concurrency: int) -> None:
    pending = iter(sessions)

    async def client() -> None:
        for session in pending:
            if run.expired():
                return
            await run.session(session)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def _open_loop(run: _Run, sessions: Sequence[Session], schedule: Schedule) -> None:
    rng = random.Random(schedule.seed)
    limit = asyncio.Semaphore(schedule.concurrency) if schedule.concurrency else None

    async def limited(session: Session) -> None:
        if limit is None:
            await run.session(session)
            return
        async with limit:
            await run.session(session)

    tasks = []
    next_arrival = time.perf_counter()
    try:
        for session in sessions:
            next_arrival += rng.expovariate(schedule.rate)
            await asyncio.sleep(max(0.0, next_arrival - time.perf_counter()))
            if run.expired():
                break
            tasks.append(asyncio.create_task(limited(session)))
        await asyncio.gather(*tasks)
    finally:  # cancelled while still sending: no request may outlive the run
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_load(endpoint: Endpoint, sessions: Sequence[Session], schedule: Schedule,
                   label: str) -> list[RequestRecord]:
    total = sum(len(s.requests) for s in sessions)
    deadline = time.perf_counter() + schedule.stop_after_s if schedule.stop_after_s else None
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    with tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, read_bufsize=1 << 20) as client:
            run = _Run(client, endpoint, deadline, bar)
            load = (_closed_loop(run, sessions, schedule.concurrency or 1) if schedule.rate is None
                    else _open_loop(run, sessions, schedule))
            try:
                await asyncio.wait_for(load, schedule.hard_stop_after_s)
            except TimeoutError:
                pass  # the requests still in flight were recorded as cut
    return run.records


async def warm_up(endpoint: Endpoint, sessions: Sequence[Session]) -> list[str]:
    """Send sessions one by one, unmeasured (first-request costs: model load, allocation); returns errors."""
    records = await run_load(endpoint, sessions, Schedule(concurrency=1), "warm-up")
    return [r.error for r in records if r.error]
