"""Runs a whole bench: builds the model, measures the roofline, runs every system variant on every
planned run (one system at a time, never two at once; `--repeat` trials take turns), then the
plumbing figure."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from services import event_loop
from tests.bench import isolated, loadgen, machine, plumbing, stats
from tests.bench.code_version import code_version
from tests.bench.flops import ModelShape, workload_flops
from tests.bench.options import BenchConfig
from tests.bench.plan import PlannedRun, peak_kv_tokens, plan_runs, plan_variants, warmup_workload
from tests.bench.prompt_tokens import load_tokenizer, round_trip_pool
from tests.bench.results import BenchReport, PlumbingResult, RunResult
from tests.bench.roofline import (PREFILL_ROWS, default_threads, largest_rate_change, measure_matmul_rates,
                                  roofline_tokens_per_s)
from tests.bench.static_baseline import StaticJob, job_requests, run_static
from tests.bench.systems import SystemVariant, serve

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO_ROOT / ".cache" / "bench-models"
DEFAULT_STATIC_BATCH = 8  # static batch size for uncapped open-loop runs
# Identical runs on this kind of VM differ by up to ~20%; a larger move of the matmul rates means
# the host was busy with something else.
RATE_CHANGE_WARNING = 0.25
_STARTED = time.monotonic()


def _say(text: str) -> None:
    print(f"[bench +{time.monotonic() - _STARTED:.0f}s] {text}", file=sys.stderr, flush=True)


def preset_model_dir(preset: str) -> Path:
    """The tiny preset shares the test suite's build (tests/conftest.py: same preset, arch and seed)."""
    if preset == "tiny":
        return REPO_ROOT / ".cache" / "test-models" / "tiny-llama"
    return MODEL_CACHE / preset


def build_preset_model(preset: str) -> Path:
    from worker.demo_model import build_model

    return build_model(preset_model_dir(preset), preset=preset)


def _blank_result(variant: SystemVariant, run: PlannedRun) -> RunResult:
    return RunResult(system=variant.label, kind=variant.kind, dtype=variant.dtype, variant=asdict(variant),
                     run=run.key, workload=run.workload.name, workload_description=run.workload.description,
                     concurrency=run.schedule.concurrency, rate=run.schedule.rate,
                     ideal_cached_share=run.workload.ideal_cached_share)


def _log_result(result: RunResult) -> None:
    if result.metrics is None:
        _say(f"{result.system} | {result.run}: FAILED {result.error[:200]}")
        return
    m = result.metrics
    _say(f"{result.system} | {result.run}: {m.output_tokens_per_s:.1f} out tok/s, TTFT p50 "
         f"{m.ttft_ms['p50'] or float('nan'):.0f} ms, {m.requests - m.errors}/{m.requests} ok")


def _run_static(variant: SystemVariant, runs: list[PlannedRun], model_dir: Path, threads: int) -> list[RunResult]:
    jobs = [StaticJob(run.key, job_requests(run.workload), run.batch_rows or DEFAULT_STATIC_BATCH,
                      run.schedule.stop_after_s) for run in runs]
    outcome = isolated.call(run_static, model_dir, variant.dtype, jobs, threads)
    results = []
    for run in runs:
        result = _blank_result(variant, run)
        result.metrics = stats.summarise(outcome[run.key].records)
        result.forward_ms = outcome[run.key].forward_ms
        results.append(result)
    return results


def _run_server(variant: SystemVariant, runs: list[PlannedRun], config: BenchConfig, model_dir: Path,
                pool: list[int], results: list[RunResult], plumbing_sides: list | None) -> None:
    """Appends each run's result as soon as it is done, so a failure later keeps the earlier ones.
    With `plumbing_sides` given, also takes the plumbing figure's cluster side on this cluster."""
    tokenizer = load_tokenizer(model_dir)
    log_dir = config.out_dir / "logs"
    with serve(variant, model_dir, tokenizer, log_dir, peak_kv_tokens(runs)) as endpoint:
        warm_errors = event_loop.run(loadgen.warm_up(endpoint, warmup_workload(config, pool).sessions))
        if warm_errors:
            _say(f"{variant.label}: warm-up errors: {warm_errors[:2]}")
        for run in runs:
            records = event_loop.run(loadgen.run_load(endpoint, run.workload.sessions, run.schedule,
                                                      f"{variant.label} | {run.key}"))
            result = _blank_result(variant, run)
            result.metrics = stats.summarise(records)
            _log_result(result)
            results.append(result)
        if plumbing_sides is not None:
            _say(f"plumbing figure on this cluster ({variant.label})")
            plumbing_sides.append(plumbing.measure_cluster_side(config, endpoint, pool))


def _run_variant(variant: SystemVariant, runs: list[PlannedRun], config: BenchConfig, model_dir: Path,
                 pool: list[int], threads: int, plumbing_sides: list | None) -> list[RunResult]:
    _say(f"starting {variant.label}")
    results: list[RunResult] = []
    try:
        if variant.kind == "static":
            results = _run_static(variant, runs, model_dir, threads)
            for result in results:
                _log_result(result)
        else:
            _run_server(variant, runs, config, model_dir, pool, results, plumbing_sides)
    except Exception as error:  # one failing system must not cost the others' figures
        _say(f"{variant.label} failed: {error}")
        done = {result.run for result in results}
        for run in runs:
            if run.key not in done:
                result = _blank_result(variant, run)
                result.error = f"{type(error).__name__}: {error}"[:2000]
                results.append(result)
    return results


def _plumbing_model(config: BenchConfig) -> Path:
    return (config.plumbing_model_dir or preset_model_dir("tiny")).resolve()


def _plumbing_host(config: BenchConfig, variants: list[SystemVariant], model_dir: Path) -> SystemVariant | None:
    """A Ferrum variant whose cluster can also give the plumbing figure (it serves the plumbing
    model in its dtype with one worker), which saves starting one more cluster."""
    if not config.plumbing or _plumbing_model(config) != model_dir:
        return None
    return next((v for v in variants if v.kind == "ferrum" and v.dtype == plumbing.PLUMBING_DTYPE
                 and v.workers == 1 and v.prefix_cache), None)


def _measure_plumbing(config: BenchConfig, threads: int, sides: list) -> PlumbingResult:
    try:
        if sides:
            return plumbing.finish(config, _plumbing_model(config), sides[0], threads)
        _say("plumbing figure on the tiny model")
        model_dir = config.plumbing_model_dir or build_preset_model("tiny")
        tokenizer = load_tokenizer(model_dir)
        return plumbing.measure(config, model_dir, tokenizer, round_trip_pool(tokenizer),
                                config.out_dir / "logs", threads)
    except Exception as error:
        _say(f"plumbing failed: {error}")
        return PlumbingResult(config.plumbing_streams, 0, 0, 0.0, None, None, f"{type(error).__name__}: {error}")


def run_bench(config: BenchConfig, command: str) -> BenchReport:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    threads = config.threads or default_threads()
    model_dir = (config.model_dir or build_preset_model(config.model)).resolve()
    tokenizer = load_tokenizer(model_dir)
    pool = round_trip_pool(tokenizer)
    model_config = json.loads((model_dir / "config.json").read_text())
    shape = ModelShape.from_config(model_config)
    runs = plan_runs(config, pool)
    report = BenchReport(
        started_at=started, finished_at="", command=command, machine=machine.describe(), code=code_version(),
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        model={"name": config.model if config.model_dir is None else str(config.model_dir),
               "dir": str(model_dir), "architecture": (model_config.get("architectures") or ["?"])[0],
               "shape": asdict(shape), "parameters": shape.parameters,
               "decode_flops_per_token": shape.linear_flops_per_token + shape.lm_head_flops},
    )
    rows = sorted({PREFILL_ROWS} | {run.batch_rows for run in runs if run.batch_rows})

    def matmul_rates(dtype: str, at_rows: list[int]) -> dict[int, float]:
        return isolated.call(measure_matmul_rates, shape, dtype, at_rows, threads, config.rate_measure_s)

    if config.roofline:
        for dtype in config.dtypes:
            _say(f"measuring matmul rates ({dtype}, rows {rows})")
            report.matmul_flops_per_s[dtype] = matmul_rates(dtype, rows)
            report.matmul_rate_samples[dtype] = [report.matmul_flops_per_s[dtype]]
    variants = plan_variants(config, model_dir.name)
    host = _plumbing_host(config, variants, model_dir)
    plumbing_sides: list[plumbing.ClusterSide] = []
    for trial in range(config.repeat):
        if config.repeat > 1:
            _say(f"trial {trial + 1} of {config.repeat}")
        for variant in variants:
            sides = plumbing_sides if variant == host and trial == 0 else None
            # Samples spread over the bench (roofline.mean_rates says why one is not enough).
            rates = matmul_rates(variant.dtype, rows) if config.roofline else {}
            if rates:
                report.matmul_rate_samples[variant.dtype].append(rates)
            for result in _run_variant(variant, runs, config, model_dir, pool, threads, sides):
                result.trial = trial
                result.matmul_rates = rates
                report.results.append(result)
    if config.roofline:
        for dtype, rates in report.matmul_flops_per_s.items():
            _say(f"measuring matmul rates again ({dtype}): did the machine's speed move during the run?")
            report.matmul_flops_per_s_after[dtype] = matmul_rates(dtype, sorted(rates))
            report.matmul_rate_samples[dtype].append(report.matmul_flops_per_s_after[dtype])
        change = largest_rate_change(report.matmul_flops_per_s, report.matmul_flops_per_s_after)
        if change > RATE_CHANGE_WARNING:
            report.notes.append(f"the machine's matmul rates moved by up to {change:.0%} between the start and "
                                "the end of this run (other load on a shared host): its figures are disturbed")
    by_key = {run.key: run for run in runs}
    for result in report.results:
        run, rates = by_key[result.run], report.mean_matmul_rates(result.dtype)
        if rates and run.batch_rows:
            flops = workload_flops(shape, run.workload.requests)
            result.roofline_tokens_per_s = roofline_tokens_per_s(flops, rates, run.batch_rows)
    if config.plumbing:
        report.plumbing = _measure_plumbing(config, threads, plumbing_sides)
    report.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return report
