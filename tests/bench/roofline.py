"""The machine's roofline for a workload: how many output tokens/s a perfect engine could reach.

A perfect engine spends its time only in the model's matmuls, batched as wide as the workload
allows. So the bench times exactly those matmuls here, with torch, in the chosen dtype, with all
of the model's layers' weights (so memory traffic is real: decode at small batch is bound by
streaming the weights, not by arithmetic) at M rows: M = the concurrency for decode steps (one
token per running sequence), over every linear with lm_head (each decoded token needs its
logits), and PREFILL_ROWS for prompt processing, over the layers' linears only (a prompt needs
logits at its last position alone: timing lm_head's wide product for every row would charge
prefill a rate it never runs at). Roofline time of a workload = prefill FLOPs / rate(PREFILL_ROWS)
+ decode FLOPs / rate(concurrency); attention FLOPs are charged at the same rate (an approximation
in the ideal engine's favour at long contexts).

Each pass runs in both layouts of the weights, each q, k, v, gate and up on its own and with q|k|v
and gate|up as one wider matmul each (how our engine runs them), and each through `F.linear` on
plain weights and through oneDNN on weights packed once (where torch has it: the route our engine
takes on a CPU). The fastest of the four counts: a roofline the engine's own matmuls could beat
would not bound anything.
"""

from __future__ import annotations

import os
import time

from tests.bench.flops import ModelShape, WorkloadFlops

# The engine's default per-step token budget (max_num_batched_tokens): its prefill chunks are this
# wide, and the layers ran 1-3% faster here than at 512 rows.
PREFILL_ROWS = 2048
MIN_MEASURE_S = 0.5


def measure_matmul_rates(shape: ModelShape, dtype: str, rows: list[int], threads: int,
                         min_seconds: float = MIN_MEASURE_S) -> dict[int, float]:
    """FLOP/s of one pass over every linear of the model at each row count (lm_head included,
    except at PREFILL_ROWS: see the module docstring), from the fastest of repeated passes (a
    roofline is a bound: the best the machine showed; each timing repeats for at least `min_seconds`).

    Runs in its own process (call through isolated.call): allocates the model's weight shapes."""
    import torch

    torch.set_num_threads(threads)
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    layouts = [_model_linears(shape, shape.layer_linears()), _model_linears(shape, shape.shared_layer_linears())]
    passes_by_rows = {m: [] for m in set(rows)}
    for linears in layouts:
        weights = [torch.randn(o, i, generator=generator).to(torch_dtype) * 0.02 for i, o in linears]
        products = [lambda x, w=w: torch.nn.functional.linear(x, w) for w in weights]
        routes = [products] + ([packed] if (packed := _packed_products(weights, torch_dtype)) else [])
        for m in passes_by_rows:
            inputs = {i: torch.randn(m, i, generator=generator).to(torch_dtype) for i, _ in linears}
            passes_by_rows[m] += [_one_pass(_timed_at(m, linears), _timed_at(m, route), inputs) for route in routes]
    rates = {}
    with torch.inference_mode():
        for m, passes in sorted(passes_by_rows.items()):
            flops_per_row = 2 * sum(i * o for i, o in _timed_at(m, layouts[0]))
            rates[m] = flops_per_row * m / min(_fastest_pass(one_pass, min_seconds) for one_pass in passes)
    return rates


def _timed_at(rows: int, per_linear: list) -> list:
    """The part of a per-linear list (lm_head last) that a pass at `rows` times."""
    return per_linear[:-1] if rows == PREFILL_ROWS else per_linear


def _model_linears(shape: ModelShape, layer: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(in, out) of every linear of the model in this layer layout, lm_head last."""
    return [linear for _ in range(shape.layers) for linear in layer] + [(shape.hidden, shape.vocab)]


def _one_pass(linears: list[tuple[int, int]], products: list, inputs: dict):
    return lambda: [product(inputs[i]) for (i, _), product in zip(linears, products, strict=True)]


def _fastest_pass(one_pass, min_seconds: float) -> float:
    """Seconds of the fastest of repeated passes (at least 3, over at least `min_seconds`)."""
    one_pass()
    timings, started = [], time.perf_counter()
    while len(timings) < 3 or time.perf_counter() - started < min_seconds:
        before = time.perf_counter()
        one_pass()
        timings.append(time.perf_counter() - before)
    return min(timings)


def _packed_products(weights: list, torch_dtype) -> list:
    """The weights packed as the engine packs them (worker/engine/packed_weights.py), or [] where
    this torch cannot."""
    import torch

    from worker.engine.packed_weights import PackedProduct, can_pack

    if not can_pack(torch.device("cpu"), torch_dtype):
        return []
    return [PackedProduct(weight, None) for weight in weights]


def roofline_tokens_per_s(flops: WorkloadFlops, rates: dict[int, float], concurrency: int) -> float:
    """Output tokens/s of a perfect engine; `rates` must hold PREFILL_ROWS and `concurrency`."""
    seconds = flops.prefill / rates[PREFILL_ROWS] + flops.decode / rates[concurrency]
    return flops.output_tokens / seconds if seconds > 0 else 0.0


def mean_rates(samples: list[dict[int, float]]) -> dict[int, float]:
    """Per row count, the mean of the samples that measured it.

    Why a mean over the whole bench: this shared host flips between two speeds (bfloat16 at M=32
    read about 330 or about 415 GFLOP/s) from one measurement to the next, seconds apart, while the
    systems' throughput moved far less; any one measurement, even the one just before a run, is a
    coin toss, and the mean of measurements spread over the bench weighs both speeds as the runs met
    them."""
    rows = sorted({r for sample in samples for r in sample})
    return {r: sum(sample[r] for sample in samples if r in sample) / sum(r in sample for sample in samples)
            for r in rows}


def default_threads() -> int:
    return os.cpu_count() or 1


def largest_rate_change(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> float:
    """The largest relative change of any matmul rate measured both before and after (0.25 = 25%):
    a shared machine's speed moves, and figures taken while it moved compare poorly."""
    changes = [abs(after[dtype][rows] - rate) / rate
               for dtype, rates in before.items() for rows, rate in rates.items()
               if rate > 0 and rows in after.get(dtype, {})]
    return max(changes, default=0.0)
