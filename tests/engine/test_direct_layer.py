"""Decoder layers that call their modules' forwards directly (worker/engine/direct_layer.py): only
where the layer computes exactly what it computed before, and never on a model with hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)

from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from services.types import GenerateRequest, SamplingParams
from worker.engine.cpu_kernels import rotary_embedding_kernel
from worker.engine.direct_layer import call_layers_directly, has_hooks
from worker.engine.fused_projections import share_projection_matmuls
from worker.engine.rotary_attention import rotate_attention_embeddings

rotary = rotary_embedding_kernel()

SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
PRE_NORM_BLOCKS = {
    "llama": lambda: LlamaConfig(**SHAPE),
    "qwen2": lambda: Qwen2Config(**SHAPE),
    "qwen3": lambda: Qwen3Config(**SHAPE, head_dim=16),
    "mistral-sliding-window": lambda: MistralConfig(**SHAPE, sliding_window=5),
    "gemma": lambda: GemmaConfig(**SHAPE, head_dim=16),
}


def _random_model(make_config, dtype=torch.float32, attention="sdpa"):
    config = make_config()
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _logits(model):
    input_ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        return model(input_ids).logits


def _swapped(model):
    return ["forward" in vars(layer) for layer in model.model.layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(PRE_NORM_BLOCKS))
def test_pre_norm_layers_call_their_modules_directly_and_the_logits_stay_the_same(name, dtype):
    model = _random_model(PRE_NORM_BLOCKS[name], dtype)
    before = _logits(model)
    assert call_layers_directly(model) == 2
    assert _swapped(model) == [True, True]
    assert torch.equal(_logits(model), before)


class ScaledResidualLayer(LlamaDecoderLayer):
    """Llama's four parts, but the attention's output halved before the residual add."""

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                     position_embeddings=position_embeddings, **kwargs)
        hidden_states = hidden_states + 0.5 * attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


def test_a_layer_that_computes_otherwise_keeps_its_own_forward():
    model = _random_model(PRE_NORM_BLOCKS["llama"])
    model.model.layers[0].__class__ = ScaledResidualLayer
    before = _logits(model)
    assert call_layers_directly(model) == 1
    assert _swapped(model) == [False, True]
    assert torch.equal(_logits(model), before)


def test_a_layer_with_other_parts_keeps_its_own_forward():
    model = _random_model(lambda: Gemma2Config(**SHAPE, head_dim=16), attention="eager")  # four norms a layer
    assert call_layers_directly(model) == 0
    assert _swapped(model) == [False, False]


def test_module_and_global_hooks_count_as_hooks():
    model = _random_model(PRE_NORM_BLOCKS["llama"])
    assert not has_hooks(model)
    handle = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda module, args, output: None)
    assert has_hooks(model)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        assert has_hooks(model)
    finally:
        handle.remove()


def test_an_engine_loading_a_model_with_hooks_rewrites_nothing_and_its_hooks_run(make_engine):
    """A global hook is on every module when the runner loads the model, as accelerate's would be."""
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: calls.append(type(module).__name__))
    try:
        engine = make_engine(dtype="bfloat16")
        runner = engine.runner
        assert (runner.direct_layers, runner.rotary_modules, runner.fused_modules, runner.shared_matmuls,
                runner.packed_linears, runner.compiled_layers) == (0, 0, 0, 0, 0, 0)
        engine.add_request(GenerateRequest("r", "tiny", [20, 21, 22], SamplingParams(max_tokens=2)))
        calls.clear()
        while engine.has_unfinished():
            engine.step()
    finally:
        handle.remove()
    assert "Linear" in calls and any(name.endswith("DecoderLayer") for name in calls)


def test_the_check_leaves_every_attention_on_the_models_own_config():
    model = _random_model(PRE_NORM_BLOCKS["llama"])
    call_layers_directly(model)
    assert all(layer.self_attn.config is model.config for layer in model.model.layers)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(rotary is None, reason="the CPU kernels are not built here")
def test_shared_projections_called_directly_still_give_each_sibling_its_own_slice():
    """The rotary forward calls q/k/v's forwards directly: siblings of one shared product still
    return what their own Linears do."""
    model = _random_model(PRE_NORM_BLOCKS["qwen2"], torch.bfloat16)  # q/k/v with biases
    before = _logits(model)
    assert share_projection_matmuls(model)
    assert rotate_attention_embeddings(model, rotary) == 2
    assert call_layers_directly(model) == 2
    torch.testing.assert_close(_logits(model), before, atol=0.05, rtol=0)


def test_engines_call_every_layer_directly_in_both_dtypes(make_engine):
    float32, bfloat16 = make_engine(), make_engine(dtype="bfloat16")
    layers = float32.runner.model_config.num_hidden_layers
    assert float32.runner.direct_layers == bfloat16.runner.direct_layers == layers
    assert make_engine(cpu_kernels=False).runner.direct_layers == layers  # no kernel needed
