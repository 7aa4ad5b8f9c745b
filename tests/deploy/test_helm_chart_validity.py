"""The chart is well-formed: it parses, lints, renders with Helm's engine, and every object it
renders for every supported combination of values is a valid Kubernetes object that refers only
to things that exist."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.chart_render import RenderError, lint, render
from tests.deploy.tools import CHART, known_settings

# Value sets that switch on every optional part of the chart, one scenario each.
SCENARIOS = {
    "defaults": {},
    "gpu-hpa-keys": {"worker": {"gpu": {"enabled": True}, "image": {"tag": "cuda"}},
                     "autoscaling": {"enabled": True, "provider": "hpa"},
                     "auth": {"apiKeys": ["key-1", "key-2"]}},
    "keda-external-redis": {"autoscaling": {"enabled": True, "provider": "keda"},
                            "redis": {"enabled": False},
                            "externalRedis": {"url": "redis://:secret@redis.example:6379/0"}},
    "existing-secrets-hub-model": {"auth": {"existingSecret": "my-keys"},
                                   "redis": {"enabled": False},
                                   "externalRedis": {"existingSecret": "my-redis"},
                                   "model": {"path": "Qwen/Qwen2.5-0.5B-Instruct",
                                             "hfTokenSecret": {"name": "hf"}},
                                   "hfCache": {"existingClaim": "hf-cache"},
                                   "imagePullSecrets": [{"name": "registry"}]},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True},
                               "grafanaDashboard": {"enabled": True}}},
    "mounted-model-no-pdb": {"model": {"path": "/models/llama", "existingClaim": "models",
                                       "demo": False},
                             "podDisruptionBudget": {"enabled": False}},
}
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schemas
CUSTOM_RESOURCES = {"ServiceMonitor", "ScaledObject"}  # CRDs: no upstream schema to check against


def _values_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _values_paths(value, prefix + (key,))


def test_chart_and_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "ferrum-infer"
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)


def test_every_value_a_template_reads_is_declared_in_values_yaml():
    declared = set(_values_paths(yaml.safe_load((CHART / "values.yaml").read_text())))
    used = set()
    for template in (CHART / "templates").iterdir():
        for match in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()):
            used.add((template.name, tuple(match.group(1).lstrip(".").split("."))))
    assert used, "no .Values references found: the scan is broken"
    undeclared = sorted(f"{name}: .Values.{'.'.join(path)}" for name, path in used if path not in declared)
    assert not undeclared, "values used by templates but missing from values.yaml:\n" + "\n".join(undeclared)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_strict_finds_nothing(scenario):
    assert lint(SCENARIOS[scenario]) == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_are_valid_kubernetes(scenario):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    rendered = render(SCENARIOS[scenario])
    assert rendered.objects
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_RESOURCES:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                            f"{error.message}")


def _pod_templates(rendered):
    for kind in ("Deployment", "StatefulSet"):
        for obj in rendered.of_kind(kind):
            yield obj, obj["spec"]["template"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_refer_only_to_things_that_exist(scenario):
    rendered = render(SCENARIOS[scenario])
    pods = list(_pod_templates(rendered))
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"].items()
        targets = [t for _, t in pods if selector <= t["metadata"]["labels"].items()]
        assert targets, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            named = {p["name"] for t in targets for c in t["spec"]["containers"] for p in c.get("ports", [])}
            assert port["targetPort"] in named, f"{service['metadata']['name']} targets a missing port"
    for owner, template in pods:
        assert owner["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in rendered.names("ConfigMap")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == owner["metadata"]["labels"]["app.kubernetes.io/instance"]:
                    secret = rendered.get("Secret", ref["name"])
                    assert ref["key"] in secret["data"], f"{ref['key']} missing from the chart's Secret"
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                http = container.get(probe, {}).get("httpGet")
                if http:
                    assert http["port"] in ports, f"{container['name']} {probe} probes a missing port"
    for scaler in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] in rendered.names("Deployment")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_ferrum_variable_set_is_one_the_processes_read(scenario):
    rendered = render(SCENARIOS[scenario])
    names = set()
    for config_map in rendered.of_kind("ConfigMap"):
        names |= {key for key in config_map.get("data", {}) if key.startswith("FERRUM_INFER_")}
    for _, template in _pod_templates(rendered):
        for container in template["spec"]["containers"]:
            names |= {env["name"] for env in container.get("env", []) if env["name"].startswith("FERRUM_INFER_")}
    assert names
    assert names <= known_settings(), f"unknown settings: {sorted(names - known_settings())}"


def test_disabling_redis_without_an_external_one_is_refused_with_a_reason():
    with pytest.raises(RenderError, match="externalRedis"):
        render({"redis": {"enabled": False}})


def test_an_unknown_autoscaling_provider_is_refused_with_a_reason():
    with pytest.raises(RenderError, match="hpa or keda"):
        render({"autoscaling": {"enabled": True, "provider": "vpa"}})
