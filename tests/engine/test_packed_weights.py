"""Linears on pre-packed weights (worker/engine/packed_weights.py): each computes its own
`F.linear`, the plain copy is released (tied weights kept), and disagreement or an unsupported
device keeps the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

from worker.engine import packed_weights
from worker.engine.fused_projections import MAX_SHARED_ROWS, share_projection_matmuls
from worker.engine.packed_weights import can_pack, pack_linears

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32),
                                reason="this torch has no oneDNN weight packing")


def _where_packable(dtype: torch.dtype):
    """`dtype` as a test parameter, skipped where oneDNN has no packed layout for it on this CPU
    (bfloat16 needs AVX512BW/VL/DQ or AVX-NE-CONVERT; an AVX2-only CPU keeps it plain)."""
    return pytest.param(dtype, id=str(dtype).removeprefix("torch."),
                        marks=pytest.mark.skipif(not can_pack(torch.device("cpu"), dtype),
                                                 reason=f"oneDNN cannot pack {dtype} on this CPU"))


PACKABLE_DTYPES = [_where_packable(torch.float32), _where_packable(torch.bfloat16)]


class _Tied(torch.nn.Module):
    """An embedding and an lm_head sharing one Parameter, plus a lone projection with a bias."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 32)
        self.proj = torch.nn.Linear(32, 48, bias=True)
        self.head = torch.nn.Linear(32, 50, bias=False)
        self.head.weight = self.embed.weight
        self.to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    step = torch.finfo(dtype).eps * 4
    scale = expected.float().abs().max()
    assert (actual.float() - expected.float()).abs().max() <= step * scale


@pytest.mark.parametrize("dtype", PACKABLE_DTYPES)
@pytest.mark.parametrize("rows", [1, 32, 600])
def test_packed_linears_compute_their_own_products(dtype, rows):
    model = _Tied(dtype)
    weights = {name: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
               for name, m in (("proj", model.proj), ("head", model.head))}
    assert pack_linears(model) == 2
    x = torch.randn(2, rows, 32).to(dtype)
    with torch.inference_mode():
        for name, (weight, bias) in weights.items():
            _assert_close(getattr(model, name)(x), F.linear(x, weight, bias), dtype)


def test_plain_weights_are_released_but_tied_ones_stay():
    model = _Tied(torch.float32)
    pack_linears(model)
    assert model.proj.weight.device.type == "meta"  # no second copy of the model in memory
    assert model.proj.weight.shape == (48, 32) and model.proj.weight.dtype == torch.float32
    assert model.head.weight is model.embed.weight and model.embed.weight.device.type == "cpu"
    with torch.inference_mode():
        model.embed(torch.tensor([3, 4]))  # the embeddings still read the tied weight


def test_a_linear_that_disagrees_with_its_packed_product_stays_plain(monkeypatch):
    real = packed_weights.PackedProduct.__call__
    monkeypatch.setattr(packed_weights.PackedProduct, "__call__", lambda self, x: real(self, x) * 1.1)
    model = _Tied(torch.float32)
    assert pack_linears(model) == 0
    assert "forward" not in vars(model.proj) and model.proj.weight.device.type == "cpu"


@pytest.fixture
def onednn_without_packing(monkeypatch):
    """A oneDNN with no packed layout for this CPU (another CPU family): reordering raises."""
    def cannot_reorder(weight, *args):
        raise RuntimeError("no packed layout for this CPU")

    packed_weights._onednn_packs.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", cannot_reorder)
    yield
    monkeypatch.undo()
    packed_weights._onednn_packs.cache_clear()


def test_a_onednn_that_cannot_pack_leaves_every_linear_plain(onednn_without_packing, make_engine):
    assert not can_pack(torch.device("cpu"), torch.float32)
    model = _Tied(torch.float32)
    assert pack_linears(model) == 0
    assert "forward" not in vars(model.proj) and model.proj.weight.device.type == "cpu"
    engine = make_engine()  # loads and serves on plain weights instead of failing
    assert engine.runner.packed_linears == 0
    assert not any(p.device.type == "meta" for p in engine.runner.model.parameters())


def test_packing_is_only_offered_where_it_exists():
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("cuda"), torch.float32)
    swapped = torch.nn.Linear(4, 4)
    swapped.forward = lambda x: x  # already computed elsewhere: packing would undo that
    assert not packed_weights.packable(swapped)
    assert not packed_weights.packable(type("Special", (torch.nn.Linear,), {})(4, 4))


def _qwen2_attention(dtype: torch.dtype) -> torch.nn.Module:
    """With q/k/v biases."""
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return Qwen2Attention(config, layer_idx=0).to(dtype)


@pytest.mark.parametrize("dtype", PACKABLE_DTYPES)
@pytest.mark.parametrize("rows", [32, MAX_SHARED_ROWS + 100])
def test_a_packed_projection_group_returns_each_projection_from_one_product(rows, dtype, monkeypatch):
    attention = _qwen2_attention(dtype)
    linears = [attention.q_proj, attention.k_proj, attention.v_proj]
    own = [(p.weight.detach().clone(), p.bias.detach().clone()) for p in linears]
    (group,) = share_projection_matmuls(attention)
    assert group.pack()
    assert all(p.weight.device.type == "meta" for p in linears)
    products = []
    real = packed_weights.PackedProduct.__call__
    monkeypatch.setattr(packed_weights.PackedProduct, "__call__",
                        lambda self, x: products.append(x.shape) or real(self, x))
    x = torch.randn(rows, 64).to(dtype)
    with torch.inference_mode():
        outputs = [p(x) for p in linears]
    assert len(products) == 1  # packed, one wide product at every row count
    for output, (weight, bias) in zip(outputs, own):
        _assert_close(output, F.linear(x, weight, bias), dtype)


@pytest.mark.parametrize("dtype", PACKABLE_DTYPES)
def test_engines_pack_every_linear_unless_turned_off(make_engine, dtype):
    dtype = str(dtype).removeprefix("torch.")
    packed, plain = make_engine(dtype=dtype), make_engine(dtype=dtype, packed_weights=False)
    layers = packed.runner.model_config.num_hidden_layers
    # the q/k/v and gate/up groups once each, o and down, and lm_head.
    assert packed.runner.packed_linears == 4 * layers + 1
    assert plain.runner.packed_linears == 0
    assert not any(p.device.type == "meta" for p in plain.runner.model.parameters())
