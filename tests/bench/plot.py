"""PNG plot: output throughput and TTFT p50 against load, one line per system, one row per workload
(each system's median trial under `--repeat`)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.results import BenchReport
from tests.bench.trials import median_trials


def _x(result) -> float | None:
    return result.concurrency if result.rate is None else result.rate


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def write_plot(report: BenchReport, path: Path) -> Path | None:
    """Returns the path written, or None when no run has figures to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    done = [r for r in median_trials(report.results) if r.metrics is not None and _x(r) is not None]
    workloads = list(dict.fromkeys(r.workload for r in done))
    if not workloads:
        return None
    figure, axes = plt.subplots(len(workloads), 2, figsize=(12, 4.2 * len(workloads)), squeeze=False)
    for row, workload in enumerate(workloads):
        mine = [r for r in done if r.workload == workload]
        open_loop = any(r.rate is not None for r in mine)
        for system in dict.fromkeys(r.system for r in mine):
            points = sorted(((_x(r), r.metrics) for r in mine if r.system == system), key=lambda p: p[0])
            xs = [x for x, _ in points]
            axes[row][0].plot(xs, [m.output_tokens_per_s for _, m in points], marker="o", label=system)
            axes[row][1].plot(xs, [_nan_if_none(m.ttft_ms["p50"]) for _, m in points], marker="o", label=system)
        for column, ylabel in enumerate(("output tokens/s", "TTFT p50 (ms)")):
            ax = axes[row][column]
            ax.set_xlabel("request rate (req/s)" if open_loop else "concurrency")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{workload}: {ylabel}")
            ax.grid(True, alpha=0.3)
            if not open_loop:
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted({_x(r) for r in mine}))
                ax.xaxis.set_major_formatter(ScalarFormatter())
        axes[row][1].set_yscale("log")
        axes[row][0].legend(fontsize=8)
    figure.suptitle(f"{report.model['name']} on {report.machine['cpu']} ({report.machine['cores']} cores), "
                    f"{report.started_at}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
