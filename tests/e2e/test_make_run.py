"""`make run` itself: it serves, and a SIGTERM to make (as `kill` or a container stop sends it) stops
the whole cluster.

The cluster's processes run in sessions of their own; before SIGTERM was handled, and again while
the recipe's shell stood between make and the cluster's process (make passed the signal to the
shell, which died), killing `make run` left Redis, the scheduler, the worker and the gateway
running, holding their ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import openai
import pytest

from services.local_cluster import REPO_ROOT, free_port
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.cluster



def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    below = children(pid)
    return below + [d for child in below for d in descendants(child)]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_sigterm_to_make_stops_every_process_of_make_run(tiny_llama_dir, tmp_path):
    port = free_port()
    env = {**os.environ, **WORKER_ENV, "FERRUM_INFER_MODEL_NAME": "tiny-llama", "FERRUM_INFER_PORT": str(port)}
    output = (tmp_path / "make-run.log").open("w+")
    # MODEL_DIR names a built model, so the recipe's set-up finds everything made and starts at once.
    make = subprocess.Popen(["make", "--no-print-directory", "run", f"MODEL_DIR={tiny_llama_dir}"], cwd=REPO_ROOT,
                            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    cluster: list[int] = []
    try:
        wait_until(lambda: "is serving" in Path(output.name).read_text() or make.poll() is not None,
                   timeout_s=300, what="make run to serve")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2).usage.completion_tokens > 0
        cluster = descendants(make.pid)
        [run] = children(make.pid)  # the recipe's process itself, no shell between
        assert sorted(cluster) == sorted([run, *children(run)]) and len(cluster) == 5, \
            Path(output.name).read_text()  # it, redis, scheduler, worker, gateway

        make.send_signal(signal.SIGTERM)  # to make alone, not its process group
        make.wait(timeout=90)
        wait_until(lambda: not any(running(pid) for pid in cluster), timeout_s=90, what="the cluster to stop")
        assert "stopping" in Path(output.name).read_text()
    finally:
        for pid in {make.pid, *cluster, *descendants(make.pid)}:  # whatever a failure left running
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        make.wait()
        output.close()
