"""The model shapes and training budgets of each preset, and the transformers config they make.

Training budgets are step counts, never wall-clock limits, so a build is reproducible on a
slower or busier machine (it just takes longer there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from worker.demo_model.tokenizer import TokenizerSpec

PresetName = Literal["demo", "tiny", "bench-135m"]
Arch = Literal["llama", "qwen2"]
ARCHS: tuple[Arch, ...] = ("llama", "qwen2")


@dataclass(frozen=True)
class TrainingBudget:
    steps: int
    batch_size: int
    seq_len: int
    learning_rate: float
    warmup_steps: int
    log_every: int
    margin_weight: float = 0.2  # of the top-1/top-2 logit gap hinge (see training.py)


@dataclass(frozen=True)
class Preset:
    """`tied_embeddings[arch]`: whether lm_head shares the embedding matrix (both layouts get tested)."""

    tokenizer: TokenizerSpec
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float
    initializer_range: float
    tied_embeddings: dict[Arch, bool]
    training: TrainingBudget | None  # None: random init, no training


# Small models spend most of their training time in the lm_head, so the trained presets share a
# small vocabulary (and so one cached tokenizer).
PROSE_4K = TokenizerSpec(vocab_size=4096, corpus="docstrings")
# SmolLM2's vocab size, so the bench model's embedding and lm_head FLOPs match the real model's.
SOURCES_49K = TokenizerSpec(vocab_size=49152, corpus="sources")

PRESETS: dict[PresetName, Preset] = {
    "tiny": Preset(
        tokenizer=PROSE_4K,
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=192,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        initializer_range=0.02,
        tied_embeddings={"llama": False, "qwen2": True},
        training=TrainingBudget(
            steps=100, batch_size=16, seq_len=128, learning_rate=1e-2, warmup_steps=10, log_every=20
        ),
    ),
    # Narrower than a "real" small model on purpose: at 1-2 CPU minutes of training, hidden 128
    # reaches loss ~4 and text-like greedy output where hidden 256 is still at "the the the".
    "demo": Preset(
        tokenizer=PROSE_4K,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=384,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        initializer_range=0.02,
        tied_embeddings={"llama": False, "qwen2": True},
        training=TrainingBudget(
            steps=300, batch_size=8, seq_len=256, learning_rate=1e-2, warmup_steps=20, log_every=25,
            margin_weight=0.0,  # read by people, not compared by tests: plain language modelling
        ),
    ),
    # The shape of SmolLM2-135M (its config.json), context trimmed to 2048.
    "bench-135m": Preset(
        tokenizer=SOURCES_49K,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        initializer_range=0.041666666666666664,
        tied_embeddings={"llama": True, "qwen2": True},
        training=None,
    ),
}


@dataclass(frozen=True)
class SpecialIds:
    end_of_text: int
    im_end: int


def model_config(preset: Preset, arch: Arch, vocab_size: int, ids: SpecialIds) -> PretrainedConfig:
    """The transformers config of `preset` in architecture `arch` (Qwen2 adds q/k/v biases)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
        initializer_range=preset.initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=preset.tied_embeddings[arch],
        bos_token_id=ids.end_of_text,
        eos_token_id=ids.end_of_text,
        pad_token_id=ids.end_of_text,
    )
    if arch == "llama":
        return LlamaConfig(**common, architectures=["LlamaForCausalLM"])
    return Qwen2Config(
        **common, architectures=["Qwen2ForCausalLM"], use_sliding_window=False, sliding_window=None
    )
