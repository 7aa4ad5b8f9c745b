"""Sibling projections of one input (an attention's q/k/v, an MLP's gate/up) as one matmul.

transformers' modeling code calls `self.q_proj(x)`, `self.k_proj(x)` and `self.v_proj(x)` one after
another on the same tensor. After `share_projection_matmuls`, those Linears' weights are row slices
of one concatenated weight, and the first of them to see a new `x` computes the whole product; its
siblings, called with that same tensor object, return their column slices of it. Called with
anything else (another tensor, or the same one a second time), a projection starts a new product,
so nothing depends on the modeling code's order of calls.

Invariants: a projection's output equals its own `F.linear` (checked on random input before the
swap; disagreeing groups are left alone); the memo holds one input and one product, and is dropped
once every sibling has taken its slice; a projection called again on its memo's input (a buffer
reused in place, say) computes afresh, so siblings must read their input before anyone modifies
it, as every modeling code does; siblings' outputs are views whose rows are strided (the modeling
code's `.view(*shape, -1, head_dim)` and the SiLU kernel read those as they are).

Why: at decode, a step's matmuls have 32 rows, and a call's fixed cost weighs: measured on bench-135m
in bfloat16 (2 threads, 30 layers, M=32), q/k/v as three calls took 4.0-4.3 ms a step and as one
2.9-3.1 ms; gate/up as two 10.3-10.7 ms and as one 9.6-10.0 ms; the engine's decode step went
from 36.9-37.6 to 35.6-36.9 ms (32 sequences of 256 + 128 tokens, alternating runs). On plain
weights, inputs of more than MAX_SHARED_ROWS rows (prefill) keep separate calls; once the group is
packed (`pack`, packed_weights.py), every input shares one product. On a CPU in float32 too: on
an Intel Xeon host (no AVX512_BF16) the packed float32 matmuls of a decode pass took 62.8-65.7 ms
shared against 67.5-76.6 separate (bench-135m, 32 rows, fastest of 8, three alternating rounds), and
the in-process engine ran 32 x 256-token prompts to 128 tokens each in 25.4 / 26.9 / 27.4 / 29.6 s
against 30.3 / 29.7 / 27.8 / 29.1 (four alternating pairs: faster in the first two, within noise in
the last two); greedy output still equals transformers' (tests/engine).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from worker.engine.agreement import agrees, check_rows
from worker.engine.packed_weights import PackedProduct, packed_product, release_weight

log = logging.getLogger(__name__)

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Past this many rows (prefill) one wide product is no faster than its parts, and at 2048 rows it
# was slower (q/k/v 71 ms as three calls, 75-79 ms as one, over 30 layers).
MAX_SHARED_ROWS = 256


class SharedMatmul:
    """One product for a group of Linears reading the same input; see the module docstring."""

    def __init__(self, linears: list[torch.nn.Linear]) -> None:
        self.weight = torch.cat([linear.weight.detach() for linear in linears])
        has_bias = linears[0].bias is not None
        self.bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
        self.slices: list[slice] = []
        start = 0
        for linear in linears:
            self.slices.append(slice(start, start + linear.out_features))
            start += linear.out_features
        self.linears = linears
        self._packed: PackedProduct | None = None
        self._input: torch.Tensor | None = None
        self._product: torch.Tensor | None = None
        self._taken: set[int] = set()

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Sibling `index`'s projection of `x`."""
        if self._packed is None and x.numel() > MAX_SHARED_ROWS * x.shape[-1]:
            rows = self.slices[index]
            return F.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])
        if x is not self._input or index in self._taken:
            self._input, self._product, self._taken = x, self._whole_product(x), set()
        self._taken.add(index)
        out = self._product[..., self.slices[index]]
        if len(self._taken) == len(self.slices):
            self._input = self._product = None
        return out

    def _whole_product(self, x: torch.Tensor) -> torch.Tensor:
        return self._packed(x) if self._packed is not None else F.linear(x, self.weight, self.bias)

    def pack(self) -> bool:
        """Compute on a pre-packed copy of the concatenated weight (packed_weights.py; the caller
        has checked `can_pack`), at every row count: packed, one wide product was as fast as its
        parts or faster up to 2048 rows. The plain weights are released. False (and nothing
        changed) where the packed product disagrees with the plain one."""
        product = packed_product(self.weight, self.bias)
        if product is None:
            return False
        self._packed, self.weight = product, None
        for linear in self.linears:
            release_weight(linear)
        return True

    def adopt(self, linears: list[torch.nn.Linear]) -> None:
        """Make each Linear's parameters views of the shared ones (no second copy of the weights)
        and route its forward here."""
        for index, (linear, rows) in enumerate(zip(linears, self.slices, strict=True)):
            linear.weight = torch.nn.Parameter(self.weight[rows], requires_grad=False)
            if self.bias is not None:
                linear.bias = torch.nn.Parameter(self.bias[rows], requires_grad=False)
            linear.forward = SiblingProjection(self, index)

    @property
    def packed(self) -> PackedProduct | None:
        """The packed product of the concatenated weight, once `pack` has made it."""
        return self._packed


class SiblingProjection:
    """The forward of sibling `index` of a SharedMatmul (decode_layer.py reads both)."""

    def __init__(self, shared: SharedMatmul, index: int) -> None:
        self.shared = shared
        self.index = index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(self.index, x)


def share_projection_matmuls(model: torch.nn.Module) -> list[SharedMatmul]:
    """Group every module's sibling projections that can share a matmul; returns the groups."""
    groups = []
    for name, module in model.named_modules():
        for names in SIBLINGS:
            linears = [getattr(module, attribute, None) for attribute in names]
            if not _shareable(linears):
                continue
            shared = SharedMatmul(linears)
            if _agrees(shared, linears):
                shared.adopt(linears)
                groups.append(shared)
            else:
                log.info("fused projections: %s's %s disagree with one product; they stay apart", name, names)
    return groups


def _shareable(linears: list) -> bool:
    if not all(type(linear) is torch.nn.Linear for linear in linears):
        return False  # a quantised or otherwise special Linear computes something else
    first = linears[0]
    return all(linear.in_features == first.in_features and linear.weight.dtype == first.weight.dtype
               and linear.weight.device == first.weight.device
               and (linear.bias is None) == (first.bias is None) and "forward" not in vars(linear)
               for linear in linears)


def _agrees(shared: SharedMatmul, linears: list[torch.nn.Linear]) -> bool:
    weight = linears[0].weight
    sample = check_rows(weight.shape[1], weight.dtype, weight.device)
    with torch.inference_mode():
        return all(agrees(linear(sample), shared.output(index, sample)) for index, linear in enumerate(linears))
