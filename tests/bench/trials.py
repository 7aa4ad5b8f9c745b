"""Repeated trials (`--repeat N`): every system runs N times, the systems taking turns, so that a
shared host's slow drifts touch each system alike and the run-to-run spread is on record.

Invariants: a (system, run) pair has at most one result per trial; the tables show the pair's
median trial; a ratio between two systems is the median over trials of the ratio within one trial
(the two ran minutes apart), never a ratio of medians taken at different times.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from tests.bench.results import RunResult

Metric = Callable[[RunResult], float | None]


def _pair_key(result: RunResult) -> tuple[str, str]:
    return result.system, result.run


def _trials_by_pair(results: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Each (system, run)'s results in trial order; pairs in first-appearance order."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault(_pair_key(result), []).append(result)
    return {key: sorted(trials, key=lambda r: r.trial) for key, trials in groups.items()}


def tok_s(result: RunResult | None) -> float | None:
    return result.metrics.output_tokens_per_s if result and result.metrics else None


def ttft_p50(result: RunResult | None) -> float | None:
    return result.metrics.ttft_ms["p50"] if result and result.metrics else None


def trial_count(results: list[RunResult]) -> int:
    return 1 + max((r.trial for r in results), default=0)


def median_trials(results: list[RunResult]) -> list[RunResult]:
    """One result per (system, run), in first-appearance order: the trial of median throughput
    (the lower median for an even count); a failed trial counts only when every trial failed."""
    chosen = []
    for trials in _trials_by_pair(results).values():
        done = sorted((r for r in trials if r.metrics is not None), key=lambda r: r.metrics.output_tokens_per_s)
        chosen.append(done[(len(done) - 1) // 2] if done else trials[0])
    return chosen


def trial_ratios(results: list[RunResult], a: RunResult, b: RunResult, metric: Metric) -> list[float]:
    """metric(a) ÷ metric(b) within each trial where both have the figure, in trial order."""
    by_pair = _trials_by_pair(results)
    b_by_trial = {r.trial: metric(r) for r in by_pair.get(_pair_key(b), [])}
    ratios = []
    for result in by_pair.get(_pair_key(a), []):
        value, other = metric(result), b_by_trial.get(result.trial)
        if value is not None and other:
            ratios.append(value / other)
    return ratios


def format_ratio(ratios: list[float]) -> str:
    """"2.00×" for one trial; "1.02× (0.97–1.05)": the median and the range over several."""
    if not ratios:
        return "–"
    text = f"{median(ratios):.2f}×"
    if len(ratios) > 1:
        text += f" ({min(ratios):.2f}–{max(ratios):.2f})"
    return text


def spread_rows(results: list[RunResult]) -> list[list[str]]:
    """Per (system, run): throughput of each trial in order, the median, max ÷ min, and each
    trial's % of the roofline measured just before it."""
    by_pair = _trials_by_pair(results)
    rows = []
    for representative in median_trials(results):
        trials = by_pair[_pair_key(representative)]
        values = [tok_s(r) for r in trials]
        done = [v for v in values if v is not None]
        rows.append([representative.workload, representative.run.split(" ", 1)[1], representative.system,
                     " / ".join("failed" if v is None else f"{v:,.1f}" for v in values),
                     f"{median(done):,.1f}" if done else "–",
                     f"{max(done) / min(done):.2f}×" if done and min(done) > 0 else "–",
                     " / ".join("–" if r.roofline_pct is None else f"{r.roofline_pct:.1f}" for r in trials)])
    return rows
