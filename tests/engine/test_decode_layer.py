"""Decode-only steps through the compiled decoder layer (worker/engine/decode_layer.py), bfloat16
and float32: exactly the tokens and log-probabilities of the layers' Python forwards, and only for
layers whose load-time check agrees."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config

import worker.engine.model_runner as model_runner
from tests.engine.harness import drive, other_threads_ran_during, request
from worker.engine import create_engine
from worker.engine.agreement import check_angles, check_rows
from worker.engine.decode_layer import _check_step, _parts
from worker.engine.cpu_kernels import decode_layer_class, fused_layer_dtypes
from worker.engine.packed_weights import can_pack
from worker.engine_config import EngineConfig

pytestmark = pytest.mark.skipif(decode_layer_class() is None, reason="the CPU kernels are not built here")

MAX_TOKENS = [9, 14, 6, 11]


def _compiles(dtype: str) -> bool:
    """Whether this CPU's kernels compile `dtype`'s layers: its norms and MLP fused (bfloat16 with
    the AVX-512 set; float32 where torch's vector level is one float32_layers.cpp reproduces) and its
    projections packed (oneDNN packs bfloat16 only with AVX512BW/VL/DQ or AVX-NE-CONVERT)."""
    return getattr(torch, dtype) in fused_layer_dtypes() and can_pack(torch.device("cpu"), getattr(torch, dtype))


COMPILED_DTYPES = [dtype for dtype in ("bfloat16", "float32") if _compiles(dtype)]
# A dtype compiled here, for the tests of one compiled layer (bfloat16 where there is one).
DTYPE = COMPILED_DTYPES[0] if COMPILED_DTYPES else "float32"


def _run_mixed_batch(engine, prompts):
    """Arrivals spread over steps, so that decode-only steps alternate with steps holding a prefill."""
    batch = prompts([23, 5, 40, 12], seed=4)
    requests = [request(name, prompt, limit, logprobs=3) for name, prompt, limit in zip("abcd", batch, MAX_TOKENS)]
    return drive(engine, {0: requests[:2], 3: requests[2:3], 6: requests[3:]})


def test_engines_compile_every_layer_where_the_kernels_take_their_dtype_unless_kernels_or_packing_are_off(
        make_engine):
    assert COMPILED_DTYPES  # float32 on AVX-512 and AVX2 CPUs, bfloat16 with the AVX-512 set
    layers = make_engine().runner.model_config.num_hidden_layers
    for dtype in ("bfloat16", "float32"):
        assert make_engine(dtype=dtype).runner.compiled_layers == (layers if _compiles(dtype) else 0)
        assert make_engine(dtype=dtype, cpu_kernels=False).runner.compiled_layers == 0
        assert make_engine(dtype=dtype, packed_weights=False).runner.compiled_layers == 0


@pytest.mark.parametrize("dtype", [pytest.param(dtype, marks=pytest.mark.skipif(
    not _compiles(dtype), reason=f"this CPU's kernels do not compile {dtype} layers")) for dtype in ("bfloat16", "float32")])
def test_tokens_and_logprobs_are_exactly_those_of_the_python_layers(make_engine, prompts, monkeypatch, dtype):
    calls = []
    compiled_class = decode_layer_class()

    class CountingLayer(compiled_class):
        def forward(self, hidden, *args):
            calls.append(hidden.shape[1])
            return super().forward(hidden, *args)

    monkeypatch.setattr(model_runner, "decode_layer_class", lambda: CountingLayer)
    compiled = _run_mixed_batch(make_engine(dtype=dtype, eos_token_ids=[]), prompts)
    assert calls and set(calls) >= {1, 2, 3, 4}  # decode-only steps of every batch size ran compiled
    monkeypatch.setattr(model_runner, "decode_layer_class", lambda: None)
    python = _run_mixed_batch(make_engine(dtype=dtype, eos_token_ids=[]), prompts)
    assert python.keys() == compiled.keys()
    for name in python:
        assert compiled[name].token_ids == python[name].token_ids
        assert len(compiled[name].token_ids) == MAX_TOKENS["abcd".index(name)]
        assert compiled[name].logprobs == python[name].logprobs


def test_a_layer_that_computes_otherwise_keeps_its_python_forward(make_engine, monkeypatch):
    """Layer 0's second norm doubles its output after the other rewrites: the layer still looks
    like the sequence, and only the check can tell."""
    real = model_runner.compile_decode_layers

    def tamper_then_compile(model, layer_class):
        norm = model.model.layers[0].post_attention_layernorm
        fused = vars(norm)["forward"]
        norm.forward = lambda hidden: fused(hidden) * 2
        return real(model, layer_class)

    monkeypatch.setattr(model_runner, "compile_decode_layers", tamper_then_compile)
    engine = make_engine(dtype=DTYPE)
    layers = engine.runner.model.model.layers
    assert engine.runner.compiled_layers == len(layers) - 1
    assert vars(layers[0])["forward"].__qualname__.startswith("_direct_forward")
    assert vars(layers[1])["forward"].__qualname__.startswith("_compiled_forward")


def test_attention_with_query_and_key_norms_is_not_compiled(tmp_path):
    """Qwen3 normalises queries and keys per head, a step the compiled sequence does not have."""
    config = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    engine = create_engine(str(tmp_path), EngineConfig(dtype=DTYPE, block_size=4), eos_token_ids=[], num_blocks=64)
    assert engine.runner.direct_layers == 2 and engine.runner.compiled_layers == 0


def _one_decode_step(engine):
    """Layer 0 of `engine` as a compiled layer and the arguments of one decode step through it: the
    random step its load-time check ran (decode_layer._check_step), over fresh caches."""
    layer = engine.runner.model.model.layers[0]
    native = decode_layer_class()(*_parts(layer))
    dtype = getattr(torch, DTYPE)
    meta = _check_step(layer.self_attn, dtype)
    tokens = meta.num_decodes
    hidden = check_rows(layer.self_attn.config.hidden_size, dtype, torch.device("cpu"))[None, :tokens]
    cos, sin = check_angles(layer.self_attn.head_dim, tokens, dtype, torch.device("cpu"))
    return native, [hidden.contiguous(), cos, sin, meta.kv_cache.keys[0], meta.kv_cache.values[0], meta.write_rows,
                    meta.decode_block_tables, *meta.decode_bounds(None)]


def test_a_write_row_outside_the_cache_is_refused_before_anything_is_written(make_engine):
    native, arguments = _one_decode_step(make_engine(dtype=DTYPE))
    keys, values, rows = arguments[3], arguments[4], arguments[5]
    before = keys.clone(), values.clone()
    rows[-1] = keys.numel() // keys.shape[-1]  # one row past the end of the cache
    with pytest.raises(RuntimeError, match="a write row is outside the cache"):
        native.forward(*arguments)
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])


def test_the_compiled_layer_lets_other_python_threads_run_while_it_computes(make_engine):
    native, arguments = _one_decode_step(make_engine(dtype=DTYPE))
    assert other_threads_ran_during(lambda: native.forward(*arguments))
