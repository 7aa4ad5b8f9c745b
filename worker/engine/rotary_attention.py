"""Runs a Llama-shaped attention module's rotary position embedding through the compiled kernel
(cpu_kernels/rotary_embedding.cpp), where checks on the module itself show nothing else changes.

transformers' modeling code stays as it is: an attention module with q/k/v/o projections and a
`head_dim` gets an instance-level forward that does what Llama's does (project, rotate the queries
and keys, call the configured attention function, project the output), with the rotation as one
kernel call instead of the modeling file's `apply_rotary_pos_emb`. Before the swap, two checks:
- the kernel returns exactly (bit for bit) what that module's own `apply_rotary_pos_emb` returns,
  on random queries, keys and angles: an architecture that rotates otherwise (interleaved pairs,
  a partial rotary dimension) disagrees;
- the original forward and the new one, run on the same random input through a recording
  attention function, hand it the same arguments and return the same output: a module that does
  more (a norm on the queries, clipping, another scale) disagrees.
A disagreeing module keeps its own forward. Float32 included: the kernel rounds as torch does, so
the greedy-exactness oracle still holds (its tests run with the kernel).

Why: at decode the twelve small operations of transformers' RoPE cost their dispatch, not their
arithmetic. Measured in-process on bench-135m, bfloat16, 32 tokens of one decode step: 39 us a layer
as torch's operations, 7.4 us as the kernel (30 layers: about 1 ms of a 30 ms step).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from worker.engine.agreement import agrees, attention_running, check_angles, check_rows, swap_agreeing_forwards
from worker.engine.cpu_kernels import RotaryEmbedding

log = logging.getLogger(__name__)

_CHECK_NAME = "ferrum_rotary_check"  # the recording attention function the load-time check runs through
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_CHECK_TOKENS = 8
_CHECK_HEADS = 3  # the rotation is per head: any count checks it


def rotate_attention_embeddings(model: torch.nn.Module, rotary: RotaryEmbedding) -> int:
    """Swap every agreeing attention module's forward; returns how many were swapped."""
    def faster_forward(module: torch.nn.Module) -> Callable | None:
        return _rotary_forward(module, rotary, module.forward) if _is_llama_shaped(module) else None

    def agree(module: torch.nn.Module, forward: Callable) -> bool:
        return _agrees(module, module.forward, forward, rotary)

    return swap_agreeing_forwards(model, faster_forward, agree, "rotary kernel")


def _rotary_forward(module: torch.nn.Module, rotary: RotaryEmbedding, original: Callable) -> Callable:
    head_dim = module.head_dim
    extra = window_argument(module)
    q_proj, k_proj, v_proj, o_proj = (getattr(module, name) for name in _PROJECTIONS)

    def forward(hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values=None, **kwargs):
        implementation = module.config._attn_implementation
        if (past_key_values is not None or not _kernel_reads(hidden_states, position_embeddings)
                or implementation not in ALL_ATTENTION_FUNCTIONS):
            return original(hidden_states=hidden_states, position_embeddings=position_embeddings,
                            attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)
        input_shape = hidden_states.shape[:-1]
        cos, sin = position_embeddings
        # The projections' forwards called directly (direct_layer.py says why and when that is safe).
        query, key = rotary(q_proj.forward(hidden_states), k_proj.forward(hidden_states), cos, sin, head_dim)
        value = v_proj.forward(hidden_states).view(*input_shape, -1, head_dim).transpose(1, 2)
        output, weights = ALL_ATTENTION_FUNCTIONS[implementation](
            module, query, key, value, attention_mask,
            dropout=0.0 if not module.training else module.attention_dropout,
            scaling=module.scaling, **extra, **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return o_proj.forward(output), weights

    return forward


def _kernel_reads(hidden_states: torch.Tensor, position_embeddings) -> bool:
    """What the kernel takes (anything else, a multimodal rotary's extra axis say, runs the original)."""
    if position_embeddings is None or hidden_states.dim() != 3 or hidden_states.device.type != "cpu":
        return False
    cos, sin = position_embeddings
    return (cos.dim() == 3 and cos.dtype == hidden_states.dtype and sin.dtype == cos.dtype
            and cos.is_contiguous() and sin.is_contiguous())


def window_argument(module: torch.nn.Module) -> dict:
    """The sliding window the original forward hands the attention function: Qwen2's modules pass
    their own layer's, Mistral's the config's, Llama's none (the load-time check confirms which)."""
    if hasattr(module, "sliding_window"):
        return {"sliding_window": module.sliding_window}
    if hasattr(module.config, "sliding_window"):
        return {"sliding_window": module.config.sliding_window}
    return {}


def _is_llama_shaped(module: torch.nn.Module) -> bool:
    parameters = inspect.signature(module.forward).parameters
    return (all(isinstance(getattr(module, name, None), torch.nn.Module) for name in _PROJECTIONS)
            and isinstance(getattr(module, "head_dim", None), int) and hasattr(module, "scaling")
            and hasattr(module, "config") and "position_embeddings" in parameters
            and callable(_module_rotation(module)))


def _module_rotation(module: torch.nn.Module) -> Callable | None:
    """The modeling file's own `apply_rotary_pos_emb`, the function the original forward calls."""
    return getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)


def _agrees(module: torch.nn.Module, original: Callable, forward: Callable, rotary: RotaryEmbedding) -> bool:
    try:
        dtype, device = module.q_proj.weight.dtype, module.q_proj.weight.device
        if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
            return False
        cos, sin = check_angles(module.head_dim, _CHECK_TOKENS, dtype, device)
        return (_rotation_is_exact(module, rotary, cos, sin)
                and _forward_agrees(module, original, forward, cos, sin, dtype, device))
    except Exception as error:  # anything the kernel or the check cannot run: the module keeps its forward
        log.info("rotary kernel: check failed on %s (%r)", type(module).__name__, error)
        return False


def _rotation_is_exact(module, rotary, cos, sin) -> bool:
    head_dim = module.head_dim
    rows = check_rows(2 * _CHECK_HEADS * head_dim, cos.dtype, cos.device)
    queries, keys = rows.view(1, _CHECK_TOKENS, 2, -1).unbind(2)  # strided rows, as shared products are
    expected = _module_rotation(module)(queries.unflatten(-1, (-1, head_dim)).transpose(1, 2),
                                        keys.unflatten(-1, (-1, head_dim)).transpose(1, 2), cos, sin)
    actual = rotary(queries, keys, cos, sin, head_dim)
    return all(e.shape == a.shape and torch.equal(e, a) for e, a in zip(expected, actual))


def _forward_agrees(module, original, forward, cos, sin, dtype, device) -> bool:
    hidden = check_rows(module.q_proj.in_features, dtype, device)[None, :_CHECK_TOKENS]
    with attention_running(module, _CHECK_NAME), torch.inference_mode():
        expected, expected_call = _recorded(
            lambda: original(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None))
        actual, actual_call = _recorded(
            lambda: forward(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None))
    return expected_call == actual_call and agrees(expected[0], actual[0])


_calls: list[dict] = []


def _recorded(run: Callable) -> tuple[tuple, dict]:
    _calls.clear()
    result = run()
    return result, _calls[0] if len(_calls) == 1 else {"calls": len(_calls)}


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA, noting the arguments that are not tensors (a forward that passes others disagrees)."""
    _calls.append({name: setting for name, setting in kwargs.items() if not isinstance(setting, torch.Tensor)}
                  | {"shapes": (tuple(query.shape), tuple(key.shape), tuple(value.shape)), "mask": attention_mask})
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(_CHECK_NAME, _recording_attention)
