"""Decode-only steps run each bfloat16 or float32 decoder layer as one compiled call
(cpu_kernels/decode_layer.cpp), where a load-time check shows it computes exactly what the layer's
Python forward does.

After the engine's other rewrites (fused_layers, fused_projections, packed_weights,
rotary_attention, direct_layer) a Llama-shaped layer at a decode step is a fixed sequence of
operations: RMSNorm kernel, the packed q|k|v product, the rotary kernel, paged_decode_step, the
packed o product, a residual add, RMSNorm kernel, the packed gate|up product, SiLU-multiply
kernel, the packed down product, a residual add. The compiled layer runs that sequence with no
Python between the operations (and with the rotation and paged_decode_step's cache writes as one
pass: decode_layer.cpp). Any other call (a prefill in the batch, a call without the
engine's paged metadata, inputs the kernels do not take) runs the Python forward as before.

Which layers: the attention's children are exactly q/k/v/o projections (Qwen3's q/k norms are not
in the sequence), q|k|v and gate|up share one packed product each, o and down are packed, both
norms and the MLP run the fused kernels. The check then runs the Python forward through the
engine's paged attention and the compiled layer on the same random decode step (3 sequences,
cached contexts of different lengths) and requires the same output and the same cache contents,
bit for bit; a layer that differs keeps its Python forward.

Why: with the Python forward, a decode step of bench-135m in bfloat16 spent about 3 ms of 27 ms
between operations (module calls, transformers' attention-function lookup, argument parsing).
Measured in-process (32 prompts of 256 tokens, 128 tokens out, 2 threads, three alternating pairs,
/tmp/prof/engine_prof6.py): decode step 26.4-27.1 -> 25.6-25.8 ms, 676-691 -> 707-715 tok/s.
In float32, where the norms and the MLP's activation were torch's separate operations (seven a
norm, two for the activation) before float32_layers.cpp, more goes: on an Intel Xeon without
bfloat16 instructions (bench-135m, 32 sequences at ~300 cached tokens, two engines in one process
timing the same decode step alternately, /tmp/prof/ab2.py) the step took 108.2 -> 90.7 and
121.6 -> 95.2 ms (medians, two runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from worker.engine.agreement import check_angles, check_rows, swap_agreeing_forwards
from worker.engine.attention_metadata import PagedAttentionMetadata, current_step, running_step, write_rows
from worker.engine.cpu_kernels import decode_step_kernel, kernel_supports
from worker.engine.fused_projections import SiblingProjection
from worker.engine.kv_cache import KVCache, KVShape
from worker.engine.packed_weights import PackedProduct
from worker.engine.rotary_attention import window_argument

log = logging.getLogger(__name__)

_CHECK_CONTEXTS = (5, 17, 40)  # cached tokens + the new one: within a block, across blocks
_CHECK_BLOCK_SIZE = 16


def compile_decode_layers(model: torch.nn.Module, layer_class: Callable) -> int:
    """Give every decoder layer that qualifies (see the module docstring) a forward that runs
    decode-only steps through `layer_class` (the extension's DecodeLayer); returns how many."""
    steps: list[PagedAttentionMetadata] = []  # one random check step, its cache holding every layer

    def agree(layer: torch.nn.Module, forward: Callable) -> bool:
        return _agrees(layer, forward, steps)

    return swap_agreeing_forwards(model, lambda layer: _compiled_forward(layer, layer_class), agree,
                                  "compiled decode layers")


def _compiled_forward(layer: torch.nn.Module, layer_class: Callable) -> Callable | None:
    parts = _parts(layer)
    if parts is None:
        return None
    python_forward = vars(layer)["forward"]
    native = layer_class(*parts)
    index = layer.self_attn.layer_idx
    window = window_argument(layer.self_attn).get("sliding_window")
    dtype = layer.input_layernorm.weight.dtype

    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        meta = current_step()
        if (meta is not None and meta.decode_step is not None and not meta.prefills and past_key_values is None
                and _kernels_read(hidden_states, position_embeddings, dtype)):
            starts, ends = meta.decode_bounds(window)
            cos, sin = position_embeddings
            return native.forward(hidden_states, cos, sin, meta.kv_cache.keys[index], meta.kv_cache.values[index],
                                  meta.write_rows, meta.decode_block_tables, starts, ends)
        return python_forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, use_cache=use_cache,
                              position_embeddings=position_embeddings, **kwargs)

    return forward


def _kernels_read(hidden_states: torch.Tensor, position_embeddings, dtype: torch.dtype) -> bool:
    """What the compiled layer takes (everything in the layer's `dtype`); anything else runs the
    Python forward."""
    if (position_embeddings is None or hidden_states.dim() != 3 or hidden_states.shape[0] != 1
            or hidden_states.dtype != dtype
            or not hidden_states.is_contiguous() or hidden_states.device.type != "cpu"):
        return False
    cos, sin = position_embeddings
    return (cos.dim() == 3 and cos.dtype == dtype and sin.dtype == dtype
            and cos.is_contiguous() and sin.is_contiguous())


def _parts(layer: torch.nn.Module) -> tuple | None:
    """The DecodeLayer constructor's arguments, or None where the layer is not the sequence."""
    if "forward" not in vars(layer) or not hasattr(layer, "self_attn") or not hasattr(layer, "mlp"):
        return None  # not a layer the direct-call rewrite took
    attention, mlp = layer.self_attn, layer.mlp
    if {name for name, _ in attention.named_children()} != {"q_proj", "k_proj", "v_proj", "o_proj"}:
        return None
    if not all("forward" in vars(module) for module in (attention, mlp, layer.input_layernorm,
                                                      layer.post_attention_layernorm)):
        return None
    qkv = _shared_product(attention.q_proj, attention.k_proj, attention.v_proj)
    gate_up = _shared_product(mlp.gate_proj, mlp.up_proj)
    o, down = (vars(linear).get("forward") for linear in (attention.o_proj, mlp.down_proj))
    if qkv is None or gate_up is None or not isinstance(o, PackedProduct) or not isinstance(down, PackedProduct):
        return None
    if not isinstance(getattr(attention, "layer_idx", None), int):
        return None
    q_size, kv_size = attention.q_proj.out_features, attention.k_proj.out_features
    if attention.v_proj.out_features != kv_size or mlp.gate_proj.out_features != mlp.up_proj.out_features:
        return None
    scale = attention.scaling if attention.scaling is not None else attention.head_dim ** -0.5
    first, second = layer.input_layernorm, layer.post_attention_layernorm
    return (first.weight, first.variance_epsilon, qkv.packed, qkv.bias, q_size, kv_size, o.packed, o.bias,
            second.weight, second.variance_epsilon, gate_up.packed, gate_up.bias, mlp.gate_proj.out_features,
            down.packed, down.bias, attention.head_dim, float(scale))


def _shared_product(*linears: torch.nn.Module) -> PackedProduct | None:
    """The packed product the Linears share, in this order, as one group; else None."""
    forwards = [vars(linear).get("forward") for linear in linears]
    if not all(isinstance(forward, SiblingProjection) for forward in forwards):
        return None
    shared = forwards[0].shared
    if [forward.index for forward in forwards] != list(range(len(shared.slices))) or any(
            forward.shared is not shared for forward in forwards):
        return None
    return shared.packed


def _agrees(layer: torch.nn.Module, forward: Callable, steps: list[PagedAttentionMetadata]) -> bool:
    """`steps` holds the check step once a layer has built it (every layer reads the same one)."""
    attention = layer.self_attn
    group = attention.config.num_attention_heads // attention.config.num_key_value_heads
    dtype = layer.input_layernorm.weight.dtype
    if decode_step_kernel() is None or not kernel_supports(attention.head_dim, group, dtype, torch.device("cpu")):
        return False
    try:
        if not steps:
            steps.append(_check_step(attention, dtype))
        meta = steps[0]
        hidden = check_rows(attention.config.hidden_size, dtype, torch.device("cpu"))
        hidden = hidden[None, :len(_CHECK_CONTEXTS)].contiguous()
        angles = check_angles(attention.head_dim, len(_CHECK_CONTEXTS), dtype, torch.device("cpu"))
        index = attention.layer_idx
        caches = (meta.kv_cache.keys[index], meta.kv_cache.values[index])
        before = [cache.clone() for cache in caches]
        with torch.inference_mode(), running_step(meta):
            expected = vars(layer)["forward"](hidden, position_embeddings=angles)
            expected_caches = [cache.clone() for cache in caches]
            for cache, saved in zip(caches, before):
                cache.copy_(saved)
            actual = forward(hidden, position_embeddings=angles)
        expected = expected[0] if isinstance(expected, tuple) else expected
        return (expected.shape == actual.shape and torch.equal(expected, actual)
                and all(torch.equal(e, a) for e, a in zip(expected_caches, caches)))
    except Exception as error:  # anything the check cannot run: the layer keeps its Python forward
        log.info("compiled decode layers: check failed on %s (%r)", type(layer).__name__, error)
        return False


def _check_step(attention: torch.nn.Module, dtype: torch.dtype) -> PagedAttentionMetadata:
    """A decode-only step of len(_CHECK_CONTEXTS) sequences over a small random cache (every layer's)."""
    shape = KVShape.of(attention.config)
    blocks_each = [-(-context // _CHECK_BLOCK_SIZE) for context in _CHECK_CONTEXTS]
    cache = KVCache(shape, sum(blocks_each), _CHECK_BLOCK_SIZE, dtype, torch.device("cpu"))
    generator = torch.Generator().manual_seed(2)
    for tensor in cache.keys + cache.values:
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    # Blocks handed out in reverse, so that tables are not simply the block ids in order.
    ids = list(range(sum(blocks_each)))[::-1]
    tables = torch.zeros(len(_CHECK_CONTEXTS), max(blocks_each), dtype=torch.long)
    slots = []
    for row, (context, count) in enumerate(zip(_CHECK_CONTEXTS, blocks_each)):
        tables[row, :count] = torch.tensor(ids[:count])
        ids = ids[count:]
        last = context - 1
        slots.append(int(tables[row, last // _CHECK_BLOCK_SIZE]) * _CHECK_BLOCK_SIZE + last % _CHECK_BLOCK_SIZE)
    return PagedAttentionMetadata(
        kv_cache=cache, write_rows=write_rows(torch.tensor(slots), shape.num_kv_heads, _CHECK_BLOCK_SIZE),
        num_decodes=len(_CHECK_CONTEXTS), decode_rows=None, decode_block_tables=tables,
        decode_context_lens=torch.tensor(_CHECK_CONTEXTS), decode_max_context=max(blocks_each) * _CHECK_BLOCK_SIZE,
        workspace=None, workspace_step=None, prefills=[], decode_kernel=None, decode_step=decode_step_kernel())
