"""Models list, health, metrics and the OpenAPI document as clients and operators read them."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from gateway.scheduler_client import SchedulerError
from tests.unit.test_gateway_support import (  # noqa: F401  (bundle: fixture)
    MODEL,
    FakeScheduler,
    bundle,
    outputs,
    start_gateway,
)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_models_are_listed_in_openai_format(bundle):
    client = await start_gateway(FakeScheduler(bundle))
    try:
        listing = await (await client.get("/v1/models")).json()
        one = await client.get(f"/v1/models/{MODEL}")
        missing = await client.get("/v1/models/other")
        one_body = await one.json()
    finally:
        await client.close()
    assert listing == {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1700000000,
                                                    "owned_by": "ferrum-infer", "max_model_len": bundle.max_model_len}]}
    assert one.status == 200 and one_body == listing["data"][0]
    assert missing.status == 404


async def test_health_reports_cluster_and_gateway_figures(bundle):
    fake = FakeScheduler(bundle)
    client = await start_gateway(fake)
    try:
        await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
        healthy = await client.get("/health")
        body = await healthy.json()
        fake.cluster = dataclasses.replace(fake.cluster, draining=True)
        draining = await client.get("/health")
        draining_body = await draining.json()
        fake.cluster = SchedulerError("UNAVAILABLE", "connection refused")
        degraded = await client.get("/health")
        degraded_body = await degraded.json()
    finally:
        await client.close()
    assert healthy.status == 200 and body["status"] == "ok"
    assert body["total_requests"] == 1 and body["workers"] == {MODEL: 1}
    assert body["cache_hit_rate"] == 0.25 and body["memory_usage_mb"] > 1 and body["uptime_seconds"] >= 0
    assert draining.status == 503 and draining_body["status"] == "draining"
    assert degraded.status == 503 and degraded_body["status"] == "degraded"
    assert degraded_body["total_requests"] == 1


async def test_metrics_move_as_requests_flow(bundle):
    fake = FakeScheduler(bundle, lambda r: outputs(r.request_id, [454, 1043, 1121], finish="stop"))
    client = await start_gateway(fake)
    try:
        for _ in range(2):
            ok = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
            assert ok.status == 200
        await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": 9})
        await client.post("/v1/completions", json={"model": "secret-probe", "prompt": "x"})
        response = await client.get("/metrics")
        text = await response.text()
    finally:
        await client.close()
    assert response.headers["Content-Type"].startswith("text/plain")
    values = samples(text)
    endpoint = "/v1/completions"
    assert values[("ferrum_infer_requests_total", (("endpoint", endpoint), ("model", MODEL), ("status", "200")))] == 2
    assert values[("ferrum_infer_requests_total", (("endpoint", endpoint), ("model", ""), ("status", "400")))] == 1
    assert values[("ferrum_infer_requests_total", (("endpoint", endpoint), ("model", ""), ("status", "404")))] == 1
    assert "secret-probe" not in text  # client-chosen names never become label values
    assert values[("ferrum_infer_generation_tokens_total", (("model", MODEL),))] == 6
    assert values[("ferrum_infer_time_to_first_token_seconds_count", (("model", MODEL),))] == 2
    assert values[("ferrum_infer_inter_token_latency_seconds_count", (("model", MODEL),))] == 4
    assert values[("ferrum_infer_request_duration_ms_count", (("endpoint", endpoint), ("model", MODEL)))] == 2
    assert values[("ferrum_infer_memory_usage_bytes", ())] > 0


async def test_openapi_document_describes_the_endpoints_and_request_schemas(bundle):
    client = await start_gateway(FakeScheduler(bundle))
    try:
        document = await (await client.get("/openapi.json")).json()
        ping = await client.get("/ping")
    finally:
        await client.close()
    assert ping.status == 200
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models",
            "/health"} <= set(document["paths"])
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
    body_ref = document["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_ref == {"$ref": "#/components/schemas/CompletionRequest"}
