"""From a BenchConfig to what gets run: the system variants and the (workload, load) runs.

Pure. Every run gets its own seed, so no two runs share prompts (a cache warmed by one run never
flatters the next), while every system sees exactly the same requests for a given run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from tests.bench.loadgen import Schedule
from tests.bench.options import BenchConfig
from tests.bench.systems import SystemVariant
from tests.bench.workloads import (
    LengthRange,
    Workload,
    multi_turn_workload,
    random_workload,
    shared_prefix_workload,
)

REQUESTS_WITH_DURATION = 4096  # enough to keep a run busy for its duration
HARD_STOP_FACTOR = 2.0  # requests still running at this multiple of the sending time are cut
WARMUP_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class PlannedRun:
    workload: Workload
    schedule: Schedule

    @property
    def key(self) -> str:
        return f"{self.workload.name} {self.schedule.label}"

    @property
    def batch_rows(self) -> int | None:
        """Sequences an ideal engine decodes together: the concurrency (None for an uncapped rate)."""
        if self.schedule.concurrency is None:
            return None
        return min(self.schedule.concurrency, len(self.workload.requests))


def peak_kv_tokens(runs: Sequence[PlannedRun]) -> int:
    """The most tokens (prompt + output) that the runs' requests in flight can hold at once."""
    peak = 0
    for run in runs:
        sizes = sorted((len(r.prompt_ids) + r.max_tokens for r in run.workload.requests), reverse=True)
        in_flight = run.schedule.concurrency or len(sizes)
        peak = max(peak, sum(sizes[:in_flight]))
    return peak


def build_workload(config: BenchConfig, name: str, num_requests: int, pool: Sequence[int],
                   seed: int) -> Workload:
    if name == "random":
        return random_workload(num_requests=num_requests, input_len=config.random_input_len,
                               output_len=config.random_output_len, pool=pool, seed=seed)
    if name == "shared-prefix":
        return shared_prefix_workload(num_requests=num_requests, groups=config.sp_groups,
                                      prefix_len=config.sp_prefix_len, suffix_len=config.sp_suffix_len,
                                      output_len=config.sp_output_len, pool=pool, seed=seed)
    if name == "multi-turn":
        return multi_turn_workload(num_requests=num_requests, turns=config.mt_turns,
                                   first_len=config.mt_first_len, user_len=config.mt_user_len,
                                   reply_len=config.mt_reply_len, output_len=config.mt_output_len,
                                   pool=pool, seed=seed)
    raise ValueError(f"unknown workload {name!r}")


def _stop_after(config: BenchConfig) -> float:
    return min(config.duration_s, config.max_run_s) if config.duration_s else config.max_run_s


def _schedules(config: BenchConfig) -> list[tuple[Schedule, int]]:
    """(schedule without seed, number of requests) per load level."""
    stop_after = _stop_after(config)
    hard_stop = stop_after * HARD_STOP_FACTOR
    out = []
    if config.request_rates:
        for rate in dict.fromkeys(config.request_rates):
            count = config.num_requests or max(config.min_requests, math.ceil(rate * stop_after))
            out.append((Schedule(concurrency=config.max_concurrency, rate=rate, stop_after_s=stop_after,
                                 hard_stop_after_s=hard_stop), count))
        return out
    for concurrency in dict.fromkeys(config.concurrency):
        if config.num_requests:
            count = config.num_requests
        elif config.duration_s:
            count = REQUESTS_WITH_DURATION
        else:
            count = max(config.min_requests, config.requests_per_client * concurrency)
        out.append((Schedule(concurrency=concurrency, stop_after_s=stop_after, hard_stop_after_s=hard_stop),
                    count))
    return out


def plan_runs(config: BenchConfig, pool: Sequence[int]) -> list[PlannedRun]:
    runs = []
    for name in config.workloads:
        for schedule, count in _schedules(config):
            seed = config.seed + len(runs) + 1
            workload = build_workload(config, name, count, pool, seed)
            runs.append(PlannedRun(workload, replace(schedule, seed=seed)))
    return runs


def plan_variants(config: BenchConfig, model_name: str) -> list[SystemVariant]:
    """The external server (if any), then per dtype: every ferrum routing x prefix-cache
    combination, the peer, static. `model_name` is what the external server is asked for by default."""
    variants = []
    if config.url:
        variants.append(SystemVariant("external", "", url=config.url, served_model=config.served_model or model_name))
    for dtype in config.dtypes:
        if "ferrum" in config.systems:
            variants += [SystemVariant("ferrum", dtype, config.workers, routing, cache, config.kv_cache_mb)
                         for routing in config.routing for cache in config.prefix_cache]
        variants += [SystemVariant(kind, dtype, kv_cache_mb=config.kv_cache_mb)
                     for kind in ("peer", "static") if kind in config.systems]
    return variants


def warmup_workload(config: BenchConfig, pool: Sequence[int]) -> Workload:
    """Short requests of prompts no run uses, to pay first-request costs before measuring."""
    return random_workload(num_requests=config.warmup_requests, input_len=LengthRange(16, 16),
                           output_len=LengthRange(4, 4), pool=pool, seed=config.seed + WARMUP_SEED_OFFSET)
