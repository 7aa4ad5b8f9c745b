"""Decoder layers that call their modules' forwards directly, where a load-time check shows the
layer computes exactly what its own forward does.

Llama-family decoder layers (Llama, Qwen2, Qwen3, Mistral, Gemma) are pre-norm residual blocks:
`h = x + self_attn(input_layernorm(x))`, then `h + mlp(post_attention_layernorm(h))`. Each of
those module calls goes through `nn.Module.__call__` (hook bookkeeping, and for the layer itself
transformers' gradient-checkpointing wrapper) before it reaches `forward`. The instance-level
forward here does the same block calling each module's `forward` itself, as the engine's own
attention and MLP forwards (rotary_attention.py, fused_layers.py) do for their projections.

The layer's own forward and the direct one, run on the same random input with SDPA as the
attention, must return the same tensor bit for bit, or the layer keeps its own forward: a layer
that does more (Gemma 2's extra norms, a residual scale) disagrees.

A direct call skips module hooks, so the model runner rewrites nothing (no swapped forward, no
shared or packed weights) in a model that has any (`has_hooks`). Hooks registered after loading
are not run by swapped forwards.

Why: at decode a step's 32 tokens make each call's fixed cost count. Measured on bench-135m in
bfloat16 (one layer at a step's 32 decode tokens, its real inputs, best of 5 x 300 calls,
/tmp/prof/layer_cost.py): 600-606 us through the module calls, 564-581 us with every module of
the layer called directly. In the engine (32 x 256-token prompts, 128 tokens out, three alternating
pairs) the bfloat16 decode step went from 27.7-28.3 to 26.6-27.2 ms; in float32 the difference
was within the VM's noise (means of four pairs: 48.8 ms with it, 48.4 without).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.nn.modules import module as torch_module

from worker.engine.agreement import attention_running, check_angles, check_rows, swap_agreeing_forwards

log = logging.getLogger(__name__)

_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_CHECK_TOKENS = 8


def has_hooks(model: torch.nn.Module) -> bool:
    """Whether any module hook is registered on the model's modules or globally."""
    global_hooks = (torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks,
                    torch_module._global_backward_hooks, torch_module._global_backward_pre_hooks)
    return any(global_hooks) or any(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        for module in model.modules())


def call_layers_directly(model: torch.nn.Module) -> int:
    """Swap every agreeing decoder layer's forward (the model has no hooks: `has_hooks`); returns
    how many were swapped."""
    return swap_agreeing_forwards(model, _direct_forward, _agrees, "direct layers")


def _direct_forward(layer: torch.nn.Module) -> Callable | None:
    if not _is_pre_norm_block(layer):
        return None
    first_norm, attention, second_norm, mlp = (getattr(layer, name) for name in _PARTS)

    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        # `.forward` is looked up on each call: a module's forward swapped later (packed weights) is the one run.
        attended, _ = attention.forward(
            hidden_states=first_norm.forward(hidden_states), attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + mlp.forward(second_norm.forward(hidden_states))

    return forward


def _is_pre_norm_block(layer: torch.nn.Module) -> bool:
    """The four parts and nothing else among the layer's children, and an attention with the
    `head_dim` and `config` the check needs."""
    children = {name for name, _ in layer.named_children()}
    attention = getattr(layer, "self_attn", None)
    return (children == set(_PARTS) and isinstance(getattr(attention, "head_dim", None), int)
            and hasattr(attention, "config"))


def _agrees(layer: torch.nn.Module, forward: Callable) -> bool:
    attention = layer.self_attn
    try:
        # Packed projections keep no plain weight (a meta placeholder): any other parameter tells.
        parameter = next(p for p in layer.parameters() if p.device.type != "meta")
        dtype, device = parameter.dtype, parameter.device
        hidden = check_rows(attention.config.hidden_size, dtype, device)[None, :_CHECK_TOKENS]
        embeddings = check_angles(attention.head_dim, _CHECK_TOKENS, dtype, device)
        with attention_running(attention, "sdpa"), torch.inference_mode():
            expected = layer.forward(hidden, attention_mask=None, position_embeddings=embeddings)
            actual = forward(hidden, attention_mask=None, position_embeddings=embeddings)
        expected = expected[0] if isinstance(expected, tuple) else expected
        return expected.shape == actual.shape and torch.equal(expected, actual)
    except Exception as error:  # anything the check cannot run: the layer keeps its forward
        log.info("direct layers: check failed on %s (%r)", type(layer).__name__, error)
        return False
