"""Two workers serving different models: both are listed, and each gets only its own traffic."""

from __future__ import annotations

import openai
import pytest

from services.local_cluster import LocalCluster, WorkerSpec
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import scrape

pytestmark = pytest.mark.cluster


def test_each_model_is_listed_and_served_by_its_own_worker(tiny_llama_dir, tiny_qwen2_dir):
    specs = [WorkerSpec(str(tiny_llama_dir), "llama-model", WORKER_ENV),
             WorkerSpec(str(tiny_qwen2_dir), "qwen2-model", WORKER_ENV)]
    with LocalCluster(specs, redis=False) as cluster:
        client = openai.OpenAI(base_url=cluster.base_url, api_key="x", max_retries=0)
        assert sorted(m.id for m in client.models.list().data) == ["llama-model", "qwen2-model"]
        for _ in range(2):
            client.completions.create(model="llama-model", prompt="Hello", max_tokens=2)
        client.chat.completions.create(model="qwen2-model", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2)
        served = [sum(v for k, v in scrape(cluster.metrics_url(w)).items()
                      if k.startswith("ferrum_infer_worker_requests_total")) for w in cluster.workers]
        assert served == [2, 1]
