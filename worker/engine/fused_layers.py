"""Runs a bfloat16 or float32 model's RMSNorm and gated-SiLU MLP modules through the fused CPU
kernels (cpu_kernels/fused_layers.cpp, float32_layers.cpp), where a check on the module itself shows
they compute the same.

transformers' modeling code stays as it is: a module shaped like Llama's (an RMSNorm with `weight`
and `variance_epsilon`; an MLP with gate_proj, up_proj, down_proj and a SiLU act_fn) gets an
instance-level forward calling the kernel. Before that, module and kernel run on the same random
input; a module that computes something else under a familiar shape (Gemma's `1 + weight` norm,
say) disagrees and keeps its own forward. In bfloat16 the kernels may differ from torch in the last
bit (the order of the variance's float32 sum); in float32, where the greedy-exactness oracle is
torch's own arithmetic, they must give torch's result bit for bit, and the check asks exactly that.
The float32 kernels follow how torch splits its work among vector lanes and threads, which they
know for torch's AVX-512 and AVX2 kernels: on a CPU where torch runs another level, float32 modules
keep torch's operations (cpu_kernels.fused_layer_dtypes). bfloat16 modules are fused with the
AVX-512 kernel set only.

Why: at decode an eager RMSNorm is nine small operations, each costing its dispatch, and at
prefill each is a pass over megabytes. Measured in-process on bench-135m in bfloat16 (32 prompts
of 256 tokens, 64 tokens out, 2 threads, alternating runs): 91 modules swapped, decode step
37.5-38.2 -> 35.9-36.1 ms, prefill 2.82-2.84 -> 2.70-2.77 s. In float32 on an Intel Xeon without
bfloat16 instructions (bench-135m, two engines in one process, the same 2048-token prefill step
timed alternately, /tmp/prof/ab2.py): 2262 -> 2123 and 2430 -> 2327 ms in two runs; the decode step
with the compiled float32 layers as well: decode_layer.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from worker.engine.agreement import agrees, check_rows, swap_agreeing_forwards
from worker.engine.cpu_kernels import FusedLayerKernels, fused_layer_dtypes

_SILU_CLASSES = {"SiLU", "SiLUActivation"}  # torch's and transformers' (ACT2FN["silu"])


def fuse_layers(model: torch.nn.Module, kernels: FusedLayerKernels) -> int:
    """Swap every agreeing module's forward; returns how many were swapped."""
    return swap_agreeing_forwards(model, lambda module: _fused_forward(module, kernels), _agrees, "fused layers")


def _fused_forward(module: torch.nn.Module, kernels: FusedLayerKernels) -> Callable | None:
    if _is_rms_norm(module):
        original = module.forward

        def rms_norm_forward(hidden_states: torch.Tensor) -> torch.Tensor:
            if hidden_states.dtype != module.weight.dtype or not hidden_states.is_contiguous():
                return original(hidden_states)
            return kernels.rms_norm(hidden_states, module.weight, module.variance_epsilon)

        return rms_norm_forward
    if _is_silu_mlp(module):
        original = module.forward
        gate_proj, up_proj, down_proj = module.gate_proj, module.up_proj, module.down_proj
        dtype = gate_proj.weight.dtype

        def mlp_forward(x: torch.Tensor) -> torch.Tensor:
            if x.dtype != dtype:
                return original(x)
            # Slices of one shared product (fused_projections) arrive with strided rows, as they are.
            # The projections' forwards are called directly (direct_layer.py says why and when that is safe).
            gate, up = gate_proj.forward(x), up_proj.forward(x)
            return down_proj.forward(kernels.silu_mul(gate, up))

        return mlp_forward
    return None


def _is_rms_norm(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and _fusable(weight.dtype) and isinstance(getattr(module, "variance_epsilon", None), float))


def _is_silu_mlp(module: torch.nn.Module) -> bool:
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return (all(isinstance(p, torch.nn.Linear) for p in projections)
            and len({p.weight.dtype for p in projections}) == 1 and _fusable(projections[0].weight.dtype)
            and type(getattr(module, "act_fn", None)).__name__ in _SILU_CLASSES)


def _fusable(dtype: torch.dtype) -> bool:
    return dtype in fused_layer_dtypes()


def _agrees(module: torch.nn.Module, fused: Callable) -> bool:
    """Within the bfloat16 tolerance (agreement.py); in float32, bit for bit."""
    parameter = next(module.parameters())
    width = module.weight.shape[0] if _is_rms_norm(module) else module.gate_proj.in_features
    sample = check_rows(width, parameter.dtype, parameter.device)
    with torch.inference_mode():
        expected, actual = module.forward(sample), fused(sample)
    return torch.equal(expected, actual) if parameter.dtype == torch.float32 else agrees(expected, actual)
