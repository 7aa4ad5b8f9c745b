"""worker/engine/allocator.py: with freed memory kept, allocating a large temporary again (as the
next engine step does) reuses pages already touched instead of faulting in fresh ones. Each case
runs in a fresh process, since the setting is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.engine.allocator import keep_freed_memory

_PROGRAM = """
import resource, sys, torch
from worker.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
activations = torch.ones(4 << 20)  # 16 MiB, written, then freed, as a step's activations are
del activations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
activations = torch.ones(3 << 20)  # the next step's 12 MiB
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PAGES = (12 << 20) // 4096


def _page_faults_of_the_second_allocation(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(result.stdout.strip())


@pytest.mark.skipif(not keep_freed_memory(), reason="the C library is not glibc")
def test_a_freed_temporary_is_reused_without_page_faults():
    assert _page_faults_of_the_second_allocation("keep") < PAGES // 16
    # The control: glibc by default maps such a block afresh and unmaps it when freed.
    assert _page_faults_of_the_second_allocation("default") > PAGES // 2
