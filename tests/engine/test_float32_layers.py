"""The float32 RMSNorm and SiLU-multiply kernels (cpu_kernels/float32_layers.cpp) give torch's own
result bit for bit, whatever the shape, the row count and the number of threads torch splits its
work among; and a float32 model gets them only where its modules compute exactly that."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from worker.engine.cpu_kernels import fused_layer_dtypes, fused_layer_kernels
from worker.engine.fused_layers import fuse_layers

kernels = fused_layer_kernels()
pytestmark = pytest.mark.skipif(kernels is None or torch.float32 not in fused_layer_dtypes(),
                                reason="the CPU kernels are not built here, or torch runs another vector level")


def _random(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(params=[1, 2, 3], ids=lambda threads: f"{threads}threads")
def threads(request):
    """torch's split of a large tensor among threads decides which elements its kernels treat as a tail."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("width", [576, 896, 4096, 17, 100, 1000])
@pytest.mark.parametrize("rows", [1, 3, 33, 2048])
def test_rms_norm_is_llamas_bit_for_bit(threads, width, rows):
    norm = LlamaRMSNorm(width, eps=1e-6)
    norm.weight.data = _random(width, seed=1, scale=0.5) + 1
    x = _random(1, rows, width, seed=2, scale=3.0)
    with torch.inference_mode():
        expected = norm(x)
    actual = kernels.rms_norm(x, norm.weight, 1e-6)
    assert actual.dtype == torch.float32 and torch.equal(actual, expected)


@pytest.mark.parametrize("width", [1536, 37, 1040, 2064])
@pytest.mark.parametrize("rows", [1, 7, 33, 2048])
@pytest.mark.parametrize("halves", [True, False], ids=["halves-of-one-product", "separate"])
def test_silu_mul_is_silu_then_multiply_bit_for_bit(threads, width, rows, halves):
    both = _random(1, rows, 2 * width, seed=3, scale=4.0)
    both.view(-1)[:5] = torch.tensor([-200.0, 200.0, 0.0, -0.0, 88.0])  # exp's range ends and zero
    gate, up = both[..., :width], both[..., width:]
    if not halves:
        gate, up = gate.contiguous(), up.contiguous()
    actual = kernels.silu_mul(gate, up)
    assert actual.is_contiguous() and torch.equal(actual, F.silu(gate) * up)


def test_the_kernels_refuse_other_dtypes_and_mixed_ones():
    x = _random(4, 64)
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        kernels.rms_norm(x.half(), torch.ones(64, dtype=torch.half), 1e-6)
    with pytest.raises(RuntimeError, match="one dtype"):
        kernels.rms_norm(x, torch.ones(64, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="one dtype"):
        kernels.silu_mul(x, x.to(torch.bfloat16))


class _ScaledRMSNorm(LlamaRMSNorm):
    """Llama's norm with a different formula under the same attribute names."""

    def forward(self, hidden_states):
        return super().forward(hidden_states) * 1.0001


def test_a_float32_model_gets_the_kernels_only_where_they_give_its_exact_result():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, hidden_act="silu")
    norm, mlp, other = LlamaRMSNorm(64), LlamaMLP(config), _ScaledRMSNorm(64)
    block = torch.nn.ModuleDict({"norm": norm, "mlp": mlp, "other": other})
    for parameter in block.parameters():
        parameter.data = _random(*parameter.shape, seed=parameter.numel(), scale=0.2) + (parameter.dim() == 1)
    x = _random(2, 5, 64, seed=9)
    with torch.inference_mode():
        before = other(x + mlp(norm(x)))
    assert fuse_layers(block, kernels) == 2  # the norm and the MLP, not the look-alike norm
    assert "forward" in vars(norm) and "forward" in vars(mlp) and "forward" not in vars(other)
    with torch.inference_mode():
        assert torch.equal(other(x + mlp(norm(x))), before)
