"""`make run`'s command as a service manager runs it: it serves, and SIGTERM stops the whole cluster.

Its processes run in sessions of their own; before SIGTERM was handled, killing `make run` left
Redis, the scheduler, the worker and the gateway running, holding their ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from services.local_cluster import REPO_ROOT, free_port
from tests.conftest import WORKER_ENV
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.cluster

RUN = "import services.local_cluster as c; c.run_forever()"  # the Makefile's `run` recipe


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


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_sigterm_stops_every_process_of_make_run(tiny_llama_dir, tmp_path):
    port = free_port()
    env = {**os.environ, **WORKER_ENV, "FERRUM_INFER_MODEL_PATH": str(tiny_llama_dir),
           "FERRUM_INFER_MODEL_NAME": "tiny-llama", "FERRUM_INFER_PORT": str(port)}
    output = (tmp_path / "make-run.log").open("w+")
    run = subprocess.Popen([sys.executable, "-c", RUN], cwd=REPO_ROOT, env=env, stdout=output,
                           stderr=subprocess.STDOUT)
    cluster: list[int] = []
    try:
        wait_until(lambda: "is serving" in Path(output.name).read_text() or run.poll() is not None,
                   timeout_s=300, what="make run to serve")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2).usage.completion_tokens > 0
        cluster = children(run.pid)
        assert len(cluster) == 4, Path(output.name).read_text()  # redis, scheduler, worker, gateway

        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=90) == 0, Path(output.name).read_text()
        assert "stopping" in Path(output.name).read_text()
        assert [pid for pid in cluster if running(pid)] == []
    finally:
        for pid in [run.pid, *cluster]:  # whatever a failure left running
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait()
        output.close()
