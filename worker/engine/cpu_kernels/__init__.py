"""Compiled CPU kernels: built ahead of time (`make kernels`), loaded if present, never required.

One extension of seven sources: the AVX-512 paged decode attention (decode_attention.cpp), the fused
bfloat16 RMSNorm and SiLU-multiply (fused_layers.cpp), the greedy argmax over a step's logits
(greedy_argmax.cpp), the rotary position embedding of queries and keys (rotary_embedding.cpp), the
causal softmax of bfloat16 prefill scores (causal_softmax.cpp), a bfloat16 decoder layer of a
decode-only step calling the others (decode_layer.cpp) and their Python bindings (bindings.cpp),
with what they share (exp, bfloat16 rounding, masked loads and stores of a row's tail) in
vector_math.h and the decode kernel's block reading order and prefetch in block_read_order.h. The
functions below return them when a build for these exact sources, compiler flags, torch and Python
exists and the CPU runs AVX-512; otherwise None, and the engine uses torch's own operations. A
worker never compiles: building takes 60-90 s of two cores and needs a C++ compiler, so it happens
once, in `make setup` (or `python -m worker.engine.cpu_kernels`), and a failed build only costs
speed.

Invariant: a build directory's name is a hash of everything the binary depends on, so a stale
binary is never loaded; it is simply not found.
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

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("decode_attention.cpp", "fused_layers.cpp", "float32_layers.cpp", "greedy_argmax.cpp",
                             "rotary_embedding.cpp", "causal_softmax.cpp", "decode_layer.cpp", "bindings.cpp"))
HEADERS = tuple(Path(__file__).with_name(name) for name in ("vector_math.h", "block_read_order.h"))  # #included
BUILD_ROOT = Path(os.environ.get("FERRUM_INFER_KERNEL_DIR", Path(__file__).with_name("_build")))
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-fopenmp")  # what torch's AVX512 level implies
LDFLAGS = ("-fopenmp",)  # resolves to the libgomp torch has already loaded (same soname)
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


def build_key() -> str:
    digest = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        digest.update(source.read_bytes())
    for part in (*CFLAGS, *LDFLAGS, torch.__version__, sys.version):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def build_dir() -> Path:
    return BUILD_ROOT / build_key()


def library_path() -> Path:
    return build_dir() / f"{NAME}.so"  # torch.utils.cpp_extension's name for it on Linux


def cpu_supports_kernels() -> bool:
    """AVX-512 (torch reports AVX512 or AMX capability) on an x86 CPU."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")


def build(verbose: bool = False) -> Path:
    """Compile into build_dir(); returns the shared library's path. Raises on any failure."""
    from torch.utils.cpp_extension import load

    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    load(NAME, [str(source) for source in SOURCES], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
         build_directory=str(directory), verbose=verbose)
    for stale in BUILD_ROOT.iterdir():  # builds of earlier sources or torch versions
        if stale.is_dir() and stale != directory:
            shutil.rmtree(stale, ignore_errors=True)
    return library_path()


def kernel_supports(head_dim: int, group: int, dtype: torch.dtype, device: torch.device) -> bool:
    """The kernel's contract (decode_attention.cpp) for a model's shapes: float32/bfloat16 on the
    CPU, head_dim a multiple of 16 up to 256, at most 16 query heads per KV head."""
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and head_dim % 16 == 0 and head_dim <= 256 and group <= 16)


@cache
def _extension():
    """The loaded extension module, or None (with the reason logged once)."""
    if not cpu_supports_kernels():
        log.info("cpu kernels: this CPU has no AVX-512; using torch's operations")
        return None
    library = library_path()
    if not library.exists():
        log.warning("cpu kernels not built for this torch/source (run `make kernels`); using torch's operations")
        return None
    try:
        spec = importlib.util.spec_from_file_location(NAME, library)
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
    return getattr(module, name) if module is not None else None


def decode_attention_kernel() -> DecodeAttention | None:
    """The compiled paged decode attention, or None."""
    return _compiled("paged_decode_attention")


def decode_step_kernel() -> DecodeStep | None:
    """The compiled write-then-attend of a decode-only step (decode_attention.cpp), or None."""
    return _compiled("paged_decode_step")


def fused_layer_kernels() -> FusedLayerKernels | None:
    """The compiled RMSNorm and SiLU-multiply, bfloat16 and float32 (fused_layers.cpp, float32_layers.cpp), or None."""
    module = _extension()
    return FusedLayerKernels(module.rms_norm, module.silu_mul) if module is not None else None


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
