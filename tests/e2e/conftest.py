"""One cluster (redis, scheduler, worker, gateway as separate processes) for the end-to-end tests,
driven with the official `openai` client exactly as a user would."""

from __future__ import annotations

import time
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV

API_KEY = "test-key-e2e"


@pytest.fixture(scope="package")
def cluster(tiny_llama_dir):
    spec = WorkerSpec(str(tiny_llama_dir), model_name="tiny-llama", env=WORKER_ENV)
    with LocalCluster([spec], env={"FERRUM_INFER_API_KEY": API_KEY}) as c:
        yield c


@pytest.fixture
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture
def async_client(cluster) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cluster.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def scrape(url: str) -> dict[str, float]:
    """Prometheus text from `url` as {sample name with labels: value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def wait_until(condition, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
