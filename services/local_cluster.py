"""Start a whole cluster on this machine: redis (optional), scheduler, workers, gateway.

Used by `make run`, the cluster/end-to-end tests and the benchmark. Each process is started as
`python -m <component>` with its FERRUM_INFER_* environment, on free ports; `start` returns only once
every worker has registered and the gateway answers. Nothing is imported from the components: they
meet only on the wire, as in a real deployment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services import codec
from services.redis_server import RedisServer
from services.types import ClusterStatus

REPO_ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()


def free_port() -> int:
    """A port free now that this process has not handed out before.

    The ports are bound later, by the processes they are given to, and the kernel may offer a port
    it just released again: a cluster's gateway and its worker's metrics server once got the same
    one, and the worker died with "address already in use"."""
    return port_not_handed_out(_port_free_now, _HANDED_OUT)


def port_not_handed_out(offer: Callable[[], int], handed_out: set[int]) -> int:
    """The first port `offer()` gives that is not in `handed_out`, which then holds it."""
    with _HANDING_OUT:
        while (port := offer()) in handed_out:
            pass
        handed_out.add(port)
        return port


def _port_free_now() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerSpec:
    model_path: str
    model_name: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.model_path.rstrip("/")).name


@dataclass
class _Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    draining: bool = False  # sent SIGTERM since it started: a second one would cut its drain short

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen([sys.executable, *self.args], cwd=REPO_ROOT, env=self.env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.draining = False
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            self.draining = self.draining or sig == signal.SIGTERM

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM unless already sent, then SIGKILL if it has not exited after `timeout_s`."""
        if not self.alive():
            return
        if not self.draining:
            self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    def __init__(self, workers: list[WorkerSpec], *, redis: bool = True, env: dict[str, str] | None = None,
                 gateway_port: int | None = None, scheduler_port: int | None = None,
                 log_dir: str | Path | None = None, startup_timeout_s: float = 300.0):
        self.worker_specs = workers
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="ferrum-cluster-")).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout_s = startup_timeout_s
        self.gateway_port = gateway_port or free_port()
        self.scheduler_addr = f"127.0.0.1:{scheduler_port or free_port()}"
        self.redis = RedisServer(free_port(), self.log_dir / "redis.log") if redis else None
        self.base_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
                         "FERRUM_INFER_SCHEDULER_ADDR": self.scheduler_addr}
        if self.redis:
            self.base_env["FERRUM_INFER_REDIS_URL"] = self.redis.url
        self.scheduler = self._proc("scheduler", {"FERRUM_INFER_METRICS_PORT": str(free_port())})
        self.gateway = self._proc("gateway", {"FERRUM_INFER_HOST": "127.0.0.1",
                                              "FERRUM_INFER_PORT": str(self.gateway_port)})
        self.workers = [self._worker_proc(i, spec) for i, spec in enumerate(workers)]

    def _proc(self, component: str, env: dict[str, str], name: str | None = None) -> _Proc:
        name = name or component
        return _Proc(name, ["-m", component], {**self.base_env, **env}, self.log_dir / f"{name}.log")

    def _worker_proc(self, index: int, spec: WorkerSpec) -> _Proc:
        env = {"FERRUM_INFER_MODEL_PATH": spec.model_path, "FERRUM_INFER_METRICS_PORT": str(free_port()),
               "FERRUM_INFER_WORKER_ID": f"worker-{index}"}
        if "OMP_NUM_THREADS" not in self.base_env:
            # Workers on one machine share its cores. Each would otherwise run one compute thread
            # per core, and those threads spin between parallel regions, taking the cores from the
            # other workers' threads.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.worker_specs)))
        env.update(spec.env)
        if spec.model_name:
            env["FERRUM_INFER_MODEL_NAME"] = spec.model_name
        return self._proc("worker", env, name=f"worker-{index}")

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def model_names(self) -> list[str]:
        return sorted({spec.served_name for spec in self.worker_specs})

    def start(self) -> LocalCluster:
        if self.redis:
            self.redis.start()
        self.scheduler.start()
        for worker in self.workers:
            worker.start()
        self.gateway.start()
        self.wait_for_workers(len(self.workers))
        self._wait(lambda: self._http_ok("/ping"), "the gateway to answer /ping")
        return self

    def stop(self) -> None:
        for proc in [self.gateway, *self.workers, self.scheduler]:
            proc.signal(signal.SIGTERM)
        for proc in [self.gateway, *self.workers, self.scheduler]:
            proc.stop()
        if self.redis:
            self.redis.stop()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def metrics_url(self, proc: _Proc) -> str:
        return f"http://127.0.0.1:{proc.env['FERRUM_INFER_METRICS_PORT']}/metrics"

    # ------------------------------------------------------------------ chaos helpers

    def kill_worker(self, index: int) -> None:
        self.workers[index].signal(signal.SIGKILL)
        self.workers[index].popen.wait()

    def restart_worker(self, index: int) -> None:
        self.workers[index].stop()
        self.workers[index].start()

    def revive(self) -> None:
        """Make the cluster whole again after a chaos test: start Redis if stopped, restart every
        process that exited, was killed or was sent SIGTERM, then wait as `start` does (plus: the
        scheduler lists exactly this cluster's workers, no stale one). Tests sharing one cluster
        call it first, so each starts from a whole cluster whatever the test before it broke."""
        if self.redis and not self.redis.running:
            self.redis.start()
        for proc in [self.scheduler, *self.workers, self.gateway]:
            if proc.draining or not proc.alive():
                proc.stop()
                proc.start()
        self._wait(lambda: self.live_workers() == len(self.workers), f"exactly {len(self.workers)} worker(s)")
        self._wait(lambda: self._http_ok("/ping"), "the gateway to answer /ping")

    # ------------------------------------------------------------------ readiness

    def status(self) -> ClusterStatus | None:
        """The scheduler's view (workers with their last stats, queue), or None if it does not answer."""
        try:
            with grpc.insecure_channel(self.scheduler_addr) as channel:
                reply = codec.SchedulerStub(channel).ClusterStatus(codec.messages.ClusterStatusRequest(), timeout=2)
            return codec.cluster_status_from_pb(reply)
        except grpc.RpcError:
            return None

    def live_workers(self) -> int:
        status = self.status()
        return len(status.workers) if status else -1

    def wait_for_workers(self, count: int) -> None:
        self._wait(lambda: self.live_workers() >= count, f"{count} worker(s) to register")

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.gateway_url + path, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not condition():
            dead = [p for p in [self.scheduler, self.gateway, *self.workers] if p.popen and not p.alive()]
            if dead or time.monotonic() > deadline:
                reason = f"{dead[0].name} exited" if dead else "timed out"
                logs = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.log_tail()}"
                                 for p in [self.scheduler, *self.workers, self.gateway])
                raise RuntimeError(f"cluster failed while waiting for {what}: {reason}\n{logs}")
            time.sleep(0.1)


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_forever() -> None:
    """`make run`: one worker on FERRUM_INFER_MODEL_PATH, redis unless FERRUM_INFER_REDIS_URL is set.

    SIGTERM and SIGHUP stop it as Ctrl-C does: the processes run in sessions of their own, so
    without the handler they would outlive it and keep its ports."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    model_path = os.environ.get("FERRUM_INFER_MODEL_PATH", "models/ferrum-demo")
    port = int(os.environ.get("FERRUM_INFER_PORT", "8080"))
    external_redis = bool(os.environ.get("FERRUM_INFER_REDIS_URL"))
    cluster = LocalCluster([WorkerSpec(model_path, os.environ.get("FERRUM_INFER_MODEL_NAME"))],
                           redis=not external_redis, gateway_port=port,
                           log_dir=REPO_ROOT / ".cache" / "logs")
    print(f"starting scheduler, worker and gateway (logs in {cluster.log_dir}) ...", flush=True)
    try:
        cluster.start()
        print(f"\nFerrum Infer is serving {', '.join(cluster.model_names)} at {cluster.base_url}\n"
              f"  curl {cluster.base_url}/models\n"
              f"Press Ctrl-C to stop.", flush=True)
        while all(p.alive() for p in [cluster.scheduler, cluster.gateway, *cluster.workers]):
            time.sleep(0.5)
        print("a process exited; stopping the cluster", flush=True)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a repeated signal must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
