"""Chaos tests run real clusters (real processes, real Redis) and break them on purpose.

A test that needs its own settings starts its own cluster. The others share one cluster of each
size, which `LocalCluster.revive` makes whole again before each of them: every worker start costs
seconds of imports on 2 cores, and a test that kills or drains a process leaves nothing else behind.
"""

from __future__ import annotations

import openai
import pytest

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV

MODEL = "tiny-llama"
DRAIN_GRACE_S = 60.0  # the shared clusters' drain grace: long enough for every stream a test drains


def make_cluster(model_dir, workers: int = 2, env: dict[str, str] | None = None,
                 worker_env: dict[str, str] | None = None, redis: bool = True) -> LocalCluster:
    specs = [WorkerSpec(str(model_dir), model_name=MODEL,
                        env={**WORKER_ENV, **(worker_env or {})}) for _ in range(workers)]
    return LocalCluster(specs, redis=redis, env=env)


def client_for(cluster: LocalCluster, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=timeout)


def uninterrupted(client: openai.OpenAI, prompt: str, max_tokens: int) -> str:
    """The greedy text of an undisturbed run through the cluster (EOS ignored): what a disturbed
    run must reproduce exactly."""
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text


def _shared(model_dir, workers: int):
    env = {"FERRUM_INFER_DRAIN_GRACE_S": str(DRAIN_GRACE_S)}
    with make_cluster(model_dir, workers=workers, env=env) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def _one_worker(tiny_llama_dir):
    yield from _shared(tiny_llama_dir, workers=1)


@pytest.fixture(scope="package")
def _two_workers(tiny_llama_dir):
    yield from _shared(tiny_llama_dir, workers=2)


@pytest.fixture
def one_worker_cluster(_one_worker) -> LocalCluster:
    """Redis, scheduler, gateway and one worker, whole; shared with other chaos tests."""
    _one_worker.revive()
    return _one_worker


@pytest.fixture
def two_worker_cluster(_two_workers) -> LocalCluster:
    """Redis, scheduler, gateway and two workers, whole; shared with other chaos tests."""
    _two_workers.revive()
    return _two_workers
