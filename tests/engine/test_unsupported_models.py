"""Models the paged engine cannot run correctly are refused at load time, with the reason.

Without the checks, tiny random CodeGen (attention in its own code), Falcon-H1 (Mamba mixers beside
attention in every layer) and Llama 4 (chunked attention) loaded, ran and generated text different
from transformers'."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from worker.engine import create_engine
from worker.engine_api import UnsupportedModel
from worker.engine_config import EngineConfig

GPT_SHAPE = dict(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512, rotary_dim=8)
LAYERS = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
REFUSED = {
    # name: (config fields, model_type included; words the refusal must contain)
    "codegen": (dict(model_type="codegen", **GPT_SHAPE), ["CodeGenForCausalLM", "computes attention itself"]),
    "gptj": (dict(model_type="gptj", **GPT_SHAPE), ["GPTJForCausalLM", "attention classes of its own"]),
    "jamba": (dict(model_type="jamba", **LAYERS, num_experts=2, attn_layer_period=2, attn_layer_offset=1,
                   expert_layer_period=2), ["JambaForCausalLM", "outside attention (JambaMambaDecoderLayer"]),
    "falcon-h1": (dict(model_type="falcon_h1", **LAYERS, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                       mamba_n_groups=1, mamba_d_state=8),
                  ["FalconH1ForCausalLM", "outside attention (FalconH1Mixer)"]),
    "llama4": (dict(model_type="llama4_text", **LAYERS, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
                    intermediate_size_mlp=128, attention_chunk_size=8, no_rope_layers=[1, 0]),
               ["Llama4ForCausalLM", "chunked attention"]),
    "mamba": (dict(model_type="mamba", vocab_size=512, hidden_size=64, num_hidden_layers=2),
              ["MambaForCausalLM", "no attention heads"]),
    "t5": (dict(model_type="t5", vocab_size=512, d_model=64, d_ff=128, num_layers=1, num_heads=4),
           ["T5", "'t5'", "not a causal language model"]),
}


def save_random_model(fields: dict, path) -> None:
    config = AutoConfig.for_model(**fields)
    if config.model_type == "t5":  # no causal LM class: saving the config is enough
        config.save_pretrained(path)
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_engine_refuses_the_model_and_says_why(name, tmp_path):
    fields, words = REFUSED[name]
    save_random_model(fields, tmp_path)
    with pytest.raises(UnsupportedModel) as refused:
        create_engine(str(tmp_path), EngineConfig(dtype="float32"), eos_token_ids=[], num_blocks=16)
    for word in words:
        assert word in str(refused.value)


def test_a_layer_that_skips_the_attention_interface_is_named(tmp_path):
    """A model whose attention goes through the interface in some layers only (a hybrid of a kind the
    other checks do not know) is refused with the layers that did."""
    from worker.engine.attention_check import check_paged_attention
    from worker.engine.decode_workspace import DecodeWorkspace
    from worker.engine.kv_cache import KVCache, KVShape
    from worker.engine.paged_attention import ATTENTION_NAME

    save_random_model(dict(model_type="llama", **LAYERS), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=ATTENTION_NAME)
    model.model.layers[1].self_attn.forward = lambda hidden_states, **_: (torch.zeros_like(hidden_states), None)
    cache = KVCache(KVShape.of(model.config), 4, 4, torch.float32, torch.device("cpu"))
    with pytest.raises(UnsupportedModel, match=r"only layers \[0\] of 2 called the attention interface"):
        check_paged_attention(model, cache, DecodeWorkspace(cache, max_bytes=cache.num_bytes))


def test_a_checkpoint_that_needs_its_own_code_is_refused_without_running_or_asking(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "made-up", "architectures": ["MadeUpForCausalLM"],
         "auto_map": {"AutoConfig": "configuration_made_up.MadeUpConfig"}}))
    (tmp_path / "configuration_made_up.py").write_text("raise SystemExit('the checkpoint code ran')\n")
    with pytest.raises(UnsupportedModel, match="never a checkpoint's code"):
        create_engine(str(tmp_path), EngineConfig(dtype="float32"), eos_token_ids=[], num_blocks=16)
    assert "Do you wish to run the custom code?" not in capsys.readouterr().out  # transformers' prompt


def test_the_worker_exits_with_the_reason_and_no_traceback(tmp_path, tiny_llama_dir):
    save_random_model(REFUSED["codegen"][0], tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a tokenizer that loads: the model is refused
        shutil.copy(tiny_llama_dir / name, tmp_path / name)
    env = {**os.environ, "FERRUM_INFER_METRICS_PORT": "0", "FERRUM_INFER_DTYPE": "float32"}
    worker = subprocess.run([sys.executable, "-m", "worker", "--model-path", str(tmp_path),
                             "--scheduler-addr", "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 1
    assert f"cannot serve {tmp_path}: CodeGenForCausalLM cannot run on the paged KV cache" in worker.stderr
    assert "Traceback" not in worker.stderr
