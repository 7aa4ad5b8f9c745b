"""What an operator sees: one trace per request across the three processes, JSON logs carrying the
request id, metrics that move as requests flow, and real /health values."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import scrape, wait_until

pytestmark = pytest.mark.cluster

MODEL = "tiny-llama"


def json_lines(path) -> list[dict]:
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def spans(cluster) -> list[dict]:
    found = []
    for proc in [cluster.gateway, cluster.scheduler, *cluster.workers]:
        found += [e for e in json_lines(proc.log_path) if "context" in e and "trace_id" in e["context"]]
    return found


@pytest.fixture(scope="module")
def traced_cluster(tiny_llama_dir):
    spec = WorkerSpec(str(tiny_llama_dir), MODEL, WORKER_ENV)
    with LocalCluster([spec], redis=True, env={"OTEL_TRACES_EXPORTER": "console"}) as cluster:
        yield cluster


def test_one_trace_spans_gateway_scheduler_and_worker(traced_cluster):
    client = openai.OpenAI(base_url=traced_cluster.base_url, api_key="x", max_retries=0)
    response = client.completions.with_raw_response.create(model=MODEL, prompt="Trace me", max_tokens=3)
    request_id = response.headers["x-request-id"]

    def request_spans():
        all_spans = spans(traced_cluster)
        mine = [sp for sp in all_spans if sp["name"] == "gateway.completions"
                and sp.get("attributes", {}).get("ferrum.request_id") == request_id]
        if not mine:
            return None
        trace_id = mine[0]["context"]["trace_id"]
        by_name = {}
        for span in all_spans:
            if span["context"]["trace_id"] == trace_id:
                by_name.setdefault(span["name"], []).append(span)
        return by_name if {"worker.decode", "scheduler.queue", "scheduler.generate"} <= set(by_name) else None

    by_name = wait_until(request_spans, what="spans of every process")
    gateway = by_name["gateway.completions"][-1]
    trace_id = gateway["context"]["trace_id"]
    generate = next(s for s in by_name["scheduler.generate"] if s["context"]["trace_id"] == trace_id)
    queue = next(s for s in by_name["scheduler.queue"] if s["context"]["trace_id"] == trace_id)
    prefill = next(s for s in by_name["worker.prefill"] if s["context"]["trace_id"] == trace_id)
    decode = next(s for s in by_name["worker.decode"] if s["context"]["trace_id"] == trace_id)
    assert generate["parent_id"] == gateway["context"]["span_id"]
    assert queue["parent_id"] == generate["context"]["span_id"]
    assert prefill["parent_id"] == generate["context"]["span_id"]
    assert decode["parent_id"] == prefill["context"]["span_id"]
    assert queue["attributes"]["ferrum.route_reason"]


def test_logs_are_json_with_request_ids(traced_cluster):
    client = openai.OpenAI(base_url=traced_cluster.base_url, api_key="x", max_retries=0)
    response = client.completions.with_raw_response.create(model=MODEL, prompt="Log me", max_tokens=2)
    request_id = response.headers["x-request-id"]
    logs = wait_until(lambda: [e for e in json_lines(traced_cluster.gateway.log_path)
                               if e.get("request_id") == request_id], what="the gateway's log line")
    assert {"timestamp", "level", "message"} <= set(logs[-1])
    assert "Log me" not in traced_cluster.gateway.log_path.read_text()  # prompts are never logged


def test_metrics_move_as_requests_flow(traced_cluster):
    client = openai.OpenAI(base_url=traced_cluster.base_url, api_key="x", max_retries=0)
    gateway_url = traced_cluster.gateway_url + "/metrics"
    worker_url = traced_cluster.metrics_url(traced_cluster.workers[0])
    scheduler_url = traced_cluster.metrics_url(traced_cluster.scheduler)
    ttft = f"ferrum_infer_time_to_first_token_seconds_count{{model={MODEL}}}"
    before_gateway, before_worker = scrape(gateway_url), scrape(worker_url)
    before_scheduler = scrape(scheduler_url)
    client.completions.create(model=MODEL, prompt="Count me", max_tokens=4, extra_body={"ignore_eos": True})
    client.completions.create(model=MODEL, prompt="Count me too", max_tokens=4, extra_body={"ignore_eos": True})
    after_gateway = scrape(gateway_url)
    assert after_gateway[ttft] - before_gateway.get(ttft, 0) == 2
    requests = [k for k in after_gateway if k.startswith("ferrum_infer_requests_total")
                and "endpoint=/v1/completions" in k and "status=200" in k]
    assert sum(after_gateway[k] - before_gateway.get(k, 0) for k in requests) == 2
    generated = "ferrum_infer_worker_generation_tokens_total{}"
    wait_until(lambda: scrape(worker_url)[generated] - before_worker.get(generated, 0) == 8,
               what="the worker's token counter")
    finished = f"ferrum_infer_scheduler_requests_total{{model={MODEL},status=length}}"
    # Counted when the scheduler's stream ends, which may be just after the client has its answer.
    wait_until(lambda: scrape(scheduler_url).get(finished, 0) - before_scheduler.get(finished, 0) == 2,
               what="the scheduler's finished-request counter")
    assert scrape(scheduler_url)[f"ferrum_infer_workers{{model={MODEL}}}"] == 1


def test_health_reports_real_values(traced_cluster):
    with urllib.request.urlopen(traced_cluster.gateway_url + "/health", timeout=5) as r:
        health = json.loads(r.read())
    assert health["workers"] == {MODEL: 1} and health["uptime_seconds"] > 0
    assert health["memory_usage_mb"] > 10
    for proc in [traced_cluster.scheduler, traced_cluster.workers[0]]:
        base = traced_cluster.metrics_url(proc).removesuffix("/metrics")
        with urllib.request.urlopen(base + "/ready", timeout=5) as r:
            assert json.loads(r.read()) == {"ready": True}
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            assert json.loads(r.read())["memory_usage_mb"] > 10
