"""A client that disconnects mid-stream stops the work on the worker."""

from __future__ import annotations

from tests.e2e.conftest import scrape, wait_until

MODEL = "tiny-llama"


def worker_metric(cluster, name: str) -> float:
    return scrape(cluster.metrics_url(cluster.workers[0])).get(name + "{}", 0.0)


def generated_tokens(cluster) -> float:
    return worker_metric(cluster, "ferrum_infer_worker_generation_tokens_total")


def test_disconnect_aborts_on_the_worker(client, cluster):
    before = generated_tokens(cluster)
    aborts_before = worker_metric(cluster, "ferrum_infer_worker_aborted_requests_total")
    max_tokens = 400
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=max_tokens,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    received = 0
    for chunk in stream:
        received += 1
        if received == 3:
            break
    stream.close()
    wait_until(lambda: worker_metric(cluster, "ferrum_infer_worker_aborted_requests_total") == aborts_before + 1,
               what="the abort to reach the worker")
    wait_until(lambda: cluster.status().workers[0].stats.running == 0, what="the worker to drop the request")
    after_abort = generated_tokens(cluster)
    assert after_abort - before < max_tokens
    # nothing runs any more: a fresh request completes normally and only its own tokens are added
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5
    assert generated_tokens(cluster) - after_abort == 5
