"""A burst far past capacity: every request gets a full answer or a 429 with Retry-After, nothing
dies, and the cluster serves normally right after. Deadlines abort upstream work."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.chaos.conftest import MODEL, client_for, make_cluster
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.cluster


def worker_memory_mb(cluster) -> float:
    url = cluster.metrics_url(cluster.workers[0]).removesuffix("/metrics") + "/health"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["memory_usage_mb"]


def test_burst_ten_times_capacity(tiny_llama_dir):
    env = {"FERRUM_INFER_MAX_QUEUE": "4"}
    worker_env = {"FERRUM_INFER_MAX_NUM_SEQS": "2"}
    with make_cluster(tiny_llama_dir, workers=1, env=env, worker_env=worker_env) as cluster:
        client = client_for(cluster)
        memory_before = worker_memory_mb(cluster)

        def one(i: int):
            try:
                r = client.completions.create(model=MODEL, prompt=f"Request {i} says", max_tokens=30,
                                              temperature=0, extra_body={"ignore_eos": True})
                return r.usage.completion_tokens
            except openai.RateLimitError as exc:
                return exc.response.headers.get("retry-after")

        with ThreadPoolExecutor(max_workers=60) as pool:
            outcomes = list(pool.map(one, range(60)))
        served = [o for o in outcomes if isinstance(o, int)]
        limited = [o for o in outcomes if not isinstance(o, int)]
        assert served and limited, outcomes
        assert all(tokens == 30 for tokens in served)
        assert all(retry_after and int(retry_after) >= 1 for retry_after in limited)
        for proc in [cluster.scheduler, cluster.gateway, *cluster.workers]:
            assert proc.alive(), proc.name
        wait_until(lambda: cluster.status().queued == 0 and cluster.status().workers[0].stats.running == 0,
                   what="queue and running to return to zero")
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).usage.completion_tokens > 0
        # bounded: the refused requests left nothing behind (a generous margin for allocator noise)
        assert worker_memory_mb(cluster) < memory_before + 256


def test_request_deadline_aborts_upstream(tiny_llama_dir):
    env = {"FERRUM_INFER_REQUEST_TIMEOUT_S": "0.3"}
    with make_cluster(tiny_llama_dir, workers=1, env=env) as cluster:
        client = client_for(cluster)
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=1000,
                                      extra_body={"ignore_eos": True})
        assert err.value.status_code in (408, 504) and "0.3" in str(err.value)
        wait_until(lambda: cluster.status().workers[0].stats.running == 0, what="the worker to drop the request")
