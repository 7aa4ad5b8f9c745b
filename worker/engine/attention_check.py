"""Before serving: the model must keep all it remembers of earlier tokens in the paged KV cache.

The engine replaces only the attention function, through transformers' attention interface. A
model whose modeling code computes attention itself (CodeGen, GPT-J, Falcon, Bloom and MPT do, in
transformers 5) would otherwise run without an error and generate wrong text: each step's ragged
batch would be attended as one sequence, with no cache. Tiny random CodeGen did exactly that.
So the runner makes one forward pass over a one-token prompt at load time, and refuses the model
unless every layer attended through `paged_attention`.

Two kinds of model pass that test and still generate wrong text, and are refused by what they are:
models with recurrent state beside attention (Falcon-H1's Mamba mixers run in every layer: each
step would start them from nothing) and chunked attention (Llama 4 attends within fixed chunks of
positions, which the paged attention does not implement; its mask would be ignored).
"""

from __future__ import annotations

import re

import torch

from worker.engine.attention_metadata import PagedAttentionMetadata, PrefillSlice, running_step, write_rows
from worker.engine.decode_workspace import DecodeWorkspace
from worker.engine.kv_cache import KVCache
from worker.engine_api import UnsupportedModel

# Class names of the sequence mixers that carry state from token to token outside attention, in
# transformers' modeling code (Mamba/Mamba2 mixers, Falcon-H1 and Bamba mixers, LFM2's short
# convolutions, gated DeltaNet and other linear attention, RWKV, RecurrentGemma, xLSTM).
RECURRENT_MIXER = re.compile(r"Mamba|H1Mixer|BambaMixer|ShortConv|DeltaNet|LinearAttention|Rwkv|Recurrent|[xX]LSTM")
SERVED = "Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, GPT-2, GPT-NeoX, OPT and others listed in the README"


def attention_not_paged(model_name: str, detail: str) -> UnsupportedModel:
    return UnsupportedModel(
        f"{model_name} cannot run on the paged KV cache: {detail}. The engine replaces the attention function "
        f"of transformers' attention interface, which every layer must call. Served architectures: {SERVED}")


def check_paged_attention(model: torch.nn.Module, kv_cache: KVCache, workspace: DecodeWorkspace) -> None:
    """Raises UnsupportedModel for recurrent mixers, chunked attention, or unless a forward pass calls
    the paged attention once per layer.

    The check's token goes to slot 0, which no sequence holds yet; the slot is zeroed afterwards."""
    name = type(model).__name__
    mixers = sorted({type(module).__name__ for module in model.modules()
                     if RECURRENT_MIXER.search(type(module).__name__)})
    if mixers:
        raise attention_not_paged(name, "it carries state from token to token outside attention "
                                        f"({', '.join(mixers)}), which the paged KV cache does not hold")
    if "chunked_attention" in (getattr(model.config.get_text_config(), "layer_types", None) or []):
        raise attention_not_paged(name, "its layers attend within fixed chunks of positions (chunked attention), "
                                        "which the paged attention does not implement")
    device = kv_cache.keys[0].device
    one_token = torch.zeros(1, 1, dtype=torch.long, device=device)
    meta = PagedAttentionMetadata(
        kv_cache=kv_cache, write_rows=write_rows(one_token[0], kv_cache.shape.num_kv_heads, kv_cache.block_size),
        num_decodes=0, decode_rows=None, decode_block_tables=None, decode_context_lens=None, decode_max_context=0,
        workspace=workspace, workspace_step=None, prefills=[PrefillSlice(0, 1, 0, None)], attended_layers=[])
    try:
        with torch.inference_mode(), running_step(meta):
            model(input_ids=one_token, position_ids=one_token, use_cache=False)
    except Exception as error:
        raise UnsupportedModel(f"{name} failed a first forward pass through the paged attention: {error!r}") from error
    finally:
        for cache in kv_cache.keys + kv_cache.values:
            cache[0].zero_()
    attended, num_layers = sorted(meta.attended_layers), kv_cache.shape.num_layers
    if not attended:
        raise attention_not_paged(name, "its modeling code computes attention itself (no layer called the "
                                        "attention interface in a forward pass)")
    if attended != list(range(num_layers)):
        raise attention_not_paged(name, f"only layers {attended} of {num_layers} called the attention interface "
                                        "in a forward pass (a hybrid of attention and other layers?)")
