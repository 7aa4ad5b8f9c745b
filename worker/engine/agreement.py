"""The load-time check before the engine swaps a module's computation for a faster one (fused
kernels, shared matmuls, packed weights): both run on the same random rows and must agree.

Agreement means within two bfloat16 steps of the largest output: rounding may differ in the last
bit where float32 sums are ordered differently, while a different formula or a wrong slice misses
by far more.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

CHECK_ROWS = 8
TOLERANCE = 2.0**-6


def check_rows(width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[CHECK_ROWS, width]` standard-normal rows, the same on every call."""
    generator = torch.Generator(device=device).manual_seed(0)
    return torch.randn(CHECK_ROWS, width, generator=generator, device=device).to(dtype)


def check_angles(head_dim: int, tokens: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `[1, tokens, head_dim]` of random rotary angles (the halves equal, as RoPE's are),
    the same on every call."""
    generator = torch.Generator(device=device).manual_seed(1)
    angles = torch.rand(1, tokens, head_dim // 2, generator=generator, device=device) * 100
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


@contextmanager
def attention_running(module: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Within the block, attention `module` alone calls the attention function registered as
    `implementation` (a check's own); its config is the model's again afterwards."""
    config = module.config
    module.config = copy.copy(config)
    module.config._attn_implementation = {"": implementation}  # the dict form leaves shared sub-configs alone
    try:
        yield
    finally:
        module.config = config


def agrees(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    if actual.shape != expected.shape:
        return False
    expected, actual = expected.float(), actual.float()
    scale = expected.abs().max().clamp(min=1e-6)
    return bool(((actual - expected).abs().max() <= TOLERANCE * scale).item())


def swap_agreeing_forwards(model: torch.nn.Module, faster_forward: Callable[[torch.nn.Module], Callable | None],
                           agree: Callable[[torch.nn.Module, Callable], bool], what: str) -> int:
    """Give each module for which `faster_forward` offers a forward, and whose check `agree(module,
    forward)` passes (run while the module still has its own), that forward as an instance-level
    one; a module that disagrees keeps its own, and the log says which. Returns how many were swapped."""
    swapped = 0
    for name, module in model.named_modules():
        forward = faster_forward(module)
        if forward is None:
            continue
        if agree(module, forward):
            module.forward = forward
            swapped += 1
        else:
            log.info("%s: %s (%s) computes something else; it keeps its own forward", what, name,
                     type(module).__name__)
    return swapped
