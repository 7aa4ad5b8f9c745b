"""One short `python -m tests.bench` run on the tiny model: every system, the roofline and the
plumbing figure; the report must be filled with real, consistent values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.roofline import PREFILL_ROWS
from tests.bench.runner import REPO_ROOT

pytestmark = pytest.mark.cluster

REQUESTS, PROMPT_LEN, OUTPUT_LEN = 4, 32, 8


@pytest.fixture(scope="module")
def bench_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    docs = out / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Results\n")
    command = [sys.executable, "-m", "tests.bench", "--preset", "quick", "--model-dir", str(tiny_llama_dir),
               "--plumbing-model-dir", str(tiny_llama_dir), "--concurrency", "1,4",
               "--num-requests", str(REQUESTS), "--input-len", str(PROMPT_LEN), "--output-len", str(OUTPUT_LEN),
               "--plumbing-streams", "16", "--plumbing-requests", "32", "--plumbing-output-len", "8",
               "--plumbing-ttft-requests", "4", "--out-dir", str(out), "--docs", str(docs)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"bench failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    [json_path] = out.glob("bench-*.json")
    return json.loads(json_path.read_text()), done.stdout, docs.read_text(), out


def test_every_system_served_every_request_with_the_exact_lengths(bench_run):
    report, _, _, _ = bench_run
    kinds = {(r["kind"], r["run"]) for r in report["results"]}
    assert kinds == {(k, run) for k in ("ferrum", "peer", "static") for run in ("random c=1", "random c=4")}
    for result in report["results"]:
        m = result["metrics"]
        assert result["error"] == "" and m["errors"] == 0, result
        assert m["output_tokens"] == REQUESTS * OUTPUT_LEN, f"{result['system']}: output lengths not forced"
        assert m["prompt_tokens"] == REQUESTS * PROMPT_LEN, f"{result['system']}: prompt tokens differ"
        assert m["output_tokens_per_s"] > 0 and m["requests_per_s"] > 0
        assert 0 < m["ttft_ms"]["p50"] <= m["ttft_ms"]["p95"] <= m["ttft_ms"]["p99"]
        assert 0 < m["itl_ms"]["p50"] <= m["itl_ms"]["p95"]
        assert 0 < m["e2e_s"]["p50"] <= m["e2e_s"]["p95"] < m["duration_s"] + 1e-9
        assert result["roofline_pct"] > 0


def test_ferrum_reports_cached_tokens_and_static_its_forward_pass(bench_run):
    report, _, _, _ = bench_run
    for result in report["results"]:
        if result["kind"] == "ferrum":
            assert result["metrics"]["cached_share"] is not None
        if result["kind"] == "static":
            assert result["forward_ms"] > 0


def test_roofline_rates_and_plumbing_figure_are_measured(bench_run):
    report, _, _, _ = bench_run
    rates = report["matmul_flops_per_s"]["float32"]
    rows = {"1", "4", str(PREFILL_ROWS)}  # each concurrency's decode batch, and prompt processing
    assert set(rates) == rows and all(rate > 0 for rate in rates.values())
    for result in report["results"]:  # a sample just before each system ran, in the roofline's mean
        assert set(result["matmul_rates"]) == rows, result["system"]
        assert result["matmul_rates"] in report["matmul_rate_samples"]["float32"]
        assert result["roofline_pct"] > 0
    systems_run = {(result["system"], result["trial"]) for result in report["results"]}
    assert len(report["matmul_rate_samples"]["float32"]) == 2 + len(systems_run)  # start, each system, end
    plumbing = report["plumbing"]
    assert plumbing["error"] == "" and plumbing["errors"] == 0 and plumbing["requests"] == 32
    assert plumbing["tokens_per_s"] > 0
    assert plumbing["ttft_cluster_ms_p50"] > 0 and plumbing["ttft_in_process_ms_p50"] > 0
    assert plumbing["ttft_overhead_ms"] == pytest.approx(
        plumbing["ttft_cluster_ms_p50"] - plumbing["ttft_in_process_ms_p50"])


def test_tables_are_printed_appended_to_the_docs_and_plotted(bench_run):
    report, stdout, docs, out = bench_run
    assert "### Summary" in stdout and "### Plumbing" in stdout and report["command"] in stdout
    ferrum_rows = [line for line in stdout.splitlines() if line.startswith("| random | c=4 | ferrum")]
    assert len(ferrum_rows) == 2 and all(line.count("×") >= 3 for line in ferrum_rows[:1])
    assert docs.startswith("# Benchmarks\n\n## Results\n") and docs.rstrip().endswith(stdout.rstrip())
    [png] = out.glob("bench-*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(report["model"]["dir"]).is_dir()
