"""The health checks the deployments rely on answer as they should against a real scheduler:
the image's HEALTHCHECK command (with the URL docker-compose.yml gives the scheduler) and the
gRPC health service that the Kubernetes readiness probe calls."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.tools import REPO

pytestmark = pytest.mark.cluster
dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="pip install dockerfile-parse")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_healthcheck(url: str) -> subprocess.CompletedProcess:
    """Run the Dockerfile's HEALTHCHECK command as the container would, with this interpreter."""
    instruction = next(i["value"] for i in dockerfile_parse.DockerfileParser(str(REPO / "Dockerfile")).structure
                       if i["instruction"] == "HEALTHCHECK")
    command = json.loads(instruction.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env={**os.environ, "HEALTHCHECK_URL": url},
                          capture_output=True, timeout=30)


def _compose_scheduler_health_path() -> str:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return urlsplit(compose["services"]["scheduler"]["environment"]["HEALTHCHECK_URL"]).path


@pytest.fixture
def scheduler():
    grpc_port, metrics_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRUM_INFER_")}
    env |= {"FERRUM_INFER_SCHEDULER_ADDR": f"127.0.0.1:{grpc_port}", "FERRUM_INFER_METRICS_PORT": str(metrics_port),
            "FERRUM_INFER_DRAIN_GRACE_S": "0"}
    process = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield process, grpc_port, metrics_port
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    process.stderr.close()


def test_healthchecks_follow_the_scheduler_from_start_to_stop(scheduler):
    process, grpc_port, metrics_port = scheduler
    url = f"http://127.0.0.1:{metrics_port}{_compose_scheduler_health_path()}"
    deadline = time.monotonic() + 30
    while _image_healthcheck(url).returncode != 0:
        assert process.poll() is None, f"scheduler exited: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the image healthcheck never passed against a running scheduler"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert _image_healthcheck(url).returncode != 0, "the healthcheck passes with nothing listening"
