"""The fused bfloat16 RMSNorm and SiLU-multiply kernels (cpu_kernels/fused_layers.cpp) against
transformers' own modules, and the swap (worker/engine/fused_layers.py) that puts them in a model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from worker.engine.cpu_kernels import fused_layer_dtypes, fused_layer_kernels
from worker.engine.fused_layers import fuse_layers

kernels = fused_layer_kernels()
pytestmark = pytest.mark.skipif(kernels is None or torch.bfloat16 not in fused_layer_dtypes(),
                                reason="the bfloat16 kernels (the AVX-512 set) are not built here")


def _bf16(*shape, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(torch.bfloat16)


def _differing_fraction(actual, expected):
    """Elements that differ, and by at most one bfloat16 step; raises if any differs by more."""
    step = torch.finfo(torch.bfloat16).eps * expected.float().abs().clamp(min=torch.finfo(torch.bfloat16).tiny)
    difference = (actual.float() - expected.float()).abs()
    assert bool((difference <= step).all()), f"largest difference {difference.max().item()}"
    return (difference > 0).float().mean().item()


@pytest.mark.parametrize("shape", [(1, 576), (3, 7, 100), (2048, 576), (5, 2, 64)])
def test_rms_norm_is_llamas_up_to_a_last_bit_in_a_few_elements(shape):
    norm = LlamaRMSNorm(shape[-1], eps=1e-5)
    norm.weight.data = _bf16(shape[-1], seed=1, scale=0.5) + 1
    x = _bf16(*shape, seed=2, scale=3.0)
    expected = norm(x)
    actual = kernels.rms_norm(x, norm.weight, 1e-5)
    assert actual.shape == x.shape and actual.dtype == torch.bfloat16
    assert _differing_fraction(actual, expected) < 0.01


@pytest.mark.parametrize("shape", [(1, 1536), (2048, 1536), (3, 37)])
def test_silu_mul_is_silu_then_multiply_in_bfloat16(shape):
    gate, up = _bf16(*shape, seed=3, scale=4.0), _bf16(*shape, seed=4)
    gate.view(-1)[:4] = torch.tensor([-200.0, 200.0, 0.0, -0.0])  # exp's range ends and zero
    expected = F.silu(gate) * up
    actual = kernels.silu_mul(gate, up)
    assert _differing_fraction(actual, expected) < 0.01


@pytest.mark.parametrize("shape", [(32, 1536), (2, 3, 37)])
def test_silu_mul_reads_gate_and_up_as_halves_of_one_product(shape):
    both = _bf16(*shape[:-1], 2 * shape[-1], seed=5, scale=3.0)
    gate, up = both[..., : shape[-1]], both[..., shape[-1]:]
    assert not gate.is_contiguous()
    actual = kernels.silu_mul(gate, up)
    assert actual.is_contiguous() and actual.shape == shape
    assert _differing_fraction(actual, F.silu(gate) * up) < 0.01


def test_the_kernels_refuse_what_they_cannot_read():
    x = _bf16(4, 64)
    with pytest.raises(RuntimeError, match="one dtype"):
        kernels.rms_norm(x.float(), torch.ones(64, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.rms_norm(_bf16(64, 4).t(), torch.ones(64, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="last dimension"):
        kernels.rms_norm(x, torch.ones(32, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="one shape"):
        kernels.silu_mul(x, _bf16(4, 32))
    with pytest.raises(RuntimeError, match="last dimension is contiguous"):
        kernels.silu_mul(_bf16(64, 4).t(), _bf16(64, 4).t())


class _OnePlusWeightRMSNorm(LlamaRMSNorm):
    """Gemma's form under Llama's attribute names: `(1 + weight) * normed`."""

    def forward(self, hidden_states):
        variance = hidden_states.float().pow(2).mean(-1, keepdim=True)
        normed = hidden_states.float() * torch.rsqrt(variance + self.variance_epsilon)
        return (normed * (1.0 + self.weight.float())).to(hidden_states.dtype)


class _Block(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size)
        self.mlp = LlamaMLP(config)
        self.other_norm = _OnePlusWeightRMSNorm(config.hidden_size)

    def forward(self, x):
        return self.other_norm(x + self.mlp(self.input_layernorm(x)))


def test_a_model_gets_the_kernels_only_where_they_compute_the_same():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=160, hidden_act="silu")
    block = _Block(config).to(torch.bfloat16)
    for parameter in block.parameters():
        parameter.data = _bf16(*parameter.shape, seed=parameter.numel(), scale=0.2) + (1 if parameter.dim() == 1 else 0)
    x = _bf16(2, 5, 64, seed=9)
    with torch.inference_mode():
        before = block(x)
    assert fuse_layers(block, kernels) == 2  # the Llama norm and the MLP, not the look-alike norm
    assert "forward" in vars(block.input_layernorm) and "forward" in vars(block.mlp)
    assert "forward" not in vars(block.other_norm)
    with torch.inference_mode():
        after = block(x)
    torch.testing.assert_close(after.float(), before.float(), atol=0.05, rtol=0.02)
