"""Process memory: the resident set size for the logs, and handing freed memory back.

The ranker stage frees tens of gigabytes at the full size (the label window's first stage,
CatBoost's training rows) before it scores every user. glibc keeps much of what a process
frees in its arenas, and pyarrow's allocator keeps its own pool, so the resident set stays
high and the next allocations add to it. `release_free_memory` returns both to the
operating system; it changes no data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import resource
from typing import Any

import psutil

log = logging.getLogger(__name__)


def rss_gib() -> float:
    """Current resident set size of this process, GiB."""
    return float(psutil.Process().memory_info().rss) / 2**30


def peak_rss_gib() -> float:
    """Largest resident set size of this process so far, GiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@functools.cache
def _libc_malloc_trim() -> Any:
    """glibc's `malloc_trim`, looked up once (`find_library` runs `ldconfig`); None where
    the C library has no such call (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _malloc_trim() -> bool:
    """`malloc_trim(0)`: give the free memory of every arena back to the system."""
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_free_memory(where: str, level: int = logging.INFO) -> float:
    """Collect garbage, return freed heap and pyarrow pool memory to the system, and log the
    resident set before and after (`where` names the point in the log, `level` the log
    level). Returns the resident set after, GiB."""
    before = rss_gib()
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    _malloc_trim()
    after = rss_gib()
    log.log(
        level, "memory %s: RSS %.2f -> %.2f GiB (peak %.2f)", where, before, after, peak_rss_gib()
    )
    return after
