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
