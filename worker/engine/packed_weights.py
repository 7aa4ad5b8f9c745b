"""Linear weights pre-packed once, at load, into oneDNN's blocked layout (CPU only).

`F.linear` on a CPU hands a plain `[out, in]` weight to the BLAS each call, which re-lays it out
(oneDNN in bfloat16) or runs MKL's path (float32; on AMD CPUs MKL takes a slow generic one). A
weight packed once by `torch.ops.mkldnn._reorder_linear_weight` goes to
`torch.ops.mkldnn._linear_pointwise` with no per-call reordering: the route torch.compile's CPU
freezing and IPEX take. Measured on bench-135m's 30 layers + lm_head (2 threads, AMD EPYC with
AVX-512 BF16): bfloat16 at 32 rows 21.4-22.5 -> 16.6-16.8 ms a pass; float32 at 32 rows 395 -> 145
us for one 576x1536 projection, and the in-process engine's float32 decode step 103 -> 51 ms.

Invariants: a packed Linear's output equals its own `F.linear` (checked on random input before the
swap; a Linear that disagrees, or a torch whose oneDNN cannot pack it, keeps the plain path). After
packing, the Linear's `weight` Parameter is a meta tensor of the original shape and dtype: readers
of `.shape` and `.dtype` keep working, and the plain copy is freed, so the model is not held twice
(bench-135m in bfloat16: 374 MiB of live tensors packed, 320 plain, the difference being the
lm_head's packed copy). The exception is a weight tied to another module (lm_head and the
embeddings), which stays, with a packed copy beside it. Packing is the engine's last load step:
the checks of fused modules run on real weights before it.
"""

from __future__ import annotations

import logging
from functools import cache

import torch
import torch.nn.functional as F

from worker.engine.agreement import agrees, check_rows

log = logging.getLogger(__name__)

PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedProduct:
    """`x @ weight.T + bias` with `weight` pre-packed; the weight's own plain copy is not kept."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch packs linear weights for `device` and `dtype`."""
    return device.type == "cpu" and dtype in PACKED_DTYPES and _onednn_packs(dtype)


@cache
def _onednn_packs(dtype: torch.dtype) -> bool:
    """Tried once per dtype: a torch built without oneDNN, or a oneDNN without a packed layout for
    this CPU and dtype (another CPU family), cannot pack at all."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        PackedProduct(torch.zeros(16, 16, dtype=dtype), None)(torch.zeros(1, 16, dtype=dtype))
    except RuntimeError as error:
        log.info("packed weights: oneDNN cannot pack %s here (%s); linears stay plain", dtype, error)
        return False
    return True


def packed_product(weight: torch.Tensor, bias: torch.Tensor | None) -> PackedProduct | None:
    """The packed product of `weight` and `bias` if it agrees with their `F.linear`, else None.
    The caller has checked `can_pack` for the weight's device and dtype."""
    product = PackedProduct(weight, bias)
    sample = check_rows(weight.shape[1], weight.dtype, weight.device)
    with torch.inference_mode():
        return product if agrees(F.linear(sample, weight, bias), product(sample)) else None


def packable(linear: torch.nn.Module) -> bool:
    """A plain Linear on a packable device and dtype whose forward nothing has swapped yet."""
    return (type(linear) is torch.nn.Linear and "forward" not in vars(linear)
            and can_pack(linear.weight.device, linear.weight.dtype))


def pack_linears(model: torch.nn.Module) -> int:
    """Pack every packable Linear of `model` that agrees with its packed product; returns how many."""
    tied = _tied_parameters(model)
    packed = 0
    for name, module in model.named_modules():
        if not packable(module):
            continue
        product = packed_product(module.weight, module.bias)
        if product is None:
            log.info("packed weights: %s disagrees with its packed product; it stays plain", name)
            continue
        module.forward = product
        if id(module.weight) not in tied:
            release_weight(module)
        packed += 1
    return packed


def release_weight(linear: torch.nn.Linear) -> None:
    """Replace the Linear's weight by a meta tensor of its shape and dtype: its computation lives
    elsewhere now, and the plain copy would only hold memory."""
    weight = linear.weight
    linear.weight = torch.nn.Parameter(torch.empty(weight.shape, dtype=weight.dtype, device="meta"),
                                       requires_grad=False)


def _tied_parameters(model: torch.nn.Module) -> set[int]:
    """ids of Parameters held by more than one module (tied embeddings)."""
    seen: set[int] = set()
    tied: set[int] = set()
    for _, parameter in model.named_parameters(remove_duplicate=False):
        (tied if id(parameter) in seen else seen).add(id(parameter))
    return tied
