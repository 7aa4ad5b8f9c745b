"""Command line and presets: everything a bench run is told, as one frozen BenchConfig.

A preset fills every option; flags given on the command line override it. `default` is what
`make bench` runs (the published baselines, < 20 min on 2 cores); `quick` is a 2-3 minute
development run on the tiny model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from tests.bench.systems import SYSTEM_KINDS
from tests.bench.workloads import WORKLOAD_NAMES, LengthRange

ROUTING_POLICIES = ("cache_aware", "least_loaded", "round_robin")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    model: str  # a worker.demo_model preset name, built under .cache/ (runner.preset_model_dir)
    model_dir: Path | None  # an existing model directory instead of `model`
    dtypes: tuple[str, ...]
    systems: tuple[str, ...]
    workloads: tuple[str, ...]
    concurrency: tuple[int, ...]
    request_rates: tuple[float, ...]  # when set: one open-loop run per rate instead of per concurrency
    max_concurrency: int | None  # cap on requests in flight for open-loop runs
    num_requests: int | None  # per run; None: max(min_requests, requests_per_client x concurrency)
    requests_per_client: int
    min_requests: int
    duration_s: float | None  # per run: stop sending after this long
    max_run_s: float  # per run: never send new requests after this long (bounds slow systems)
    warmup_requests: int
    repeat: int  # trials of every system, the systems taking turns (tables: the median trial)
    seed: int
    random_input_len: LengthRange
    random_output_len: LengthRange
    sp_groups: int
    sp_prefix_len: int
    sp_suffix_len: int
    sp_output_len: LengthRange
    mt_turns: int
    mt_first_len: LengthRange
    mt_user_len: LengthRange
    mt_reply_len: int
    mt_output_len: LengthRange
    workers: int
    routing: tuple[str, ...]
    prefix_cache: tuple[bool, ...]
    kv_cache_mb: int  # KV cache budget per Ferrum worker, and for transformers serve
    url: str | None  # also bench the server already running there (base URL ending in /v1)
    served_model: str | None  # its model name; default: the bench model directory's name
    plumbing: bool
    plumbing_streams: int
    plumbing_requests: int
    plumbing_input_len: int
    plumbing_output_len: int
    plumbing_ttft_requests: int
    plumbing_model_dir: Path | None  # None: the tiny demo_model preset
    roofline: bool
    rate_measure_s: float  # each matmul-rate timing repeats for at least this long
    threads: int | None  # torch threads of in-process references; None: all cores
    out_dir: Path
    docs: Path | None  # Markdown file the report is appended to; None: do not append


_R = LengthRange
_DEFAULT = BenchConfig(
    preset="default", model="bench-135m", model_dir=None, dtypes=("float32",),
    systems=SYSTEM_KINDS, workloads=("random",), concurrency=(1, 8, 32), request_rates=(),
    max_concurrency=None, num_requests=None, requests_per_client=2, min_requests=4, duration_s=None,
    # 150 s: transformers serve's first wave at concurrency 32 takes 3.4 min on a 2-core AVX2 host (its
    # prefill attends to the whole cache); a shorter cap cuts every request and leaves no ratio.
    max_run_s=150.0, warmup_requests=2, repeat=1, seed=0,
    random_input_len=_R(256, 256), random_output_len=_R(128, 128),
    sp_groups=8, sp_prefix_len=512, sp_suffix_len=64, sp_output_len=_R(32, 32),
    mt_turns=4, mt_first_len=_R(128, 128), mt_user_len=_R(64, 64), mt_reply_len=32, mt_output_len=_R(32, 32),
    workers=1, routing=("cache_aware",), prefix_cache=(True,), kv_cache_mb=1024,
    url=None, served_model=None,
    plumbing=True, plumbing_streams=64, plumbing_requests=128, plumbing_input_len=32, plumbing_output_len=32,
    plumbing_ttft_requests=16, plumbing_model_dir=None, roofline=True, rate_measure_s=0.5, threads=None,
    out_dir=Path("bench-results"), docs=Path("docs/BENCHMARKS.md"),
)
PRESETS = {
    "default": _DEFAULT,
    "quick": replace(
        _DEFAULT, preset="quick", model="tiny", concurrency=(1, 8), random_input_len=_R(64, 64),
        random_output_len=_R(32, 32), max_run_s=20.0, plumbing_requests=64, plumbing_output_len=16,
        plumbing_ttft_requests=8, rate_measure_s=0.05,
    ),
}


def _csv(kind):
    return lambda text: tuple(kind(part) for part in text.split(",") if part)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number of at least 1")
    return value


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def _choices(allowed):
    def parse(text: str) -> tuple[str, ...]:
        values = _csv(str)(text)
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)} (comma-separated)")
        return values
    return parse


def _systems(text: str) -> tuple[str, ...]:
    return () if text == "none" else _choices(SYSTEM_KINDS)(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--preset", choices=sorted(PRESETS), default="default", help="base settings the flags override")
    add("--model", choices=("bench-135m", "tiny", "demo"), help="demo_model preset to build and serve")
    add("--model-dir", type=Path, help="serve this existing model directory instead")
    add("--dtype", dest="dtypes", type=_choices(DTYPES), help="comma-separated; each system runs in each")
    add("--systems", type=_systems, help="comma-separated subset of ferrum,peer,static, or none (with --url)")
    add("--workloads", type=_choices(WORKLOAD_NAMES), help="comma-separated")
    add("--concurrency", type=_csv(int), help="closed-loop clients per run, comma-separated")
    add("--request-rate", dest="request_rates", type=_csv(float), help="Poisson req/s per run (open loop)")
    add("--max-concurrency", type=int, help="in-flight cap for --request-rate runs")
    add("--num-requests", type=int, help="requests per run (default: scaled with concurrency)")
    add("--duration", dest="duration_s", type=float, help="seconds per run (stop sending after)")
    add("--max-run-seconds", dest="max_run_s", type=float, help="hard cap on sending time per run")
    add("--warmup-requests", type=int)
    add("--repeat", type=_positive, help="run every system this many times, taking turns; report medians")
    add("--seed", type=int)
    add("--input-len", dest="random_input_len", type=LengthRange.parse, help="random: N or LOW-HIGH")
    add("--output-len", dest="random_output_len", type=LengthRange.parse, help="random: N or LOW-HIGH")
    add("--prefix-groups", dest="sp_groups", type=int, help="shared-prefix: groups")
    add("--prefix-len", dest="sp_prefix_len", type=int, help="shared-prefix: tokens per prefix")
    add("--suffix-len", dest="sp_suffix_len", type=int, help="shared-prefix: tokens per suffix")
    add("--prefix-output-len", dest="sp_output_len", type=LengthRange.parse, help="shared-prefix: output")
    add("--turns", dest="mt_turns", type=int, help="multi-turn: turns per conversation")
    add("--first-len", dest="mt_first_len", type=LengthRange.parse, help="multi-turn: first prompt")
    add("--user-len", dest="mt_user_len", type=LengthRange.parse, help="multi-turn: each later user message")
    add("--reply-len", dest="mt_reply_len", type=int, help="multi-turn: scripted reply in the history")
    add("--turn-output-len", dest="mt_output_len", type=LengthRange.parse, help="multi-turn: output")
    add("--workers", type=int, help="ferrum workers")
    add("--routing", type=_choices(ROUTING_POLICIES), help="ferrum routing policies, one cluster each")
    add("--prefix-cache", type=_csv(_on_off), help="ferrum prefix caching: on, off or on,off")
    add("--kv-cache-mb", type=int, help="KV cache budget of each ferrum worker and of the peer")
    add("--url", help="also bench a running OpenAI-compatible server (vLLM extras) at this base URL")
    add("--served-model", help="model name for --url (default: the model directory's name)")
    add("--plumbing", action=argparse.BooleanOptionalAction, help="measure the cluster path on the tiny model")
    add("--plumbing-streams", type=int)
    add("--plumbing-requests", type=int)
    add("--plumbing-input-len", type=int)
    add("--plumbing-output-len", type=int)
    add("--plumbing-ttft-requests", type=int)
    add("--plumbing-model-dir", type=Path, help="tiny model for the plumbing figure (default: built)")
    add("--roofline", action=argparse.BooleanOptionalAction, help="measure matmul rates and report %% of roofline")
    add("--rate-measure-s", type=float, help="seconds each matmul-rate timing repeats for (default 0.5)")
    add("--threads", type=int, help="torch threads for in-process references (default: all cores)")
    add("--out-dir", type=Path, help="where JSON, PNG and logs go")
    add("--docs", type=Path, help="Markdown file the report is appended to")
    add("--no-docs", action="store_true", help="do not append to the docs")
    return p


def parse(argv: list[str]) -> BenchConfig:
    args = vars(parser().parse_args(argv))
    config = PRESETS[args.pop("preset")]
    if args.pop("no_docs"):
        config = replace(config, docs=None)
    return replace(config, **{name: value for name, value in args.items() if value is not None})
