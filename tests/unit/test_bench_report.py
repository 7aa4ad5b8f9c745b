"""The Markdown report: ratios side by side on the same run and dtype, variants compared, docs appended."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from tests.bench.report import append_to_docs, markdown
from tests.bench.results import BenchReport, PlumbingResult, RunResult
from tests.bench.roofline import largest_rate_change
from tests.bench.stats import RunMetrics
from tests.bench.systems import SystemVariant


def _metrics(tok_s: float, ttft_ms: float) -> RunMetrics:
    return RunMetrics(requests=8, errors=0, cut=0, duration_s=10.0, requests_per_s=0.8, output_tokens_per_s=tok_s,
                      prompt_tokens=2048, output_tokens=int(tok_s * 10),
                      ttft_ms={"p50": ttft_ms, "p95": ttft_ms * 2, "p99": ttft_ms * 3},
                      itl_ms={"p50": 5.0, "p95": 9.0}, e2e_s={"p50": 1.0, "p95": 2.0}, cached_share=None,
                      first_errors=[])


def _result(variant: SystemVariant, run: str, tok_s: float, ttft_ms: float, trial: int = 0) -> RunResult:
    concurrency = int(run.split("=")[1])
    return RunResult(system=variant.label, kind=variant.kind, dtype=variant.dtype, variant=asdict(variant), run=run,
                     workload="random", workload_description="random in=256 out=128 n=8", concurrency=concurrency,
                     rate=None, ideal_cached_share=0.0, metrics=_metrics(tok_s, ttft_ms),
                     roofline_tokens_per_s=400.0, forward_ms=20.0 if variant.kind == "static" else None, trial=trial)


def _report() -> BenchReport:
    fp32, bf16 = SystemVariant("ferrum", "float32"), SystemVariant("ferrum", "bfloat16")
    peer, static = SystemVariant("peer", "float32"), SystemVariant("static", "float32")
    results = [_result(fp32, "random c=1", 50.0, 30.0), _result(fp32, "random c=8", 200.0, 40.0),
               _result(bf16, "random c=8", 500.0, 20.0), _result(peer, "random c=8", 40.0, 160.0),
               _result(static, "random c=8", 100.0, 80.0), _result(static, "random c=1", 25.0, 24.0)]
    return BenchReport(started_at="2030-01-02T03:04:05+00:00", finished_at="2030-01-02T03:14:05+00:00",
                       command="python -m tests.bench --preset default",
                       machine={"cpu": "Test CPU", "cores": 2, "memory_gib": 24, "torch": "2.13.0",
                                "transformers": "5.23.0", "python": "3.11.7"},
                       config={"preset": "default", "dtypes": ["float32", "bfloat16"]},
                       model={"name": "bench-135m", "architecture": "LlamaForCausalLM", "parameters": 134.5e6},
                       matmul_flops_per_s={"float32": {8: 4e10, 512: 1e11}}, results=results,
                       plumbing=PlumbingResult(64, 128, 0, 900.0, 25.0, 10.0))


def _row(text: str, prefix: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(prefix)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_summary_puts_ferrum_beside_peer_and_static_of_the_same_run_and_dtype():
    text = markdown(_report(), None, None)
    summary = text.split("### Details")[0]
    row = _row(summary, "| random | c=8 | ferrum fp32")
    assert row[3:] == ["200.0", "40", "5.00×", "2.00×", "0.25×", "50.0"]
    bf16 = _row(summary, "| random | c=8 | ferrum bf16")
    assert bf16[5:8] == ["–", "–", "–"], "no bf16 peer or static ran: no ratio"
    peer = _row(summary, "| random | c=8 | tf-serve-cb fp32")
    assert peer[5:8] == ["", "", ""]


def test_details_relate_ttft_at_concurrency_one_to_one_forward_pass():
    details = markdown(_report(), None, None).split("### Details")[1].split("###")[0]
    assert _row(details, "| random | c=1 | ferrum fp32")[-1] == "1.50×"
    assert _row(details, "| random | c=8 | ferrum fp32")[-1] == "–"


def test_variants_differing_in_one_setting_are_compared_and_plumbing_reported():
    text = markdown(_report(), None, None)
    compared = _row(text.split("### Ferrum variants compared")[1], "| random | c=8 | dtype")
    assert compared[3:] == ["ferrum fp32 w1 cache_aware", "ferrum bf16 w1 cache_aware", "0.40×", "2.00×"]
    plumbing = _row(text.split("### Plumbing")[1], "| 64 |")
    assert plumbing == ["64", "128/128", "900.0", "25.0", "10.0", "15.0"]
    assert "python -m tests.bench --preset default" in text and "Test CPU, 2 cores" in text


def test_sections_are_appended_after_what_the_docs_already_hold(tmp_path):
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\nMethod.\n\n## Results\n")
    append_to_docs(docs, "## run one\n")
    append_to_docs(docs, "## run two\n")
    assert docs.read_text() == "# Benchmarks\n\nMethod.\n\n## Results\n\n## run one\n\n## run two\n"


def test_the_roofline_rates_are_the_mean_of_every_measurement_shown_with_the_first_and_last():
    report = _report()
    report.matmul_flops_per_s_after = {"float32": {8: 2e10, 512: 1e11}}
    report.matmul_rate_samples = {"float32": [{8: 4e10, 512: 1e11}, {8: 3e10, 512: 1.3e11}, {8: 2e10, 512: 1e11}]}
    [line] = [line for line in markdown(report, None, None).splitlines() if line.startswith("- Matmul rates")]
    assert line == ("- Matmul rates (roofline): float32 GFLOP/s, mean of 3 measurements, at M=8: 30.0 (20.0–40.0), "
                    "M=512: 110.0 (100.0–130.0); at the start: float32 GFLOP/s at M=8: 40.0, M=512: 100.0; "
                    "measured again at the end: float32 GFLOP/s at M=8: 20.0, M=512: 100.0")
    report.matmul_rate_samples = {}
    assert "- Matmul rates (roofline): not measured" in markdown(report, None, None).splitlines()


def test_mean_rates_average_each_row_count_over_the_samples_that_measured_it():
    from tests.bench.roofline import mean_rates

    assert mean_rates([{32: 300.0, 512: 700.0}, {32: 420.0}, {32: 330.0, 512: 800.0}]) == {32: 350.0, 512: 750.0}
    assert mean_rates([]) == {}


def test_largest_rate_change_compares_only_rates_measured_both_times():
    before = {"float32": {8: 4e10, 512: 1e11}, "bfloat16": {8: 1e11}}
    assert largest_rate_change(before, {"float32": {8: 2e10, 512: 1.1e11}}) == 0.5
    assert largest_rate_change(before, {"float32": {8: 4.4e10}, "bfloat16": {8: 9e10}}) == pytest.approx(0.1)
    assert largest_rate_change(before, {}) == 0.0


def _three_trials() -> BenchReport:
    """Cache on/off and static, three trials; the host slows down in trial 1 for every system."""
    on, off = SystemVariant("ferrum", "float32"), SystemVariant("ferrum", "float32", prefix_cache=False)
    static = SystemVariant("static", "float32")
    report = _report()
    report.results = [
        _result(on, "random c=8", 200.0, 40.0, 0), _result(off, "random c=8", 204.0, 40.0, 0),
        _result(static, "random c=8", 100.0, 80.0, 0),
        _result(on, "random c=8", 100.0, 80.0, 1), _result(off, "random c=8", 98.0, 60.0, 1),
        _result(static, "random c=8", 50.0, 90.0, 1),
        _result(on, "random c=8", 190.0, 38.0, 2), _result(off, "random c=8", 200.0, 40.0, 2),
        _result(static, "random c=8", 100.0, 70.0, 2),
    ]
    return report


def test_repeated_trials_show_each_systems_median_trial_and_within_trial_ratios():
    text = markdown(_three_trials(), None, None)
    summary = text.split("### Details")[0]
    on = _row(summary, "| random | c=8 | ferrum fp32 w1 cache_aware |")
    assert on[3:5] == ["190.0", "38"], "the median trial by throughput, with its own TTFT"
    # within-trial ratios 2.00, 2.00, 1.90: their median and range, not 190 / 100 from different trials
    assert on[6] == "2.00× (1.90–2.00)"
    compared = _row(text.split("### Ferrum variants compared")[1], "| random | c=8 | prefix_cache")
    assert compared[5] == "0.98× (0.95–1.02)"
    trials = text.split("### Trials (3, systems taking turns)")[1]
    assert _row(trials, "| random | c=8 | ferrum fp32 w1 cache_aware |")[3:] == [
        "200.0 / 100.0 / 190.0", "190.0", "2.00×", "50.0 / 25.0 / 47.5"]  # roofline 400 tok/s each


def test_a_single_trial_prints_plain_ratios_and_no_trials_table():
    text = markdown(_report(), None, None)
    assert "### Trials" not in text
    assert "(" not in _row(text.split("### Details")[0], "| random | c=8 | ferrum fp32")[5]


def test_the_measured_commit_is_named_and_uncommitted_changes_are_flagged(tmp_path):
    import subprocess

    from tests.bench.code_version import code_version

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert code_version(tmp_path) == "unknown (not a git checkout)"
    git("init", "-q")
    (tmp_path / "engine.py").write_text("fast = False\n")
    git("add", "engine.py")
    git("commit", "-qm", "first")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                            text=True).stdout.strip()
    assert code_version(tmp_path) == commit
    (tmp_path / "engine.py").write_text("fast = True\n")
    assert code_version(tmp_path) == f"{commit} with uncommitted changes"
    report = _report()
    report.code = code_version(tmp_path)
    assert f"- Code: `{commit} with uncommitted changes`" in markdown(report, None, None).splitlines()
