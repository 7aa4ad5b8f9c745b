"""Shared fixtures: locally built test models (cached across runs under .cache/test-models)."""

from __future__ import annotations

from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "test-models"

# The environment of every worker the tests start. One compute thread: the test process, the other
# processes of its cluster and `make test`'s demo-model training share the cores, and an OpenMP
# thread that must wait for a core stalls every parallel region of its worker (beside one busy
# process on 2 cores, the scheduler drain test took 78 s with two threads, 11.5 s with one).
WORKER_ENV = {"FERRUM_INFER_DTYPE": "float32", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A tiny, briefly trained Llama model with the demo tokenizer and chat template."""
    from worker.demo_model import build_model

    return build_model(CACHE / "tiny-llama", preset="tiny", arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir() -> Path:
    """The Qwen2-architecture twin of tiny_llama_dir (q/k/v biases, tied embeddings)."""
    from worker.demo_model import build_model

    return build_model(CACHE / "tiny-qwen2", preset="tiny", arch="qwen2")


# The order the test directories run in: the single-process ones first. `make test` trains the demo
# model (one thread, nice 15) beside the suite. Beside tests/unit and tests/deploy, which keep one
# core busy, it ran at almost full speed (200 of its 300 steps in their 2 min 28 s, which took
# 2 min 20 s without it); beside a cluster test, whose processes want both cores, it slowed that test
# by a third (the rolling restart: 54-56 s alone, 66-80 s beside it), and in alphabetical order the
# chaos and cluster tests came first.
RUN_ORDER = ("unit", "deploy", "integration", "engine", "e2e", "cluster", "chaos")


def _run_rank(item: pytest.Item) -> int:
    path, tests = Path(str(item.path)), Path(__file__).parent
    directory = path.relative_to(tests).parts[0] if path.is_relative_to(tests) else ""
    return RUN_ORDER.index(directory) if directory in RUN_ORDER else len(RUN_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_run_rank)  # stable: each directory keeps its own order
