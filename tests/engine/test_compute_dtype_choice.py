"""An engine loaded with dtype "auto" from a bfloat16 checkpoint, on CPUs with and without bfloat16
matmul instructions (the CPU's flags and the free memory are the two facts the choice reads; the
tests set them, since no test can choose the machine it runs on)."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.engine.harness import drive, greedy_reference, request
from worker.engine import compute_dtype, create_engine
from worker.engine_config import EngineConfig


@pytest.fixture(scope="module")
def bfloat16_checkpoint(tiny_llama_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).save_pretrained(directory)
    return directory


def load(checkpoint, monkeypatch, native, available_bytes=1 << 40, dtype="auto"):
    monkeypatch.setattr(compute_dtype, "_read_native_cpu_dtypes", lambda: native)
    monkeypatch.setattr(compute_dtype, "_available_memory_bytes", lambda: available_bytes)
    config = EngineConfig(dtype=dtype, block_size=4, model_id="tiny")
    return create_engine(str(checkpoint), config, eos_token_ids=[], num_blocks=64)


def test_without_bfloat16_matmuls_auto_serves_the_checkpoint_widened_to_float32(bfloat16_checkpoint, monkeypatch,
                                                                                 caplog):
    with caplog.at_level(logging.INFO, logger=compute_dtype.__name__):
        engine = load(bfloat16_checkpoint, monkeypatch, native=frozenset())
    assert engine.runner.dtype == torch.float32 and engine.runner.kv_cache.keys[0].dtype == torch.float32
    assert "computing in float32: the checkpoint is bfloat16" in caplog.text
    prompts = [[17, 40, 99, 5, 23], [64, 3, 77]]
    results = drive(engine, {0: [request(f"r{i}", p, 8) for i, p in enumerate(prompts)]})
    for index, prompt in enumerate(prompts):  # widening is exact: the float32 model's own output
        assert results[f"r{index}"].token_ids == greedy_reference(bfloat16_checkpoint, prompt, 8, stop_at_eos=False)


def test_with_bfloat16_matmuls_auto_keeps_bfloat16(bfloat16_checkpoint, monkeypatch):
    engine = load(bfloat16_checkpoint, monkeypatch, native=frozenset({torch.bfloat16}))
    assert engine.runner.dtype == torch.bfloat16


def test_when_float32_weights_would_not_fit_auto_keeps_bfloat16_and_warns(bfloat16_checkpoint, monkeypatch, caplog):
    checkpoint_bytes = sum(path.stat().st_size for path in bfloat16_checkpoint.glob("*.safetensors"))
    with caplog.at_level(logging.WARNING, logger=compute_dtype.__name__):  # float32 needs 4x this free
        engine = load(bfloat16_checkpoint, monkeypatch, native=frozenset(), available_bytes=3 * checkpoint_bytes)
    assert engine.runner.dtype == torch.bfloat16
    assert "would not fit in half the available memory" in caplog.text


def test_bfloat16_asked_for_by_name_is_kept_with_a_warning(bfloat16_checkpoint, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger=compute_dtype.__name__):
        engine = load(bfloat16_checkpoint, monkeypatch, native=frozenset(), dtype="bfloat16")
    assert engine.runner.dtype == torch.bfloat16
    assert "bfloat16 as configured (this CPU has no matmul instructions for it" in caplog.text
