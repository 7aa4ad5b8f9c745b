"""What an operator gets from `helm install` with a given set of values (rendered by Helm)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.deploy.chart_render import RELEASE, render
from tests.deploy.tools import DASHBOARD


def _container(rendered, kind, name, container=None):
    spec = rendered.get(kind, f"{RELEASE}-{name}")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == (container or name))


def _env(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_defaults_run_the_three_processes_and_redis():
    rendered = render()
    assert {f"{RELEASE}-{c}" for c in ("gateway", "scheduler", "worker")} <= rendered.names("Deployment")
    assert rendered.names("StatefulSet") == {f"{RELEASE}-redis"}
    for process in ("gateway", "scheduler", "worker"):
        assert _container(rendered, "Deployment", process)["args"] == [process]
    scheduler = rendered.get("Deployment", f"{RELEASE}-scheduler")["spec"]
    assert scheduler["replicas"] == 1 and scheduler["strategy"]["type"] == "Recreate"


def test_workers_and_gateways_dial_the_scheduler_service_it_listens_behind():
    rendered = render()
    config = rendered.get("ConfigMap", RELEASE)["data"]
    host, port = config["FERRUM_INFER_SCHEDULER_ADDR"].rsplit(":", 1)
    service = rendered.get("Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    scheduler = _container(rendered, "Deployment", "scheduler")
    assert _env(scheduler)["FERRUM_INFER_SCHEDULER_ADDR"] == f"0.0.0.0:{port}"
    redis_url = _env(scheduler)["FERRUM_INFER_REDIS_URL"]
    assert redis_url == f"redis://{RELEASE}-redis:6379/0"
    assert _env(_container(rendered, "Deployment", "worker"))["FERRUM_INFER_REDIS_URL"] == redis_url


def test_probes_use_each_process_health_endpoints():
    rendered = render()
    worker = _container(rendered, "Deployment", "worker")
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    assert _env(worker)["FERRUM_INFER_METRICS_PORT"] == str(worker["ports"][0]["containerPort"])
    gateway = _container(rendered, "Deployment", "gateway")
    assert (gateway["livenessProbe"]["httpGet"]["path"], gateway["readinessProbe"]["httpGet"]["path"]) == \
        ("/ping", "/health")
    scheduler = _container(rendered, "Deployment", "scheduler")
    assert scheduler["readinessProbe"]["grpc"]["port"] == 50051
    assert scheduler["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_demo_model_is_built_by_an_init_container_only_when_served():
    demo = render()
    init = demo.get("Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]["initContainers"]
    assert init[0]["args"] == ["worker.demo_model", "--out", "/models/ferrum-demo", "--preset", "demo"]
    assert demo.get("ConfigMap", RELEASE)["data"]["FERRUM_INFER_MODEL_NAME"] == "ferrum-demo"
    hub = render({"model": {"path": "Qwen/Qwen2.5-0.5B-Instruct"}})
    assert "initContainers" not in hub.get("Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    assert hub.get("ConfigMap", RELEASE)["data"]["FERRUM_INFER_MODEL_NAME"] == "Qwen2.5-0.5B-Instruct"


def test_gpu_workers_request_nvidia_gpus_and_run_on_cuda():
    rendered = render({"worker": {"gpu": {"enabled": True, "count": 2}, "image": {"tag": "cuda"}}})
    worker = _container(rendered, "Deployment", "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert worker["image"].endswith(":cuda")
    assert rendered.get("ConfigMap", RELEASE)["data"]["FERRUM_INFER_DEVICE"] == "cuda"
    for process in ("gateway", "scheduler"):
        container = _container(rendered, "Deployment", process)
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
        assert container["image"].endswith(":cpu")


def test_api_keys_reach_only_the_gateway_through_a_secret():
    rendered = render({"auth": {"apiKeys": ["key-1", "key-2"]}})
    secret = rendered.get("Secret", RELEASE)
    assert base64.b64decode(secret["data"]["FERRUM_INFER_API_KEYS"]).decode() == "key-1,key-2"
    gateway_keys = _env(_container(rendered, "Deployment", "gateway"))["FERRUM_INFER_API_KEYS"]
    assert gateway_keys == {"secretKeyRef": {"name": RELEASE, "key": "FERRUM_INFER_API_KEYS"}}
    for process in ("scheduler", "worker"):
        assert "FERRUM_INFER_API_KEYS" not in _env(_container(rendered, "Deployment", process))
    assert "key-1" not in json.dumps(rendered.of_kind("ConfigMap"))


def test_an_existing_key_secret_is_used_instead_of_creating_one():
    rendered = render({"auth": {"existingSecret": "my-keys", "existingSecretKey": "keys"}})
    assert "Secret" not in {o["kind"] for o in rendered.objects}
    assert _env(_container(rendered, "Deployment", "gateway"))["FERRUM_INFER_API_KEYS"] == \
        {"secretKeyRef": {"name": "my-keys", "key": "keys"}}


def test_external_redis_replaces_the_bundled_one_and_its_url_stays_secret():
    url = "redis://:pw@redis.example:6379/0"
    rendered = render({"redis": {"enabled": False}, "externalRedis": {"url": url}})
    assert not rendered.of_kind("StatefulSet")
    assert base64.b64decode(rendered.get("Secret", RELEASE)["data"]["FERRUM_INFER_REDIS_URL"]).decode() == url
    for process in ("scheduler", "worker"):
        assert _env(_container(rendered, "Deployment", process))["FERRUM_INFER_REDIS_URL"] == \
            {"secretKeyRef": {"name": RELEASE, "key": "FERRUM_INFER_REDIS_URL"}}
    assert "pw@" not in json.dumps(rendered.of_kind("ConfigMap") + rendered.of_kind("Deployment"))


def test_hpa_scales_workers_on_the_scheduler_queue_depth_of_the_served_model():
    rendered = render({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                                       "targetQueueDepthPerWorker": 3}})
    hpa = rendered.get("HorizontalPodAutoscaler", f"{RELEASE}-worker")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{RELEASE}-worker"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    metric = hpa["metrics"][0]["external"]
    assert metric["metric"]["name"] == "ferrum_infer_queue_depth"
    assert metric["metric"]["selector"]["matchLabels"] == {"model": "ferrum-demo"}
    assert metric["target"] == {"type": "AverageValue", "averageValue": "3"}
    assert "replicas" not in rendered.get("Deployment", f"{RELEASE}-worker")["spec"]


def test_keda_replaces_the_hpa_with_a_prometheus_scaled_object():
    rendered = render({"autoscaling": {"enabled": True, "provider": "keda"}})
    assert not rendered.of_kind("HorizontalPodAutoscaler")
    scaled = rendered.get("ScaledObject", f"{RELEASE}-worker")["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'sum(ferrum_infer_queue_depth{namespace="llm", model="ferrum-demo"})'
    assert trigger["metadata"]["threshold"] == "4"


def test_fixed_worker_count_without_autoscaling():
    rendered = render({"worker": {"replicaCount": 3}})
    assert rendered.get("Deployment", f"{RELEASE}-worker")["spec"]["replicas"] == 3
    assert not rendered.of_kind("HorizontalPodAutoscaler") and not rendered.of_kind("ScaledObject")


def test_disruption_budgets_keep_gateways_and_workers_serving_during_drains():
    rendered = render()
    budgets = {b["metadata"]["name"]: b["spec"] for b in rendered.of_kind("PodDisruptionBudget")}
    assert set(budgets) == {f"{RELEASE}-gateway", f"{RELEASE}-worker"}
    assert all(b["maxUnavailable"] == 1 for b in budgets.values())
    assert not render({"podDisruptionBudget": {"enabled": False}}).of_kind("PodDisruptionBudget")


def test_service_monitor_scrapes_every_process_metrics_port():
    rendered = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitor = rendered.get("ServiceMonitor", RELEASE)["spec"]
    ports = {e["port"] for e in monitor["endpoints"]}
    scraped = [s for s in rendered.of_kind("Service")
               if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped} == \
        {"gateway", "scheduler", "worker"}
    for service in scraped:
        assert ports & {p["name"] for p in service["spec"]["ports"]}
    assert not render().of_kind("ServiceMonitor")


def test_grafana_dashboard_config_map_carries_the_repository_dashboard():
    rendered = render({"metrics": {"grafanaDashboard": {"enabled": True}}})
    config_map = rendered.get("ConfigMap", f"{RELEASE}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["ferrum-infer-dashboard.json"]) == json.loads(DASHBOARD.read_text())


def test_pods_run_unprivileged():
    rendered = render()
    for obj in rendered.of_kind("Deployment") + rendered.of_kind("StatefulSet"):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_notes_tell_how_to_call_the_api():
    notes = render().notes
    if not notes:
        pytest.skip("this renderer (helm template) does not render NOTES.txt")
    assert f"port-forward svc/{RELEASE}-gateway 8080:80" in notes
    assert '"model": "ferrum-demo"' in notes and "/v1/chat/completions" in notes
    assert "no API key is configured" in notes
    keyed = render({"auth": {"apiKeys": ["k"]}}).notes
    assert "Authorization: Bearer $FERRUM_INFER_API_KEY" in keyed and f"get secret {RELEASE}" in keyed
    assert "no API key is configured" not in keyed
