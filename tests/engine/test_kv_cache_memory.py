"""The KV cache's host memory: one zero-filled allocation, each layer's keys and values a contiguous
view of it, and the bulk of it in huge pages where the system allows them (allocator.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.engine.allocator import HUGE_PAGE
from worker.engine.kv_cache import KVCache, KVShape

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _advised_huge(address: int) -> bool:
    """Whether the mapping holding `address` carries MADV_HUGEPAGE ("hg" in its VmFlags)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and head == "VmFlags:":
            return "hg" in line.split()[1:]
    return False


def test_every_layer_gets_its_own_zeroed_contiguous_keys_and_values():
    cache = KVCache(KVShape(num_layers=3, num_kv_heads=2, head_dim=16), 10, 4, torch.float32, torch.device("cpu"))
    tensors = cache.keys + cache.values
    assert all(t.shape == (10, 2, 4, 16) and t.is_contiguous() and not t.any() for t in tensors)
    cache.keys[1].fill_(1.0)
    assert not cache.keys[0].any() and not cache.keys[2].any() and not cache.values[1].any()
    assert cache.num_bytes == 2 * 3 * 10 * 2 * 4 * 16 * 4


@pytest.mark.skipif(not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
                    reason="transparent huge pages are off here")
def test_a_large_cache_is_advised_as_huge_page_memory():
    cache = KVCache(KVShape(num_layers=4, num_kv_heads=4, head_dim=64), 512, 16, torch.float32, torch.device("cpu"))
    assert cache.num_bytes == 64 << 20
    # Whether the kernel then finds free huge pages depends on the machine's memory, not on us.
    start = cache.keys[0].data_ptr()
    assert all(_advised_huge(start + offset) for offset in (2 * HUGE_PAGE, 16 * HUGE_PAGE, 30 * HUGE_PAGE))
    small = torch.zeros(1 << 20)  # an ordinary allocation is left alone
    assert not _advised_huge(small.data_ptr() + (2 << 20))
