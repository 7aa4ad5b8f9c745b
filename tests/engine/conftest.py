"""Engine test fixtures: the two tiny model architectures and an engine factory (float32, CPU)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from worker.engine import create_engine
from worker.engine_config import EngineConfig

ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="session", params=ARCHS)
def model_dir(request) -> Path:
    """Each engine test runs once per architecture: Llama, and Qwen2 (q/k/v biases, tied embeddings)."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="session")
def vocab_size(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).vocab_size


@pytest.fixture
def make_engine(model_dir):
    """`make_engine(num_blocks=..., eos_token_ids=..., **EngineConfig fields)`: a float32 CPU engine
    on the tiny model; `eos_token_ids=[]` makes every request run to max_tokens."""

    def make(num_blocks: int | None = 512, eos_token_ids=None, **fields):
        config = EngineConfig(**{"dtype": "float32", "block_size": 4, "model_id": "tiny", **fields})
        return create_engine(str(model_dir), config, eos_token_ids=eos_token_ids, num_blocks=num_blocks)

    return make


@pytest.fixture
def prompts(vocab_size):
    """`prompts(lengths, seed)`: reproducible random prompts, avoiding the lowest ids (special tokens)."""

    def make(lengths, seed=0):
        rng = random.Random(seed)
        return [[rng.randrange(16, vocab_size) for _ in range(length)] for length in lengths]

    return make


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models' ops are far too small to gain from threads, and on a busy machine the
    OpenMP hand-offs of a second thread cost more than the op itself."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

