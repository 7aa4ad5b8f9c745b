"""Per-sequence randomness that depends only on the seed and the output position.

Each random row needs one uniform number per step (inverse-CDF sampling). A seeded row draws
it from its own generator, reseeded before every draw from (seed, number of tokens generated so
far). So the draw never depends on which rows share the batch or their order, and a sequence
that is preempted, or resumed on another worker with its earlier outputs, draws exactly what it
would have drawn had it never stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def make_generator(seed: int | None, device: str | torch.device) -> torch.Generator | None:
    """A generator for a seeded sequence on `device`; None for an unseeded one."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(position_seed(seed, 0))
    return generator


def position_seed(seed: int, position: int) -> int:
    """A well-mixed 63-bit seed for output `position` of a sequence seeded with `seed`.

    splitmix64 of the pair, so neighbouring positions and neighbouring seeds get unrelated streams.
    """
    state = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (state ^ (state >> 31)) >> 1


def uniforms(
    num_rows: int, device: torch.device, seeded: Sequence[tuple[int, torch.Generator, int, int]]
) -> torch.Tensor:
    """`[num_rows]` float32 draws from U[0, 1).

    `seeded` lists `(row, generator, seed, position)`: those rows draw from their own generator,
    reseeded for the position; the other rows share one draw from the default generator.
    """
    draws = torch.rand(num_rows, device=device)
    for row, generator, seed, position in seeded:
        generator.manual_seed(position_seed(seed, position))
        draws[row] = torch.rand((), device=generator.device, generator=generator).to(device)
    return draws
