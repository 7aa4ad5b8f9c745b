"""Restarts: the scheduler comes back and everyone reconnects; SIGTERM drains each process; a rolling
restart of workers drops no request, and a stopped cluster exits cleanly."""

from __future__ import annotations

import signal
import threading

import pytest

from tests.chaos.conftest import MODEL, client_for, make_cluster, uninterrupted
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.cluster


def test_scheduler_restart_is_survived(one_worker_cluster):
    cluster = one_worker_cluster
    client = client_for(cluster)
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices
    cluster.scheduler.stop()
    # A request sent while no scheduler answers is retried by the gateway until one does.
    result = {}
    pending = threading.Thread(target=lambda: result.setdefault(
        "r", client.completions.create(model=MODEL, prompt="Hello", max_tokens=3,
                                       extra_body={"ignore_eos": True})))
    pending.start()
    cluster.scheduler.start()
    pending.join(timeout=60)
    assert result["r"].usage.completion_tokens == 3
    cluster.wait_for_workers(1)
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices


def test_worker_sigterm_finishes_running_streams(one_worker_cluster):
    cluster = one_worker_cluster
    client = client_for(cluster)
    expected = uninterrupted(client, "Once upon a time", 300)
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=300,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    text = next(chunks).choices[0].text
    cluster.workers[0].signal(signal.SIGTERM)
    text += "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    cluster.workers[0].popen.wait(timeout=30)
    assert cluster.workers[0].popen.returncode == 0


def test_gateway_sigterm_finishes_open_streams(one_worker_cluster):
    cluster = one_worker_cluster
    client = client_for(cluster)
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=300,
                                       temperature=0, stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    cluster.gateway.signal(signal.SIGTERM)
    rest = list(chunks)
    assert rest[-1].usage.completion_tokens == 300
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    cluster.gateway.popen.wait(timeout=30)
    assert cluster.gateway.popen.returncode == 0


def test_rolling_restart_of_workers_drops_nothing(tiny_llama_dir):
    with make_cluster(tiny_llama_dir, workers=2) as cluster:
        client = client_for(cluster)
        stop = threading.Event()
        outcomes: list[object] = []

        def traffic() -> None:
            while not stop.is_set():
                try:
                    r = client.completions.create(model=MODEL, prompt="Rolling", max_tokens=20,
                                                  extra_body={"ignore_eos": True})
                    outcomes.append(r.usage.completion_tokens)
                except Exception as exc:  # collected and asserted on below
                    outcomes.append(exc)

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for t in threads:
            t.start()
        for index in range(2):
            cluster.restart_worker(index)  # SIGTERM: drain, then exit; then start again
            cluster.wait_for_workers(2)
        wait_until(lambda: len(outcomes) >= 10, what="traffic after the restarts")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert all(o == 20 for o in outcomes), [o for o in outcomes if o != 20]
    # Stopped (one SIGTERM each, then a wait): every process drained and exited cleanly. A second
    # SIGTERM during the gateway's drain used to end it in an aiohttp traceback and exit status 1.
    for proc in [cluster.gateway, cluster.scheduler, *cluster.workers]:
        assert proc.popen.returncode == 0, f"{proc.name}: {proc.log_tail()}"
        assert "Traceback" not in proc.log_path.read_text(errors="replace"), f"{proc.name}: {proc.log_tail()}"
