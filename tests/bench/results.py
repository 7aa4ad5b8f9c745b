"""What a bench run produced: every figure, in one structure that is written as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.bench.roofline import mean_rates
from tests.bench.stats import RunMetrics


@dataclass
class RunResult:
    """One system on one (workload, load) run. `metrics` is None when the system failed before
    the run could start (`error` says why). `matmul_rates` (FLOP/s by rows) were measured just before
    this system's runs of this trial; `roofline_tokens_per_s`, the ideal engine's output rate for
    this run, comes from the mean of all the bench's measurements in its dtype
    (`BenchReport.mean_matmul_rates`); `forward_ms` (static runs only) one forward pass over the
    run's first prompt."""

    system: str
    kind: str
    dtype: str
    variant: dict
    run: str
    workload: str
    workload_description: str
    concurrency: int | None
    rate: float | None
    ideal_cached_share: float
    metrics: RunMetrics | None = None
    error: str = ""
    roofline_tokens_per_s: float | None = None
    forward_ms: float | None = None
    trial: int = 0  # which of `--repeat` trials, from 0
    matmul_rates: dict[int, float] = field(default_factory=dict)

    @property
    def roofline_pct(self) -> float | None:
        if self.metrics is None or not self.roofline_tokens_per_s:
            return None
        return 100.0 * self.metrics.output_tokens_per_s / self.roofline_tokens_per_s


@dataclass
class PlumbingResult:
    """The cluster's own cost, on the tiny model: streamed tokens/s at `streams` concurrent streams,
    and TTFT p50 through the cluster minus the same engine's TTFT p50 called in-process."""

    streams: int
    requests: int
    errors: int
    tokens_per_s: float
    ttft_cluster_ms_p50: float | None
    ttft_in_process_ms_p50: float | None
    error: str = ""

    @property
    def ttft_overhead_ms(self) -> float | None:
        if self.ttft_cluster_ms_p50 is None or self.ttft_in_process_ms_p50 is None:
            return None
        return self.ttft_cluster_ms_p50 - self.ttft_in_process_ms_p50


@dataclass
class BenchReport:
    started_at: str
    finished_at: str
    command: str
    machine: dict
    config: dict
    model: dict
    matmul_flops_per_s: dict[str, dict[int, float]] = field(default_factory=dict)  # dtype -> rows -> FLOP/s
    # The same measured again after the last system: how much the machine's speed moved meanwhile.
    matmul_flops_per_s_after: dict[str, dict[int, float]] = field(default_factory=dict)
    # Every measurement of the run in order (start, before each system's runs, end), per dtype.
    matmul_rate_samples: dict[str, list[dict[int, float]]] = field(default_factory=dict)
    results: list[RunResult] = field(default_factory=list)
    plumbing: PlumbingResult | None = None
    notes: list[str] = field(default_factory=list)
    code: str = ""  # the git commit measured (code_version)

    def mean_matmul_rates(self, dtype: str) -> dict[int, float]:
        """The rates every result of `dtype` is judged against (empty when none were measured)."""
        return mean_rates(self.matmul_rate_samples.get(dtype, []))

    def to_json(self) -> str:
        data = asdict(self)
        for result, raw in zip(self.results, data["results"]):
            raw["roofline_pct"] = result.roofline_pct
        if self.plumbing is not None:
            data["plumbing"]["ttft_overhead_ms"] = self.plumbing.ttft_overhead_ms
        return json.dumps(data, indent=2, default=str)

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
