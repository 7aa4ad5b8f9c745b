"""The dtype a worker computes in: the one asked for, or for "auto" the checkpoint's, except where a
CPU has no matmul instructions for that 16-bit dtype.

Why: on a CPU without them (bfloat16: AVX512_BF16 or AMX-BF16 on x86, BF16 on Arm; float16:
AVX512_FP16 or AMX-FP16 on x86, half-precision SIMD on Arm) torch computes a 16-bit matmul by
converting to float32 on the way, and it is slower than float32 itself. Measured on an Intel Xeon
without AVX512_BF16 (2 cores; bench-135m, 32 requests at a time of 256 prompt and 128 output
tokens, `python -m tests.bench --dtype bfloat16,float32 --concurrency 32`, docs/BENCHMARKS.md of
2026-12-01 04:58): bfloat16 63.7 output tokens/s against float32's 137.2 (0.46x; 65.3 against 143.0
in an earlier run); the model's matmuls ran at 49 GFLOP/s in bfloat16 against 145 in float32 at 32
rows, 66 against 256 at 2048. `F.linear` of 576 -> 1536 there, in GFLOP/s at 1 / 32 / 512 rows:
float32 20.8 / 58.9 / 205.3, bfloat16 13.6 / 49.4 / 60.0, float16 15.8 / 18.7 / 17.8: slower even
at one row, where fewer bytes of weights might have paid.

So "auto" widens a 16-bit checkpoint to float32 on such a CPU. Widening is exact (every bfloat16 and
float16 value is a float32 value), so the output is the float32 model's; the cost is twice the
weights' memory, taken only when that fits in half the memory available, else the checkpoint's
dtype is kept and the log says why. A dtype asked for by name is always honoured (with a warning
when this CPU computes it slowly). Where the CPU's features or the memory cannot be read, "auto"
is the checkpoint's dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIXTEEN_BIT = (torch.bfloat16, torch.float16)
# /proc/cpuinfo's names for matmul instructions on 16-bit values: x86 "flags", Arm "Features".
_NATIVE_FLAGS = {
    torch.bfloat16: {"avx512_bf16", "amx_bf16", "bf16"},
    torch.float16: {"avx512_fp16", "amx_fp16", "asimdhp"},
}
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str  # one sentence for the worker's log
    slow: bool = False  # a 16-bit dtype this CPU has no matmul instructions for


def native_cpu_dtypes(cpuinfo: str) -> frozenset[torch.dtype]:
    """The 16-bit dtypes whose matmuls the CPU described by /proc/cpuinfo's text runs natively."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(dtype for dtype, names in _NATIVE_FLAGS.items() if flags & names)


def choose_dtype(requested: str, declared: torch.dtype | None, device_type: str,
                 native: frozenset[torch.dtype] | None, widened_fits: bool | None) -> DtypeChoice:
    """The compute dtype. `declared`: the checkpoint's (None: none declared, float32); `native`: the
    CPU's native 16-bit dtypes (None: unknown); `widened_fits`: whether float32 weights fit
    (None: unknown). Invariant: only "auto" ever differs from the name asked for, and only towards
    float32, on a CPU known to lack the declared dtype's instructions."""
    on_slow_cpu = device_type == "cpu" and native is not None
    if requested != "auto":
        dtype = DTYPES[requested]
        slow = on_slow_cpu and dtype in SIXTEEN_BIT and dtype not in native
        return DtypeChoice(dtype, f"{requested} as configured" + (_SLOW if slow else ""), slow)
    checkpoint = declared if declared in (*SIXTEEN_BIT, torch.float32) else torch.float32
    name = _name(checkpoint)
    if not (on_slow_cpu and checkpoint in SIXTEEN_BIT and checkpoint not in native):
        return DtypeChoice(checkpoint, f"{name}, the checkpoint's dtype")
    if widened_fits:
        return DtypeChoice(torch.float32, f"float32: the checkpoint is {name}, which this CPU has no matmul "
                                          f"instructions for (float32 computes faster and exactly; "
                                          f"FERRUM_INFER_DTYPE={name} keeps {name})")
    why = "would not fit in half the available memory" if widened_fits is False else "may not fit (memory unknown)"
    return DtypeChoice(checkpoint, f"{name}, the checkpoint's dtype, although this CPU has no matmul instructions "
                                   f"for it: float32 weights {why}", slow=True)


_SLOW = (" (this CPU has no matmul instructions for it: it computes by converting to float32, "
         "slower than float32 itself)")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_dtype(model_dir: str, model_config: PretrainedConfig, requested: str, device: torch.device) -> torch.dtype:
    """choose_dtype with this machine's facts read, and the choice logged."""
    declared = getattr(model_config, "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    native = widened_fits = None
    if device.type == "cpu":
        native = _read_native_cpu_dtypes()
        widened_fits = _widened_weights_fit(Path(model_dir), declared)
    choice = choose_dtype(requested, declared if isinstance(declared, torch.dtype) else None,
                          device.type, native, widened_fits)
    (log.warning if choice.slow else log.info)("computing in %s", choice.reason)
    return choice.dtype


def _read_native_cpu_dtypes() -> frozenset[torch.dtype] | None:
    try:
        return native_cpu_dtypes(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: unknown
        return None


def _widened_weights_fit(model_dir: Path, declared: object) -> bool | None:
    """Whether the checkpoint's weights in float32 take at most half of the memory available now."""
    available = _available_memory_bytes()
    if available is None or declared not in SIXTEEN_BIT:
        return None
    checkpoint = sum(path.stat().st_size for pattern in _WEIGHT_FILES for path in model_dir.glob(pattern))
    return 2 * checkpoint <= available // 2


def _available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
