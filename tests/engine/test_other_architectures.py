"""Other decoder-only architectures run unchanged through the paged attention: tiny random models.

Mistral brings a sliding attention window (smaller than the prompts here), Qwen3 per-head q/k
norms, Phi-3 fused qkv/gate_up projections. Random weights with a large init range give decisive
logits, so greedy comparisons stay meaningful.
"""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, Phi3Config, Qwen3Config

from tests.engine.harness import drive, greedy_reference, request
from worker.engine import create_engine
from worker.engine_config import EngineConfig

SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2)
CONFIGS = {
    "mistral-sliding-window": lambda: MistralConfig(**SHAPE, sliding_window=12),
    "qwen3": lambda: Qwen3Config(**SHAPE, head_dim=16),
    "phi3": lambda: Phi3Config(**SHAPE, pad_token_id=0),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def random_model_dir(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return path


def test_greedy_output_matches_generate(random_model_dir):
    config = EngineConfig(dtype="float32", block_size=4, max_num_batched_tokens=24)
    engine = create_engine(str(random_model_dir), config, eos_token_ids=[], num_blocks=256)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (length,), generator=generator).tolist() for length in (30, 7, 19)]
    results = drive(engine, {0: [request("a", prompts[0], 12), request("b", prompts[1], 16)],
                             2: [request("c", prompts[2], 10)]})
    for name, prompt, limit in zip("abc", prompts, (12, 16, 10)):
        assert results[name].token_ids == greedy_reference(random_model_dir, prompt, limit, stop_at_eos=False)
