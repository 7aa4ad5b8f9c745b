"""Shared fixtures: locally built test models (cached across runs under .cache/test-models)."""

from __future__ import annotations

from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "test-models"


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
