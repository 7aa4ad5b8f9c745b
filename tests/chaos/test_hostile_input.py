"""Malformed and hostile requests: each gets a 4xx OpenAI error naming the field, none reaches a
worker, and the cluster keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.chaos.conftest import MODEL
from tests.e2e.conftest import scrape

pytestmark = pytest.mark.cluster

BIG = 10**30


def post(cluster, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(cluster.gateway_url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


CASES = [
    (b"{not json", None),
    (b"[1, 2, 3]", None),
    (b'{"model": "tiny-llama", "prompt": "\xff\xfe"}', None),
    ({"model": MODEL, "prompt": 12}, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": BIG}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "temperature": -1}, "temperature"),
    ({"model": MODEL, "prompt": "hi", "n": 100000}, "n"),
    ({"model": MODEL, "prompt": "hi", "stop": ["x"] * 5000}, "stop"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": [[1, 2, 10**9]]}, "prompt"),
    ({"model": MODEL, "prompt": [[-5]]}, "prompt"),
    ({"model": MODEL, "prompt": "hi", "top_k": -7}, "top_k"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 1000}, "logprobs"),
]


def test_hostile_requests_get_4xx_and_never_reach_a_worker(one_worker_cluster):
    cluster = one_worker_cluster
    worker_metrics = cluster.metrics_url(cluster.workers[0])
    before = scrape(worker_metrics).get("ferrum_infer_worker_prompt_tokens_total{}", 0)
    for body, param in CASES:
        status, error = post(cluster, "/v1/completions", body)
        assert 400 <= status < 500, (body, status, error)
        assert error["error"]["message"], body
        if param:
            assert param in (error["error"].get("param") or "") + error["error"]["message"], (body, error)
    # NaN cannot be written by json.dumps' default: send the literal token
    status, error = post(cluster, "/v1/completions", b'{"model": "tiny-llama", "prompt": "hi", "temperature": NaN}')
    assert status == 400 and "temperature" in json.dumps(error)
    status, error = post(cluster, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]})
    assert status == 400 and "messages" in json.dumps(error)
    assert scrape(worker_metrics).get("ferrum_infer_worker_prompt_tokens_total{}", 0) == before
    status, ok = post(cluster, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                                   "ignore_eos": True, "unknown_field": {"is": "ignored"}})
    assert status == 200 and ok["usage"]["completion_tokens"] == 2
