"""Loads the Hugging Face model and runs one forward pass per engine step."""

from __future__ import annotations

import inspect
import logging

import torch

from worker.engine.allocator import keep_freed_memory
from worker.engine.attention_check import check_paged_attention
from worker.engine.attention_metadata import running_step
from worker.engine.compute_dtype import resolve_dtype
from worker.engine.cpu_kernels import (causal_softmax_kernel, decode_attention_kernel, decode_layer_class,
                                      decode_step_kernel, fused_layer_kernels, greedy_argmax_kernel, kernel_supports,
                                      rotary_embedding_kernel)
from worker.engine.decode_layer import compile_decode_layers
from worker.engine.decode_workspace import DecodeWorkspace
from worker.engine.direct_layer import call_layers_directly, has_hooks
from worker.engine.fused_layers import fuse_layers
from worker.engine.fused_projections import share_projection_matmuls
from worker.engine.model_loading import load_config, load_model
from worker.engine.kv_cache import KVCache, KVShape, blocks_for_budget, text_config_of
from worker.engine.packed_weights import can_pack, pack_linears
from worker.engine.paged_attention import ATTENTION_NAME
from worker.engine.rotary_attention import rotate_attention_embeddings
from worker.engine.step_inputs import StepInputs
from worker.engine_api import UnsupportedModel
from worker.engine_config import EngineConfig

log = logging.getLogger(__name__)


class ModelRunner:
    """Owns the model and the KV cache; `forward` turns step inputs into next-token logits."""

    def __init__(self, model_dir: str, config: EngineConfig, num_blocks: int | None = None) -> None:
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # activations live in host memory: reuse them, don't page-fault them
        model_config = load_config(model_dir)
        self.dtype = resolve_dtype(model_dir, model_config, config.dtype, self.device)
        self.model = load_model(model_dir, model_config, self.dtype).to(self.device)
        self.model.eval()
        self.fused_modules = self.shared_matmuls = self.packed_linears = self.rotary_modules = 0
        self.direct_layers = self.compiled_layers = 0
        on_cpu_kernels = config.cpu_kernels and self.device.type == "cpu"
        if has_hooks(self.model):  # the rewrites call modules' forwards directly, which skips hooks
            log.info("the model has module hooks: it runs transformers' forwards and plain weights")
        else:
            self._rewrite_modules(config, on_cpu_kernels)
        self.model_config = self.model.config
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        try:
            shape = KVShape.of(self.model_config)
        except AttributeError as error:  # Mamba and other models without attention heads
            raise UnsupportedModel(f"{type(self.model).__name__} has no attention heads to cache ({error})") from error
        if num_blocks is None:
            num_blocks = blocks_for_budget(shape, config.block_size, self.dtype, self.device, config.cache_size_mb)
        self.kv_cache = KVCache(shape, num_blocks, config.block_size, self.dtype, self.device)
        group = text_config_of(self.model_config).num_attention_heads // shape.num_kv_heads
        use_kernel = config.cpu_kernels and kernel_supports(shape.head_dim, group, self.dtype, self.device)
        # The kernel reads the paged blocks in place; without it, decode attention is SDPA over
        # the workspace's contiguous copies of the decoding contexts.
        self.decode_kernel = decode_attention_kernel() if use_kernel else None
        self.decode_step = decode_step_kernel() if use_kernel else None  # the same, writes included
        self.argmax_kernel = greedy_argmax_kernel() if on_cpu_kernels else None  # None: torch's argmax
        # Only bfloat16 prefill attention has a softmax of its own: float32 runs SDPA, as the oracle does.
        self.prefill_softmax = causal_softmax_kernel() if on_cpu_kernels and self.dtype == torch.bfloat16 else None
        # Capping the workspace at the cache's size bounds the engine's KV memory at twice the
        # configured budget (it stays empty while the kernel runs).
        self.workspace = DecodeWorkspace(self.kv_cache, max_bytes=self.kv_cache.num_bytes)
        check_paged_attention(self.model, self.kv_cache, self.workspace)
        self._keeps_logits = "logits_to_keep" in _forward_parameters(self.model)

    def _rewrite_modules(self, config: EngineConfig, on_cpu_kernels: bool) -> None:
        """Shared and packed projection weights, fused kernels, the rotary kernel and direct layer
        calls, each where its own load-time check agrees."""
        groups = []
        cpu_rewrites = self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.float32)
        if cpu_rewrites:
            groups = share_projection_matmuls(self.model)
            self.shared_matmuls = len(groups)
            kernels = fused_layer_kernels() if on_cpu_kernels else None
            self.fused_modules = fuse_layers(self.model, kernels) if kernels is not None else 0
        rotary = rotary_embedding_kernel() if on_cpu_kernels else None
        if rotary is not None:  # both dtypes: the kernel rounds exactly as torch's operations do
            self.rotary_modules = rotate_attention_embeddings(self.model, rotary)
        # The checks above run the modules on their plain weights, which packing releases.
        if config.packed_weights and can_pack(self.device, self.dtype):
            self.packed_linears = pack_linears(self.model) + sum(group.pack() for group in groups)
        self.direct_layers = call_layers_directly(self.model)  # checked on what the layers will run
        layer_class = decode_layer_class() if on_cpu_kernels and cpu_rewrites else None
        if layer_class is not None:  # last: it runs the direct layers' sequence of the rewrites above
            self.compiled_layers = compile_decode_layers(self.model, layer_class)
        if self.device.type == "cpu":
            log.info("%s on the CPU: %d projection groups share a matmul, %d modules run fused kernels, "
                     "%d attention modules rotate in one kernel, %d linears (a group counted once) compute "
                     "on packed weights, %d decoder layers call their modules directly, %d run decode "
                     "steps as one compiled call",
                     str(self.dtype).removeprefix("torch."), self.shared_matmuls, self.fused_modules,
                     self.rotary_modules, self.packed_linears, self.direct_layers, self.compiled_layers)

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Logits `[len(inputs.sampled_chunks), vocab]` in the model's dtype, row i for sampled chunk i."""
        kwargs = {"logits_to_keep": inputs.logits_indices} if self._keeps_logits else {}
        with running_step(inputs.metadata):
            logits = self.model(
                input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False, **kwargs
            ).logits[0]
        if not self._keeps_logits:
            logits = logits.index_select(0, inputs.logits_indices)
        return logits


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)
