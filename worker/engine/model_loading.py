"""Loads a checkpoint's config and causal LM with the paged attention, or says why it cannot.

Only transformers' built-in architectures load: a checkpoint's own modeling code never runs, and
transformers is never allowed to ask on a terminal whether it may (it would wait for an answer).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from worker.engine.attention_check import attention_not_paged
from worker.engine.paged_attention import ATTENTION_NAME
from worker.engine_api import UnsupportedModel


def load_config(model_dir: str) -> PretrainedConfig:
    """The config of a causal LM that transformers itself implements; UnsupportedModel otherwise."""
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except ValueError as error:  # code of its own, or a model type this transformers does not know
        if "trust_remote_code" in str(error):
            raise UnsupportedModel(f"{model_dir} needs modeling code of its own (config.json's auto_map) for an "
                                   "architecture transformers does not have; the worker runs only transformers' "
                                   "built-in architectures, never a checkpoint's code") from error
        raise UnsupportedModel(" ".join(str(error).split())) from error
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModel(f"{_architecture(config)} (model type {config.model_type!r}) is not a causal language "
                               "model that transformers' AutoModelForCausalLM loads: encoder-decoders, and multimodal "
                               "models whose language model transformers does not load alone, are not served")
    return config


def load_model(model_dir: str, config: PretrainedConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The model in `dtype` with every layer's attention set to the paged one (on the CPU)."""
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype,
                                                    attn_implementation=ATTENTION_NAME)
    except KeyError as error:  # GPT-J, Falcon: attention classes looked up by implementation name
        if error.args != (ATTENTION_NAME,):
            raise
        raise attention_not_paged(_architecture(config), "its modeling code picks attention classes of its own by "
                                                         f"name and has none named {ATTENTION_NAME!r}") from error


def _architecture(config: PretrainedConfig) -> str:
    return ", ".join(config.architectures or [type(config).__name__])
