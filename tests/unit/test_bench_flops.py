"""FLOP accounting of the roofline: matches the real model's weights and a hand count of a workload."""

from __future__ import annotations

import pytest

from tests.bench.flops import ModelShape, workload_flops
from tests.bench.roofline import PREFILL_ROWS, roofline_tokens_per_s
from tests.bench.workloads import BenchRequest

SMOLLM2_135M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                "intermediate_size": 1536, "vocab_size": 49152}


def test_linear_flops_match_the_weights_of_the_real_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**SMOLLM2_135M, "num_hidden_layers": 2, "vocab_size": 1000}
    model = LlamaForCausalLM(LlamaConfig(**config, tie_word_embeddings=False))
    linear_weights = sum(m.weight.numel() for name, m in model.named_modules()
                         if type(m).__name__ == "Linear" and name != "lm_head")
    shape = ModelShape.from_config(config)
    assert shape.linear_flops_per_token == 2 * linear_weights
    assert shape.lm_head_flops == 2 * model.lm_head.weight.numel()


def test_smollm2_shape_has_its_published_size():
    shape = ModelShape.from_config(SMOLLM2_135M)
    assert shape.head_dim == 64 and shape.kv_heads == 3
    assert shape.parameters == pytest.approx(134.5e6, rel=0.01)  # embeddings tied to lm_head: counted once


def test_workload_flops_by_hand_for_one_request():
    shape = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
    per_token = shape.linear_flops_per_token
    attention = 4 * shape.heads * shape.head_dim * shape.layers  # per attended position
    flops = workload_flops(shape, [BenchRequest(prompt_ids=(1, 2, 3), max_tokens=3, reusable_prefix=2)])
    # prompt positions 2 (attends to 3) computed, first two cached; logits once for the first output token
    assert flops.prefill == per_token + 3 * attention + shape.lm_head_flops
    # two more output tokens at positions 3 and 4 (attending to 4 and 5 positions)
    assert flops.decode == 2 * per_token + (4 + 5) * attention + 2 * shape.lm_head_flops
    assert flops.output_tokens == 3


def test_roofline_rate_charges_prefill_and_decode_at_their_own_batch_rates():
    shape = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
    flops = workload_flops(shape, [BenchRequest((1,) * 10, 5)] * 4)
    rates = {PREFILL_ROWS: 2e9, 4: 1e9}
    expected_seconds = flops.prefill / 2e9 + flops.decode / 1e9
    assert roofline_tokens_per_s(flops, rates, 4) == pytest.approx(20 / expected_seconds)


def test_shared_layout_is_the_engines_and_has_the_same_flops():
    """The roofline also times the layout our engine runs; it must be that layout, at equal work."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from worker.engine.fused_projections import share_projection_matmuls

    config = {**SMOLLM2_135M, "num_hidden_layers": 2, "vocab_size": 1000}
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    shape = ModelShape.from_config(config)
    groups = share_projection_matmuls(model)
    assert len(groups) == 2 * shape.layers  # q|k|v and gate|up in every layer
    engine_layer = sorted([tuple(reversed(group.weight.shape)) for group in groups[:2]]
                          + [(576, 576), (1536, 576)])  # o_proj and down_proj stay single
    assert sorted(shape.shared_layer_linears()) == engine_layer
    assert sum(i * o for i, o in shape.shared_layer_linears()) == sum(i * o for i, o in shape.layer_linears())


def test_prefill_rate_times_the_layers_only_and_decode_rates_include_lm_head(monkeypatch):
    """A prompt needs logits at its last position only: prefill must not be charged lm_head's rate."""
    from tests.bench import roofline

    shape = ModelShape(hidden=16, layers=2, heads=2, kv_heads=1, head_dim=8, intermediate=32, vocab=1000)
    widths: dict[int, set[int]] = {}

    def one_timing(one_pass, min_seconds: float) -> float:
        outputs = one_pass()
        widths.setdefault(outputs[0].shape[0], set()).add(outputs[-1].shape[1])
        return 1.0  # seconds: the rate is then the FLOPs counted per pass

    monkeypatch.setattr(roofline, "_fastest_pass", one_timing)
    rates = roofline.measure_matmul_rates(shape, "float32", [4, PREFILL_ROWS], threads=1)
    assert widths == {4: {1000}, PREFILL_ROWS: {16}}  # the last product: lm_head, or down_proj
    assert rates[4] == 4 * (shape.linear_flops_per_token + shape.lm_head_flops)
    assert rates[PREFILL_ROWS] == PREFILL_ROWS * shape.linear_flops_per_token
