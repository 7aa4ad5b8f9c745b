"""The plumbing figure: what gateway -> scheduler -> worker costs by itself.

On the tiny model the forward pass costs almost nothing, so (1) streamed tokens/s at many
concurrent streams is bounded by the cluster's own path (HTTP, SSE, gRPC relays, detokenizing), and
(2) TTFT through the cluster minus TTFT of the same engine driven in-process, on the same prompts
one at a time, is the latency the path adds to every request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from services import event_loop
from tests.bench import isolated, loadgen, stats
from tests.bench.endpoint import Endpoint
from tests.bench.loadgen import Schedule
from tests.bench.options import BenchConfig
from tests.bench.plan import HARD_STOP_FACTOR
from tests.bench.records import RequestRecord
from tests.bench.results import PlumbingResult
from tests.bench.systems import SystemVariant, ferrum
from tests.bench.workloads import LengthRange, random_workload

TTFT_MAX_TOKENS = 4
PLUMBING_DTYPE = "float32"


def engine_ttfts_ms(model_dir: str, dtype: str, prompts: list[tuple[int, ...]], threads: int) -> list[float]:
    """TTFT of each prompt sent alone to a fresh in-process engine (after one warm-up request):
    from add_request to the step that returns its first token. Runs in its own process (isolated)."""
    import torch

    from services.types import GenerateRequest, SamplingParams
    from worker.engine import create_engine
    from worker.engine_config import EngineConfig

    torch.set_num_threads(threads)
    engine = create_engine(model_dir, EngineConfig(dtype=dtype, model_id="bench"))

    def first_token_s(request_id: str, prompt: tuple[int, ...]) -> float:
        sampling = SamplingParams(max_tokens=TTFT_MAX_TOKENS, min_tokens=TTFT_MAX_TOKENS, ignore_eos=True)
        started = time.perf_counter()
        engine.add_request(GenerateRequest(request_id, "bench", list(prompt), sampling))
        elapsed = None
        while elapsed is None:
            if any(out.request_id == request_id and out.token_ids for out in engine.step()):
                elapsed = time.perf_counter() - started
        while engine.has_unfinished():
            engine.step()
        return elapsed

    first_token_s("warm-up", prompts[0][::-1])  # same length as prompt 0, none of its cached blocks
    return [first_token_s(f"r{i}", prompt) * 1000.0 for i, prompt in enumerate(prompts)]


@dataclass
class ClusterSide:
    """What the plumbing figure measured through a running cluster."""

    stream_records: list[RequestRecord]
    single_records: list[RequestRecord]
    single_prompts: list[tuple[int, ...]]


def measure_cluster_side(config: BenchConfig, endpoint: Endpoint, pool: Sequence[int]) -> ClusterSide:
    """Through a cluster serving the tiny model in PLUMBING_DTYPE with one worker."""
    seed = config.seed + 2_000_000
    length = LengthRange(config.plumbing_input_len, config.plumbing_input_len)
    streams = random_workload(num_requests=config.plumbing_requests, input_len=length,
                              output_len=LengthRange(config.plumbing_output_len, config.plumbing_output_len),
                              pool=pool, seed=seed)
    single = random_workload(num_requests=config.plumbing_ttft_requests, input_len=length,
                             output_len=LengthRange(TTFT_MAX_TOKENS, TTFT_MAX_TOKENS), pool=pool, seed=seed + 1)
    warmup = random_workload(num_requests=max(config.warmup_requests, 1), input_len=length,
                             output_len=LengthRange(TTFT_MAX_TOKENS, TTFT_MAX_TOKENS), pool=pool, seed=seed + 2)
    event_loop.run(loadgen.warm_up(endpoint, warmup.sessions))
    many = Schedule(concurrency=config.plumbing_streams, stop_after_s=config.max_run_s,
                    hard_stop_after_s=HARD_STOP_FACTOR * config.max_run_s)
    stream_records = event_loop.run(loadgen.run_load(endpoint, streams.sessions, many,
                                                     f"plumbing c={config.plumbing_streams}"))
    single_records = event_loop.run(loadgen.run_load(endpoint, single.sessions, Schedule(concurrency=1),
                                                     "plumbing ttft c=1"))
    return ClusterSide(stream_records, single_records, [r.prompt_ids for r in single.requests])


def finish(config: BenchConfig, model_dir: Path, side: ClusterSide, threads: int) -> PlumbingResult:
    """Adds the in-process side; call once no cluster is running any more (they would compete)."""
    in_process = isolated.call(engine_ttfts_ms, str(model_dir), PLUMBING_DTYPE, side.single_prompts, threads)
    streamed = stats.summarise(side.stream_records)
    cluster_single = stats.summarise(side.single_records)
    return PlumbingResult(
        streams=config.plumbing_streams,
        requests=streamed.requests,
        errors=streamed.errors + streamed.cut + cluster_single.errors + cluster_single.cut,
        tokens_per_s=streamed.output_tokens_per_s,
        ttft_cluster_ms_p50=cluster_single.ttft_ms["p50"],
        ttft_in_process_ms_p50=stats.percentile(in_process, 50),
    )


def measure(config: BenchConfig, model_dir: Path, tokenizer: Tokenizer, pool: Sequence[int], log_dir: Path,
            threads: int) -> PlumbingResult:
    """The whole figure, on a cluster of its own."""
    with ferrum(SystemVariant("ferrum", PLUMBING_DTYPE), model_dir, tokenizer, log_dir / "plumbing") as endpoint:
        side = measure_cluster_side(config, endpoint, pool)
    return finish(config, model_dir, side, threads)
