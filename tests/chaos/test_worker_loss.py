"""SIGKILL a worker mid-generation: its streams continue on another worker, each token exactly once."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.chaos.conftest import MODEL, client_for, make_cluster, uninterrupted
from tests.e2e.conftest import scrape, wait_until

pytestmark = pytest.mark.cluster


def test_killed_worker_streams_continue_on_another_worker(two_worker_cluster):
    prompts = ["Once upon a time", "The history of the", "Permission is hereby granted", "In the beginning"]
    max_tokens = 400
    cluster = two_worker_cluster
    client = client_for(cluster)
    expected = [uninterrupted(client, prompt, max_tokens) for prompt in prompts]
    texts: dict[int, list[str]] = {i: [] for i in range(len(prompts))}
    started = threading.Barrier(len(prompts) + 1)
    errors = []

    def consume(i: int) -> None:
        try:
            stream = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=max_tokens,
                                               temperature=0, stream=True, extra_body={"ignore_eos": True})
            first = True
            for chunk in stream:
                texts[i].append(chunk.choices[0].text if chunk.choices else "")
                if first:
                    first = False
                    started.wait(timeout=60)
        except Exception as exc:  # reported below, with the test's own assertion
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    started.wait(timeout=60)
    requeued_key = f"ferrum_infer_requeued_requests_total{{model={MODEL}}}"
    requeued_before = scrape(cluster.metrics_url(cluster.scheduler)).get(requeued_key, 0)
    # Stats arrive every 0.25 s: a view from before the streams began shows every worker idle, and
    # the one killed then may hold none of them (the prompts were cached, so all may run on one).
    busiest = wait_until(lambda: max((w for w in cluster.status().workers if w.stats.running),
                                     key=lambda w: w.stats.running, default=None),
                         what="a worker to report the streams running")
    cluster.kill_worker(int(busiest.worker_id.removeprefix("worker-")))  # LocalCluster names them so
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert scrape(cluster.metrics_url(cluster.scheduler)).get(requeued_key, 0) > requeued_before
    for i, prompt in enumerate(prompts):
        assert "".join(texts[i]) == expected[i], prompt
    wait_until(lambda: cluster.status().queued == 0 and all(
        w.stats.running == 0 for w in cluster.status().workers), what="queues to drain")


def test_requests_fail_with_503_when_no_worker_returns(tiny_llama_dir):
    with make_cluster(tiny_llama_dir, workers=1, env={"FERRUM_INFER_WORKER_WAIT_S": "1"}) as cluster:
        client = client_for(cluster)
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
        cluster.kill_worker(0)
        wait_until(lambda: cluster.live_workers() == 0, what="the scheduler to notice the dead worker")
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
        assert err.value.status_code == 503 and "no worker" in str(err.value)
        cluster.restart_worker(0)
        cluster.wait_for_workers(1)
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
