"""LocalCluster gives the workers it starts on one machine a share of its cores each, unless the
caller chose a thread count (the processes are only described here, never started)."""

from __future__ import annotations

import os

from services.local_cluster import LocalCluster, WorkerSpec


def _threads(cluster: LocalCluster) -> list[str]:
    return [worker.env["OMP_NUM_THREADS"] for worker in cluster.workers]


def test_workers_split_the_cores(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert _threads(LocalCluster([WorkerSpec("m")] * 3, redis=False, log_dir=tmp_path)) == ["2"] * 3
    assert _threads(LocalCluster([WorkerSpec("m")], redis=False, log_dir=tmp_path)) == ["8"]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _threads(LocalCluster([WorkerSpec("m")] * 3, redis=False, log_dir=tmp_path)) == ["1"] * 3


def test_a_thread_count_the_caller_chose_is_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _threads(LocalCluster([WorkerSpec("m")] * 2, redis=False, log_dir=tmp_path)) == ["3", "3"]
    monkeypatch.delenv("OMP_NUM_THREADS")
    specs = [WorkerSpec("m", env={"OMP_NUM_THREADS": "5"}), WorkerSpec("m")]
    assert _threads(LocalCluster(specs, redis=False, log_dir=tmp_path)) == ["5", "4"]
