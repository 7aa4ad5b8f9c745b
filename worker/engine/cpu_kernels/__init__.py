"""Compiled CPU kernels: built ahead of time (`make kernels`), loaded if present, never required.

One extension per instruction set, built for the CPU torch runs its own kernels for:
- AVX-512 (torch's AVX512 or AMX level), nine sources: the paged decode attention
  (decode_attention.cpp, its arithmetic in decode_attention_avx512.cpp), the fused bfloat16
  RMSNorm and SiLU-multiply (fused_layers.cpp) and their float32 forms (float32_layers.cpp), the
  greedy argmax over a step's logits (greedy_argmax.cpp), the rotary position embedding of queries
  and keys (rotary_embedding.cpp), the causal softmax of bfloat16 prefill scores
  (causal_softmax.cpp), a decoder layer of a decode-only step calling the others
  (decode_layer.cpp) and their Python bindings (bindings.cpp), with what they share (exp, bfloat16
  rounding, masked loads and stores of a row's tail) in vector_math.h and the decode kernel's
  block reading order and prefetch in block_read_order.h;
- AVX2 (torch's AVX2 level: AMD Zen 1-3, Intel before AVX-512), seven sources: the paged decode
  attention (decode_attention_avx2.cpp), the float32 RMSNorm and SiLU-multiply, the rotary
  embedding and the compiled decode layers, from the same sources as the AVX-512 set's (their
  vector operations named alike in vector_math_avx2.h), and their bindings. No bfloat16 fused
  layers, greedy argmax or prefill softmax: where a function is missing from the build (or refuses
  bfloat16), the engine runs torch's operations for it.
The functions below return a kernel when a build for these exact sources, compiler flags, torch and
Python exists and the CPU runs its instruction set; otherwise None. A worker never compiles:
building takes a minute or two of two cores (on an AMD EPYC: the AVX-512 set 79 s, the AVX2 set 65 s;
266 s and 100 s while every source included <torch/extension.h>: aten_slice.h says why no longer)
and needs a C++ compiler, so it happens once, in `make setup` (or `python -m
worker.engine.cpu_kernels`), and a failed build only costs speed.

Invariant: a build directory's name is the instruction set and a hash of everything the binary
depends on, so a stale binary is never loaded; it is simply not found.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
BUILD_ROOT = Path(os.environ.get("FERRUM_INFER_KERNEL_DIR", _HERE / "_build"))
LDFLAGS = ("-fopenmp",)  # resolves to the libgomp torch has already loaded (same soname)


@dataclass(frozen=True)
class KernelSet:
    """The sources of one instruction set's extension and the flags that compile them."""

    name: str
    capabilities: tuple[str, ...]  # torch.backends.cpu.get_cpu_capability() values whose CPUs run it
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]  # #included
    cflags: tuple[str, ...]


def _paths(*names: str) -> tuple[Path, ...]:
    return tuple(_HERE / name for name in names)


AVX512 = KernelSet(
    "avx512", ("AVX512", "AMX"),
    _paths("decode_attention.cpp", "decode_attention_avx512.cpp", "fused_layers.cpp", "float32_layers.cpp",
           "greedy_argmax.cpp", "rotary_embedding.cpp", "causal_softmax.cpp", "decode_layer.cpp", "bindings.cpp"),
    _paths("aten_slice.h", "decode_attention.h", "decode_attention_variants.h", "decode_layer.h", "vector_math.h",
           "block_read_order.h"),
    ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-fopenmp"))  # what torch's AVX512 level implies
AVX2 = KernelSet(
    "avx2", ("AVX2",),
    _paths("decode_attention.cpp", "decode_attention_avx2.cpp", "fused_layers.cpp", "float32_layers.cpp",
           "rotary_embedding.cpp", "decode_layer.cpp", "bindings.cpp"),
    _paths("aten_slice.h", "decode_attention.h", "decode_attention_variants.h", "decode_layer.h",
           "vector_math_avx2.h", "block_read_order.h"),
    # what torch's AVX2 level implies; no multiply fused into an add unless written as an FMA, so
    # the float32 kernels round where torch does (vector_math_avx2.h)
    ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp"))
KERNEL_SETS = (AVX512, AVX2)
NAME = "ferrum_cpu_kernels"

# (queries, key_cache, value_cache, block_tables, starts, ends, scale) -> output; see the .cpp's contract.
DecodeAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                           torch.Tensor]

# (query, key, value, key_cache, value_cache, write_rows, block_tables, starts, ends, scale) -> output
# [1, tokens, heads, head_dim]: the new keys and values written, then paged_decode_attention.
DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                       torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


# (q, k, cos, sin, head_dim) -> (q, k) rotated, [B, heads, T, head_dim] each; see rotary_embedding.cpp.
RotaryEmbedding = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int],
                           tuple[torch.Tensor, torch.Tensor]]


# (scores [tiles, rows, context] bfloat16, scale): in place; see causal_softmax.cpp.
CausalSoftmax = Callable[[torch.Tensor, float], None]


@dataclass(frozen=True)
class FusedLayerKernels:
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x, weight, eps)
    silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (gate, up)


def kernel_set() -> KernelSet | None:
    """The instruction set this CPU's kernels are built for: torch's own choice of level."""
    capability = torch.backends.cpu.get_cpu_capability()
    return next((kernels for kernels in KERNEL_SETS if capability in kernels.capabilities), None)


def fused_layer_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes whose RMSNorm and SiLU-multiply the kernels fuse: bfloat16 with the AVX-512 set;
    float32 where torch runs the level whose rounding float32_layers.cpp reproduces (its AVX512 or
    AVX2 kernels; its AMX level is another organisation)."""
    dtypes = (torch.bfloat16,) if kernel_set() is AVX512 else ()
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2"):
        dtypes += (torch.float32,)
    return dtypes


def cpu_supports_kernels() -> bool:
    """An x86 CPU with AVX-512 or AVX2 (as torch reports its level)."""
    return kernel_set() is not None


def build_key(kernels: KernelSet) -> str:
    digest = hashlib.sha256()
    for source in (*kernels.sources, *kernels.headers):
        digest.update(source.read_bytes())
    for part in (*kernels.cflags, *LDFLAGS, torch.__version__, sys.version):
        digest.update(part.encode())
    return f"{kernels.name}-{digest.hexdigest()[:16]}"


def build_dir(kernels: KernelSet | None = None) -> Path:
    return BUILD_ROOT / build_key(kernels or kernel_set() or AVX512)


def module_name(kernels: KernelSet | None = None) -> str:
    """One name per set: torch's JIT builder renames a second build of one name in a process."""
    return f"{NAME}_{(kernels or kernel_set() or AVX512).name}"


def library_path(kernels: KernelSet | None = None) -> Path:
    return build_dir(kernels) / f"{module_name(kernels)}.so"  # torch.utils.cpp_extension's name for it on Linux


def build(verbose: bool = False, kernels: KernelSet | None = None) -> Path:
    """Compile `kernels` (this CPU's set by default) into build_dir(); returns the shared library's
    path. Raises on any failure."""
    from torch.utils.cpp_extension import load

    kernels = kernels or kernel_set() or AVX512
    directory = build_dir(kernels)
    directory.mkdir(parents=True, exist_ok=True)
    # Not imported as a Python module here: its initialisation runs the set's instructions, and an
    # image builder may lack them (the AVX-512 set's import is SIGILL on an AVX2 EPYC; loading it
    # as a plain library is not). _extension() imports it where the CPU runs it.
    load(module_name(kernels), [str(source) for source in kernels.sources], extra_cflags=list(kernels.cflags),
         extra_ldflags=list(LDFLAGS), build_directory=str(directory), verbose=verbose, is_python_module=False)
    current = {build_dir(each) for each in KERNEL_SETS}
    for stale in BUILD_ROOT.iterdir():  # builds of earlier sources or torch versions
        if stale.is_dir() and stale not in current:
            shutil.rmtree(stale, ignore_errors=True)
    return library_path(kernels)


def kernel_supports(head_dim: int, group: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The kernel's contract (decode_attention.cpp) for a model's shapes: float32/bfloat16 on the
    CPU, head_dim a multiple of 16 up to 256, at most 16 query heads per KV head."""
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and head_dim % 16 == 0 and head_dim <= 256 and group <= 16)


@cache
def _extension():
    """The loaded extension module, or None (with the reason logged once)."""
    if not cpu_supports_kernels():
        log.info("cpu kernels: this CPU has neither AVX-512 nor AVX2; using torch's operations")
        return None
    library = library_path()
    if not library.exists():
        log.warning("cpu kernels not built for this torch/source (run `make kernels`); using torch's operations")
        return None
    try:
        spec = importlib.util.spec_from_file_location(module_name(), library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:  # a build the loader refuses: run without, say why
        log.warning("cpu kernels at %s do not load (%s); using torch's operations", library, error)
        return None
    log.info("cpu kernels loaded from %s", library)
    return module


def _compiled(name: str) -> Callable | None:
    """The extension's function `name`, or None when no build loads here."""
    module = _extension()
    return getattr(module, name, None) if module is not None else None  # None: not in this set


def decode_attention_kernel() -> DecodeAttention | None:
    """The compiled paged decode attention, or None."""
    return _compiled("paged_decode_attention")


def decode_step_kernel() -> DecodeStep | None:
    """The compiled write-then-attend of a decode-only step (decode_attention.cpp), or None."""
    return _compiled("paged_decode_step")


def fused_layer_kernels() -> FusedLayerKernels | None:
    """The compiled RMSNorm and SiLU-multiply, bfloat16 and float32 (fused_layers.cpp, float32_layers.cpp), or None."""
    rms_norm, silu_mul = _compiled("rms_norm"), _compiled("silu_mul")
    return FusedLayerKernels(rms_norm, silu_mul) if rms_norm is not None and silu_mul is not None else None


def greedy_argmax_kernel() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The compiled first-index-of-maximum over float32 logits rows (greedy_argmax.cpp), or None."""
    return _compiled("greedy_argmax")


def rotary_embedding_kernel() -> RotaryEmbedding | None:
    """The compiled rotary position embedding, exactly torch's rounding (rotary_embedding.cpp), or None."""
    return _compiled("rotary_embedding")


def decode_layer_class() -> Callable | None:
    """The compiled bfloat16 or float32 decoder layer of a decode-only step (decode_layer.cpp), or None."""
    return _compiled("DecodeLayer")


def causal_softmax_kernel() -> CausalSoftmax | None:
    """The compiled in-place causal softmax of bfloat16 prefill scores (causal_softmax.cpp), or None."""
    return _compiled("causal_softmax_")
