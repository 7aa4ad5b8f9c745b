"""Sibling projections sharing one matmul (worker/engine/fused_projections.py): each still returns
its own projection, in any order of calls, with one product per input at decode sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP

from worker.engine import fused_projections
from worker.engine.fused_projections import MAX_SHARED_ROWS, share_projection_matmuls

SMALL = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


class _Layer(torch.nn.Module):
    def __init__(self, attention: torch.nn.Module, mlp: torch.nn.Module):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp


def _layer(attention_class=LlamaAttention, mlp_class=LlamaMLP, config_class=LlamaConfig) -> _Layer:
    config = config_class(**SMALL)
    torch.manual_seed(0)
    return _Layer(attention_class(config, layer_idx=0), mlp_class(config)).to(torch.bfloat16)


def _projections(layer: _Layer) -> dict[str, torch.nn.Linear]:
    attention, mlp = layer.self_attn, layer.mlp
    return {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj,
            "gate": mlp.gate_proj, "up": mlp.up_proj}


def _own_products(layer: _Layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: F.linear(x, p.weight, p.bias) for name, p in _projections(layer).items()}


def _assert_within_a_bf16_step(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    step = torch.finfo(torch.bfloat16).eps * expected.float().abs().clamp(min=1e-3)
    assert bool(((actual.float() - expected.float()).abs() <= step).all())


@pytest.fixture
def linear_calls(monkeypatch):
    calls = []
    real = F.linear

    def counting(x, weight, bias=None):
        calls.append(weight.shape[0])
        return real(x, weight, bias)

    monkeypatch.setattr(fused_projections.F, "linear", counting)
    return calls


@pytest.mark.parametrize("order", [("q", "k", "v"), ("v", "q", "k")])
def test_siblings_return_their_own_projection_from_one_product(order, linear_calls):
    layer = _layer()
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    expected = _own_products(layer, x)
    assert len(share_projection_matmuls(layer)) == 2
    linear_calls.clear()
    projections = _projections(layer)
    with torch.inference_mode():
        outputs = {name: projections[name](x) for name in order}
        outputs["gate"], outputs["up"] = projections["gate"](x), projections["up"](x)
    assert linear_calls == [64 + 32 + 32, 160 + 160]  # one product for q/k/v, one for gate/up
    for name, output in outputs.items():
        _assert_within_a_bf16_step(output, expected[name])
    # The modeling code's reshape into heads reads the strided slice as it is.
    assert outputs["q"].view(3, 5, -1, 16).shape == (3, 5, 4, 16)


def test_the_weights_are_kept_once_as_views_of_the_shared_matrix():
    layer = _layer()
    share_projection_matmuls(layer)
    q, k, v = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
    storage = q.weight.untyped_storage().data_ptr()
    assert k.weight.untyped_storage().data_ptr() == storage == v.weight.untyped_storage().data_ptr()
    assert [p.weight.shape for p in (q, k, v)] == [(64, 64), (32, 64), (32, 64)]


def test_a_repeated_or_new_input_gets_a_fresh_product():
    layer = _layer()
    share_projection_matmuls(layer)
    q, k = layer.self_attn.q_proj, layer.self_attn.k_proj
    first, second = torch.randn(4, 64).to(torch.bfloat16), torch.randn(4, 64).to(torch.bfloat16)
    with torch.inference_mode():
        expected_q2, expected_k2 = F.linear(second, q.weight), F.linear(second, k.weight)
        q(first)
        q(first)  # the same input again: not a sibling's call, so computed afresh
        _assert_within_a_bf16_step(q(second), expected_q2)
        _assert_within_a_bf16_step(k(second), expected_k2)
        # A buffer reused in place (the same tensor object with new contents) is a new input to q.
        buffer = first.clone()
        q(buffer)
        buffer.copy_(second)
        _assert_within_a_bf16_step(q(buffer), expected_q2)


def test_prefill_sized_inputs_keep_one_call_per_projection(linear_calls):
    layer = _layer()
    share_projection_matmuls(layer)
    x = torch.randn(MAX_SHARED_ROWS + 1, 64).to(torch.bfloat16)
    linear_calls.clear()
    with torch.inference_mode():
        for projection in _projections(layer).values():
            projection(x)
    assert linear_calls == [64, 32, 32, 160, 160]


def test_biases_are_shared_too():
    layer = _layer(Qwen2Attention, Qwen2MLP, Qwen2Config)
    for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        projection.bias.data = torch.randn_like(projection.bias)
    x = torch.randn(6, 64).to(torch.bfloat16)
    expected = _own_products(layer, x)
    assert len(share_projection_matmuls(layer)) == 2
    with torch.inference_mode():
        for name, projection in _projections(layer).items():
            _assert_within_a_bf16_step(projection(x), expected[name])


def test_projections_that_cannot_share_are_left_alone():
    layer = _layer()
    layer.self_attn.k_proj = torch.nn.Linear(48, 32, bias=False).to(torch.bfloat16)  # another input width
    layer.mlp.up_proj = type("Special", (torch.nn.Linear,), {})(64, 160, bias=False).to(torch.bfloat16)
    assert len(share_projection_matmuls(layer)) == 0
    assert not any("forward" in vars(p) for p in _projections(layer).values())


def test_cpu_engines_share_in_both_dtypes(make_engine):
    float32, bfloat16 = make_engine(), make_engine(dtype="bfloat16")
    layers = bfloat16.runner.model_config.num_hidden_layers
    assert float32.runner.shared_matmuls == bfloat16.runner.shared_matmuls == 2 * layers
