"""The rotary-embedding kernel (cpu_kernels/rotary_embedding.cpp) against transformers' own
`apply_rotary_pos_emb`, bit for bit, and the swap (worker/engine/rotary_attention.py) that puts it
in a model's attention modules only where they compute exactly what they computed before."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GlmConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from worker.engine.cpu_kernels import rotary_embedding_kernel
from worker.engine.rotary_attention import rotate_attention_embeddings

rotary = rotary_embedding_kernel()
pytestmark = pytest.mark.skipif(rotary is None, reason="the CPU kernels are not built here")

SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
SAME_ATTENTION = {  # Llama's attention forward, give or take a sliding window or a scale
    "llama": lambda: LlamaConfig(**SHAPE),
    "qwen2": lambda: Qwen2Config(**SHAPE),
    "mistral-sliding-window": lambda: MistralConfig(**SHAPE, sliding_window=5),
    "gemma": lambda: GemmaConfig(**SHAPE, head_dim=16),
}
OTHER_ATTENTION = {
    "qwen3-query-key-norms": lambda: Qwen3Config(**SHAPE, head_dim=16),
    "glm-partial-interleaved-rotation": lambda: GlmConfig(**SHAPE, head_dim=16, pad_token_id=0),
}


def _rope_inputs(tokens, heads, kv_heads, head_dim, dtype, seed=0):
    """q and k as strided column slices of one wide product (as shared projections give them), and
    cos/sin of real rotary angles."""
    generator = torch.Generator().manual_seed(seed)
    wide = torch.randn(1, tokens, (heads + 2 * kv_heads) * head_dim, generator=generator).mul(3).to(dtype)
    queries, keys = wide[..., : heads * head_dim], wide[..., heads * head_dim: (heads + kv_heads) * head_dim]
    inverse_frequencies = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(tokens).float()[None, :, None] * inverse_frequencies
    angles = torch.cat((angles, angles), dim=-1)
    return queries, keys, angles.cos().to(dtype), angles.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("tokens, heads, kv_heads, head_dim",
                         [(32, 9, 3, 64), (2048, 9, 3, 64), (5, 4, 2, 128), (3, 2, 1, 40), (7, 2, 2, 18)])
def test_kernel_rotates_exactly_as_transformers(dtype, tokens, heads, kv_heads, head_dim):
    queries, keys, cos, sin = _rope_inputs(tokens, heads, kv_heads, head_dim, dtype)
    expected_q, expected_k = apply_rotary_pos_emb(queries.unflatten(-1, (heads, head_dim)).transpose(1, 2),
                                                  keys.unflatten(-1, (kv_heads, head_dim)).transpose(1, 2), cos, sin)
    actual_q, actual_k = rotary(queries, keys, cos, sin, head_dim)
    assert actual_q.shape == (1, heads, tokens, head_dim) and actual_k.shape == (1, kv_heads, tokens, head_dim)
    assert actual_q.is_contiguous() and actual_k.is_contiguous()
    assert torch.equal(actual_q, expected_q) and torch.equal(actual_k, expected_k)


def test_kernel_rotates_each_batch_row_at_its_own_angles():
    queries, keys, cos, sin = _rope_inputs(6, 4, 2, 32, torch.float32)
    queries, keys = torch.cat([queries, queries.flip(1)]), torch.cat([keys, keys.flip(1)])
    cos, sin = torch.cat([cos, cos.flip(1)]), torch.cat([sin, sin.flip(1)])
    expected = apply_rotary_pos_emb(queries.unflatten(-1, (4, 32)).transpose(1, 2),
                                    keys.unflatten(-1, (2, 32)).transpose(1, 2), cos, sin)
    for actual, wanted in zip(rotary(queries, keys, cos, sin, 32), expected):
        assert torch.equal(actual, wanted)


@pytest.mark.parametrize("change, message", [
    (lambda q, k, c, s: (q, k, c, s, 63), "head_dim must be positive and even"),
    (lambda q, k, c, s: (q, k, c[..., :32], s[..., :32], 64), "cos and sin must be contiguous"),
    (lambda q, k, c, s: (q.double(), k, c, s, 64), "in cos's dtype"),
    (lambda q, k, c, s: (q.half(), k.half(), c.half(), s.half(), 64), "supports float32 and bfloat16"),
    (lambda q, k, c, s: (q, k[:, :3], c, s, 64), "one row per token of k"),
])
def test_kernel_refuses_what_it_cannot_rotate(change, message):
    with pytest.raises(RuntimeError, match=message):
        rotary(*change(*_rope_inputs(4, 2, 1, 64, torch.float32)))


def _random_model(make_config, dtype=torch.float32):
    config = make_config()
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _attention_modules(model):
    return [layer.self_attn for layer in model.model.layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(SAME_ATTENTION))
def test_llama_shaped_attention_rotates_in_the_kernel_and_the_logits_stay_the_same(name, dtype):
    model = _random_model(SAME_ATTENTION[name], dtype)
    input_ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        before = model(input_ids).logits
        assert rotate_attention_embeddings(model, rotary) == 2
        after = model(input_ids).logits
    assert all("forward" in vars(module) for module in _attention_modules(model))
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", sorted(OTHER_ATTENTION))
def test_attention_that_computes_otherwise_keeps_its_own_forward(name):
    model = _random_model(OTHER_ATTENTION[name])
    assert rotate_attention_embeddings(model, rotary) == 0
    assert not any("forward" in vars(module) for module in _attention_modules(model))


def test_the_check_leaves_every_module_on_the_models_own_config():
    model = _random_model(SAME_ATTENTION["llama"])
    rotate_attention_embeddings(model, rotary)
    assert all(module.config is model.config for module in _attention_modules(model))
    assert model.config._attn_implementation == "sdpa"


def test_engines_rotate_in_the_kernel_in_both_dtypes(make_engine):
    float32, bfloat16 = make_engine(), make_engine(dtype="bfloat16")
    layers = float32.runner.model_config.num_hidden_layers
    assert float32.runner.rotary_modules == bfloat16.runner.rotary_modules == layers
    assert make_engine(cpu_kernels=False).runner.rotary_modules == 0


def test_angles_the_kernel_cannot_read_run_the_original_forward():
    """A swapped module handed angles laid out otherwise than the kernel reads computes as before."""
    model = _random_model(SAME_ATTENTION["llama"])
    module = _attention_modules(model)[0]
    hidden = torch.randn(1, 6, 64)
    angles = torch.rand(1, 8, 6).repeat(1, 2, 1).transpose(1, 2)  # [1, 6, 16], not contiguous
    strided = (angles.cos(), angles.sin())
    assert not strided[0].is_contiguous()
    with torch.inference_mode():
        expected, _ = module(hidden, position_embeddings=strided, attention_mask=None)
        assert rotate_attention_embeddings(model, rotary) == 2
        actual, _ = module(hidden, position_embeddings=strided, attention_mask=None)
    assert torch.equal(actual, expected)
