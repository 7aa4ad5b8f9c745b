"""Other decoder-only architectures run unchanged through the paged attention: tiny random models.

Each brings something Llama does not: Mistral a sliding attention window (smaller than the prompts
here), Qwen3 per-head q/k norms, Phi-3 fused qkv/gate_up projections, Gemma 2 logit soft-capping
in attention and on the final logits (with alternating windows), Gemma 3 a query scale of its own
and q/k norms (and, as its multimodal checkpoints are, a language model nested in a
vision-language one: text prompts only), StableLM decoder layers that do not pass keyword
arguments on to attention, GPT-2 learned positions and Conv1D projections, GPT-NeoX partial rotary
and parallel residuals, OPT position offsets, Granite embedding/residual/attention/logit
multipliers, Mixtral experts, Cohere a logit scale. Random weights with a large init range give
decisive logits, so greedy comparisons stay meaningful.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from tests.engine.harness import drive, greedy_reference, request
from worker.engine import create_engine
from worker.engine_config import EngineConfig

SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2)
GPT2_SHAPE = dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.2)
CONFIGS = {
    "mistral-sliding-window": dict(model_type="mistral", **SHAPE, sliding_window=12),
    "qwen3": dict(model_type="qwen3", **SHAPE, head_dim=16),
    "phi3": dict(model_type="phi3", **SHAPE, pad_token_id=0),
    "gemma2-softcapping": dict(model_type="gemma2", **SHAPE, head_dim=16, sliding_window=12,
                               attn_logit_softcapping=2.0, final_logit_softcapping=3.0, tie_word_embeddings=False),
    "gemma3": dict(model_type="gemma3_text", **SHAPE, head_dim=16, sliding_window=12, query_pre_attn_scalar=7,
                   tie_word_embeddings=False),
    "gemma3-multimodal": dict(model_type="gemma3", text_config=dict(**SHAPE, head_dim=16, sliding_window=12),
                              vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=28, patch_size=14),
                              mm_tokens_per_image=4, tie_word_embeddings=False),
    "stablelm": dict(model_type="stablelm", **SHAPE, qk_layernorm=True, partial_rotary_factor=0.25),
    "gpt2": dict(model_type="gpt2", **GPT2_SHAPE),
    "gpt-neox": dict(model_type="gpt_neox", **{k: v for k, v in SHAPE.items() if k != "num_key_value_heads"}),
    "opt": dict(model_type="opt", vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=64, init_std=0.2),
    "granite-multipliers": dict(model_type="granite", **SHAPE, attention_multiplier=0.3, logits_scaling=4.0,
                                embedding_multiplier=2.0, residual_multiplier=0.5),
    "mixtral": dict(model_type="mixtral", **SHAPE, num_local_experts=4, num_experts_per_tok=2),
    "cohere": dict(model_type="cohere", **SHAPE, logit_scale=0.3),
}


def save_random_model(name: str, path) -> None:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIGS[name]))
    model.save_pretrained(path)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def random_model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_random_model(request.param, path)
    return path


def assert_greedy_output_matches_generate(model_dir, config: EngineConfig) -> None:
    engine = create_engine(str(model_dir), config, eos_token_ids=[], num_blocks=256)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (length,), generator=generator).tolist() for length in (30, 7, 19)]
    results = drive(engine, {0: [request("a", prompts[0], 12), request("b", prompts[1], 16)],
                             2: [request("c", prompts[2], 10)]})
    for name, prompt, limit in zip("abc", prompts, (12, 16, 10)):
        assert results[name].token_ids == greedy_reference(model_dir, prompt, limit, stop_at_eos=False)


def test_greedy_output_matches_generate(random_model_dir):
    assert_greedy_output_matches_generate(random_model_dir, EngineConfig(dtype="float32", block_size=4,
                                                                         max_num_batched_tokens=24))


def test_soft_capping_without_the_compiled_kernels(tmp_path):
    """Decode contexts then come from the decode workspace rather than from the block tables."""
    save_random_model("gemma2-softcapping", tmp_path)
    config = EngineConfig(dtype="float32", block_size=4, max_num_batched_tokens=24, cpu_kernels=False)
    assert_greedy_output_matches_generate(tmp_path, config)
