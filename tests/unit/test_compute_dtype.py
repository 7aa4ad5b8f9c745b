"""The compute dtype: "auto" widens a 16-bit checkpoint to float32 only on a CPU known to lack its
matmul instructions, and only when the widened weights fit; a dtype asked for by name is kept."""

from __future__ import annotations

import pytest
import torch

from worker.engine.compute_dtype import choose_dtype, native_cpu_dtypes

NO_16BIT = frozenset()
BF16_ONLY = frozenset({torch.bfloat16})

XEON_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_vbmi2\n"
EPYC_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd fphp asimdhp sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, expected", [
    (XEON_WITHOUT_BF16, NO_16BIT),
    (EPYC_WITH_BF16, BF16_ONLY),
    (SAPPHIRE_RAPIDS, frozenset({torch.bfloat16, torch.float16})),
    (GRAVITON3, frozenset({torch.bfloat16, torch.float16})),
    ("", NO_16BIT),
], ids=["xeon-without-bf16", "epyc-with-bf16", "sapphire-rapids", "graviton3", "no-flags"])
def test_native_16bit_dtypes_are_read_from_the_cpu_flags(cpuinfo, expected):
    assert native_cpu_dtypes(cpuinfo) == expected


def test_auto_widens_a_bfloat16_checkpoint_on_a_cpu_without_bfloat16_matmuls():
    choice = choose_dtype("auto", torch.bfloat16, "cpu", NO_16BIT, widened_fits=True)
    assert choice.dtype == torch.float32 and not choice.slow
    assert "no matmul instructions" in choice.reason and "FERRUM_INFER_DTYPE=bfloat16" in choice.reason


def test_auto_widens_a_float16_checkpoint_where_only_bfloat16_is_native():
    assert choose_dtype("auto", torch.float16, "cpu", BF16_ONLY, widened_fits=True).dtype == torch.float32


@pytest.mark.parametrize("device, native", [("cpu", BF16_ONLY), ("cpu", None), ("cuda", NO_16BIT)],
                         ids=["native-cpu", "unknown-cpu", "cuda"])
def test_auto_keeps_a_bfloat16_checkpoint_where_it_is_native_or_nothing_is_known(device, native):
    choice = choose_dtype("auto", torch.bfloat16, device, native, widened_fits=True)
    assert choice.dtype == torch.bfloat16 and not choice.slow and "checkpoint's dtype" in choice.reason


@pytest.mark.parametrize("widened_fits, why", [(False, "would not fit"), (None, "memory unknown")])
def test_auto_keeps_the_checkpoints_dtype_when_float32_weights_may_not_fit(widened_fits, why):
    choice = choose_dtype("auto", torch.bfloat16, "cpu", NO_16BIT, widened_fits)
    assert choice.dtype == torch.bfloat16 and choice.slow and why in choice.reason


@pytest.mark.parametrize("declared", [None, torch.float32, torch.float64], ids=["none", "float32", "float64"])
def test_auto_is_float32_for_a_checkpoint_declaring_no_16bit_dtype(declared):
    assert choose_dtype("auto", declared, "cpu", NO_16BIT, widened_fits=None).dtype == torch.float32


@pytest.mark.parametrize("requested, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16),
                                              ("float32", torch.float32)])
def test_a_dtype_asked_for_by_name_is_kept_and_warned_about_only_where_it_is_slow(requested, dtype):
    slow_cpu = choose_dtype(requested, torch.bfloat16, "cpu", NO_16BIT, widened_fits=True)
    assert slow_cpu.dtype == dtype and slow_cpu.slow == (dtype != torch.float32)
    on_gpu = choose_dtype(requested, torch.bfloat16, "cuda", NO_16BIT, widened_fits=True)
    assert on_gpu.dtype == dtype and not on_gpu.slow
