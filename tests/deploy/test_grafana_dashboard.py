"""The Grafana dashboard is valid, shows what operators look at, and queries only metrics the
processes really export."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.tools import DASHBOARD, REPO

promql_parser = pytest.importorskip("promql_parser", reason="pip install promql-parser")
BOARD = json.loads(DASHBOARD.read_text())
PANELS = [p for p in BOARD["panels"] if p["type"] != "row"]
# Grafana substitutes these before Prometheus sees a query; stand-ins of the same syntax class.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*"}
REQUIRED_METRICS = {
    "ferrum_infer_requests_total", "ferrum_infer_request_duration_ms", "ferrum_infer_time_to_first_token_seconds",
    "ferrum_infer_inter_token_latency_seconds", "ferrum_infer_generation_tokens_total",
    "ferrum_infer_prompt_tokens_total", "ferrum_infer_queue_depth", "ferrum_infer_running_sequences",
    "ferrum_infer_kv_cache_usage_ratio", "ferrum_infer_cache_hit_rate", "ferrum_infer_workers",
}
SAMPLE_SUFFIXES = {"Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count"), "Gauge": ("",),
                   "Summary": ("_sum", "_count", "")}


def _queries() -> list[str]:
    queries = [t["expr"] for panel in PANELS for t in panel["targets"]]
    for placeholder, stand_in in GRAFANA_VARIABLES.items():
        queries = [q.replace(placeholder, stand_in) for q in queries]
    return queries


def _queried_metrics() -> set[str]:
    names = set()
    for query in _queries():
        promql_parser.walk(promql_parser.parse(query),
                           lambda node: names.add(node.name) if isinstance(node, promql_parser.VectorSelector) else None)
    return names


def _base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _exported_samples() -> set[str]:
    """Sample names the processes define, read from their source (no imports: they pull in torch)."""
    definition = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(ferrum_infer_\w+)\"")
    samples = set()
    for package in ("gateway", "scheduler", "worker", "services"):
        for source in (REPO / package).rglob("*.py"):
            for kind, name in definition.findall(source.read_text()):
                base = name.removesuffix("_total") if kind == "Counter" else name
                samples |= {base + suffix for suffix in SAMPLE_SUFFIXES[kind]}
    return samples


def test_every_query_is_valid_promql():
    for query in _queries():
        promql_parser.parse(query)


def test_dashboard_covers_latency_throughput_queue_cache_and_status():
    titles = {panel["title"] for panel in PANELS}
    assert {"Time to first token", "Inter-token latency", "Token throughput", "Queue and running sequences",
            "KV cache usage", "Prefix cache hit rate", "Requests by status"} <= titles
    queried = {_base_name(name) for name in _queried_metrics()}
    missing = {_base_name(name) for name in REQUIRED_METRICS} - queried
    assert not missing, f"no panel shows {sorted(missing)}"


def test_dashboard_queries_only_metrics_the_processes_export():
    exported = _exported_samples()
    assert exported, "found no metric definitions: the scan is broken"
    unexported = sorted(_queried_metrics() - exported)
    assert not unexported, f"the dashboard queries metrics no process exports: {unexported}"


def test_every_panel_reads_the_selected_data_source():
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], f"panel {panel['title']} has no query"
    variables = {v["name"]: v for v in BOARD["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["includeAll"]


def test_panels_do_not_overlap_on_the_grid():
    taken: dict[tuple[int, int], str] = {}
    for panel in BOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} runs off the 24-column grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
