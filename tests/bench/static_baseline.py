"""The reference line: plain `model.generate` on static batches, in one process, same requests.

Requests are taken in workload order (multi-turn: all first turns, then all second turns ...) in
batches of `batch_size`, left-padded to the batch's longest prompt, greedy, and every request of a
batch decodes the batch's largest max_tokens (static batching cannot retire a finished row); the
next batch starts when the whole batch is done. A request's record counts only its own
max_tokens, its first token at the batch's first step and its end at its own last token, which
is the most favourable reading a streaming client of this system could get.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench.records import RequestRecord
from tests.bench.workloads import BenchRequest, Workload


@dataclass(frozen=True)
class StaticJob:
    key: str
    requests: tuple[BenchRequest, ...]
    batch_size: int
    stop_after_s: float | None = None


@dataclass
class StaticResult:
    records: list[RequestRecord]
    forward_ms: float  # one forward pass over the job's first prompt alone (prefill, no cache)


def job_requests(workload: Workload) -> tuple[BenchRequest, ...]:
    """Turn order: every session's k-th request before any session's (k+1)-th."""
    depth = max((len(s.requests) for s in workload.sessions), default=0)
    return tuple(s.requests[k] for k in range(depth) for s in workload.sessions if k < len(s.requests))


class _StepClock:
    """A generate() streamer that only notes when each decoding step's tokens appear."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def _generate_batch(model, torch, batch: list[BenchRequest], pad_id: int) -> list[RequestRecord]:
    width = max(len(r.prompt_ids) for r in batch)
    new_tokens = max(r.max_tokens for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, request in enumerate(batch):
        ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
        mask[row, width - len(request.prompt_ids):] = 1
    clock = _StepClock()
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, pad_token_id=pad_id, streamer=clock)
    return [RequestRecord(start=start, end=clock.times[r.max_tokens - 1], token_times=clock.times[:r.max_tokens],
                          prompt_tokens=len(r.prompt_ids), output_tokens=r.max_tokens) for r in batch]


def _forward_ms(model, torch, prompt: tuple[int, ...]) -> float:
    ids = torch.tensor([prompt])
    model(input_ids=ids)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        model(input_ids=ids)
        timings.append(time.perf_counter() - started)
    return sorted(timings)[1] * 1000.0


def run_static(model_dir: Path, dtype: str, jobs: list[StaticJob], threads: int) -> dict[str, StaticResult]:
    """Runs in its own process (isolated.call); loads the model once for all jobs."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    results = {}
    with torch.inference_mode():
        _generate_batch(model, torch, [BenchRequest((pad_id + 1,) * 4, 2)], pad_id)  # warm-up
        for job in jobs:
            records: list[RequestRecord] = []
            started = time.perf_counter()
            with tqdm(total=len(job.requests), desc=f"static {job.key}", unit="req", leave=False) as bar:
                for first in range(0, len(job.requests), job.batch_size):
                    if job.stop_after_s and time.perf_counter() - started > job.stop_after_s:
                        break
                    batch = list(job.requests[first:first + job.batch_size])
                    records.extend(_generate_batch(model, torch, batch, pad_id))
                    bar.update(len(batch))
            forward = _forward_ms(model, torch, job.requests[0].prompt_ids) if job.requests else 0.0
            results[job.key] = StaticResult(records, forward)
    return results
