"""The Markdown report of a bench run: what is printed and what is appended to docs/BENCHMARKS.md.

Ratios compare systems on the same run (same requests) and the same dtype: output tokens/s of
Ferrum ÷ the other system's (above 1: Ferrum is faster) and TTFT p50 of Ferrum ÷ the other's
(below 1: Ferrum answers sooner). With `--repeat` the tables show each system's median trial and
each ratio is the median of the ratios within one trial, with their range (trials.py).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from tests.bench import machine
from tests.bench.results import BenchReport, RunResult
from tests.bench.trials import (Metric, format_ratio, median_trials, spread_rows, tok_s, trial_count, trial_ratios,
                                ttft_p50)

DASH = "–"
COMPARED_ATTRIBUTES = ("dtype", "routing", "prefix_cache")


def _num(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _ratio(report: BenchReport, a: RunResult, b: RunResult | None, metric: Metric) -> str:
    return DASH if b is None else format_ratio(trial_ratios(report.results, a, b, metric))


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _load(result: RunResult) -> str:
    return result.run.split(" ", 1)[1]


def _peer_of(report: BenchReport, result: RunResult, kind: str) -> RunResult | None:
    return next((r for r in report.results if r.kind == kind and r.run == result.run and r.dtype == result.dtype),
                None)


def _by_run(report: BenchReport) -> list[RunResult]:
    """Each system's median trial, grouped by run (in the order runs were planned), systems in the
    order they ran."""
    order = {run: i for i, run in enumerate(dict.fromkeys(r.run for r in report.results))}
    return sorted(median_trials(report.results), key=lambda r: order[r.run])


def summary_table(report: BenchReport) -> str:
    rows = []
    for r in _by_run(report):
        is_ferrum = r.kind == "ferrum"
        peer, static = _peer_of(report, r, "peer"), _peer_of(report, r, "static")
        rows.append([r.workload, _load(r), r.system,
                     _num(tok_s(r)) if r.metrics else f"failed: {r.error[:60]}", _num(ttft_p50(r), 0),
                     _ratio(report, r, peer, tok_s) if is_ferrum else "",
                     _ratio(report, r, static, tok_s) if is_ferrum else "",
                     _ratio(report, r, peer, ttft_p50) if is_ferrum else "",
                     _num(r.roofline_pct)])
    return _table(["workload", "load", "system", "out tok/s", "TTFT p50 ms", "tok/s ÷ peer",
                   "tok/s ÷ static", "TTFT p50 ÷ peer", "% of roofline"], rows)


def details_table(report: BenchReport) -> str:
    rows = []
    for r in _by_run(report):
        m = r.metrics
        if m is None:
            continue
        static = _peer_of(report, r, "static")
        forward = static.forward_ms if static and r.concurrency == 1 else None
        cached = DASH if m.cached_share is None else f"{100 * m.cached_share:.1f}%"
        rows.append([
            r.workload, _load(r), r.system,
            f"{m.requests - m.errors - m.cut}/{m.requests}" + (f" ({m.cut} cut)" if m.cut else ""),
            _num(m.requests_per_s, 2),
            _num(m.output_tokens_per_s),
            " / ".join(_num(m.ttft_ms[p], 0) for p in ("p50", "p95", "p99")),
            " / ".join(_num(m.itl_ms[p], 1) for p in ("p50", "p95")),
            " / ".join(_num(m.e2e_s[p], 2) for p in ("p50", "p95")),
            f"{cached} ({100 * r.ideal_cached_share:.1f}%)", _num(r.roofline_pct),
            format_ratio([m.ttft_ms["p50"] / forward]) if m.ttft_ms["p50"] is not None and forward else DASH,
        ])
    return _table(["workload", "load", "system", "ok", "req/s", "out tok/s", "TTFT p50/p95/p99 ms",
                   "ITL p50/p95 ms", "E2E p50/p95 s", "cached share (ideal)", "% of roofline",
                   "TTFT p50 ÷ 1 forward"], rows)


def _differs_in_one(a: dict, b: dict) -> str | None:
    differing = [k for k in COMPARED_ATTRIBUTES if a[k] != b[k]]
    return differing[0] if len(differing) == 1 and a["workers"] == b["workers"] else None


def comparison_table(report: BenchReport) -> str:
    """Ferrum variants that differ in one setting, pairwise, in the order they ran (A before B)."""
    ferrum = [r for r in median_trials(report.results) if r.kind == "ferrum"]
    rows = []
    for a, b in combinations(ferrum, 2):
        attribute = _differs_in_one(a.variant, b.variant)
        if attribute and a.run == b.run:
            rows.append([a.workload, _load(a), attribute, a.system, b.system,
                         _ratio(report, a, b, tok_s), _ratio(report, a, b, ttft_p50)])
    if not rows:
        return ""
    return _table(["workload", "load", "differs in", "A", "B", "tok/s A ÷ B", "TTFT p50 A ÷ B"], rows)


def trials_table(report: BenchReport) -> str:
    if trial_count(report.results) < 2:
        return ""
    return _table(["workload", "load", "system", "out tok/s by trial", "median", "max ÷ min", "% of roofline by trial"],
                  spread_rows(report.results))


def plumbing_table(report: BenchReport) -> str:
    p = report.plumbing
    if p is None:
        return ""
    if p.error:
        return f"Plumbing figure failed: {p.error[:300]}"
    return _table(["streams", "ok/total", "streamed tok/s", "TTFT p50 cluster ms", "TTFT p50 in-process ms",
                   "cluster adds ms"],
                  [[str(p.streams), f"{p.requests - p.errors}/{p.requests}", _num(p.tokens_per_s),
                    _num(p.ttft_cluster_ms_p50), _num(p.ttft_in_process_ms_p50), _num(p.ttft_overhead_ms)]])


def _rates_section(report: BenchReport) -> str:
    if not report.matmul_rate_samples:
        return "not measured"
    text = f"{_mean_rates_line(report)}; at the start: {_rates_line(report.matmul_flops_per_s)}"
    if report.matmul_flops_per_s_after:
        text += f"; measured again at the end: {_rates_line(report.matmul_flops_per_s_after)}"
    return text


def _mean_rates_line(report: BenchReport) -> str:
    """The rates the roofline uses: each dtype's mean over its measurements, with their range."""
    parts = []
    for dtype, samples in report.matmul_rate_samples.items():
        mean = report.mean_matmul_rates(dtype)
        figures = ", ".join(
            f"M={rows}: {rate / 1e9:.1f} ({min(s[rows] for s in samples if rows in s) / 1e9:.1f}–"
            f"{max(s[rows] for s in samples if rows in s) / 1e9:.1f})" for rows, rate in sorted(mean.items()))
        parts.append(f"{dtype} GFLOP/s, mean of {len(samples)} measurements, at {figures}")
    return "; ".join(parts) if parts else "not measured"


def _rates_line(measured: dict[str, dict[int, float]]) -> str:
    parts = []
    for dtype, rates in measured.items():
        figures = ", ".join(f"M={rows}: {rate / 1e9:.1f}" for rows, rate in sorted(rates.items()))
        parts.append(f"{dtype} GFLOP/s at {figures}")
    return "; ".join(parts) if parts else "not measured"


def markdown(report: BenchReport, json_path: Path | None, png_path: Path | None) -> str:
    model = report.model
    workloads = sorted({(r.run, r.workload_description) for r in report.results})
    sections = [
        f"## {report.started_at[:10]}: `{report.config['preset']}` preset",
        "",
        f"- Command: `{report.command}`",
        *([f"- Code: `{report.code}`"] if report.code else []),
        f"- Machine: {machine.one_line(report.machine)}",
        f"- Model: {model['name']} ({model['architecture']}, {model['parameters'] / 1e6:.1f} M parameters "
        f"in linears and lm_head), dtypes {', '.join(report.config['dtypes'])}",
        f"- Started {report.started_at}, finished {report.finished_at}",
        f"- Matmul rates (roofline): {_rates_section(report)}",
        "- Runs: " + "; ".join(f"`{key}`: {description}" for key, description in workloads),
    ]
    if json_path:
        sections.append(f"- All figures: `{json_path}`" + (f", plot `{png_path}`" if png_path else ""))
    sections += [f"- Note: {note}" for note in report.notes]
    sections += ["", "### Summary", "", summary_table(report), "", "### Details", "", details_table(report)]
    comparison = comparison_table(report)
    if comparison:
        sections += ["", "### Ferrum variants compared", "", comparison]
    trials = trials_table(report)
    if trials:
        sections += ["", f"### Trials ({trial_count(report.results)}, systems taking turns)", "", trials]
    plumbing = plumbing_table(report)
    if plumbing:
        sections += ["", "### Plumbing (tiny model, float32, 1 worker)", "", plumbing]
    return "\n".join(sections) + "\n"


def append_to_docs(path: Path, section: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.write_text(existing.rstrip("\n") + "\n\n" + section, encoding="utf-8")
