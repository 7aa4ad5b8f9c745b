"""Process-level gauges every Ferrum process exports (names kept from the original design)."""

from __future__ import annotations

import os
import resource

from prometheus_client import Gauge

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_memory_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


MEMORY = Gauge("ferrum_infer_memory_usage_bytes", "Resident memory of this process")
MEMORY.set_function(resident_memory_bytes)
