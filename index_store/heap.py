"""Handing freed heap memory back to the system (glibc's `malloc_trim`; a no-op elsewhere).

glibc keeps memory freed to the malloc heap resident for reuse, and gives each thread an arena of
its own. Two places of a build measured that at their peak: a dropped index candidate (its
inverted lists come from the heap: at 10M items the dropped Flat candidate's 2.6 GB stayed in the
RSS through the SQ8 candidate and the write, peak 7.4 GB) and the data-file writer thread (its
temporaries stayed resident beside the index being built: +150 MB of peak RSS at 1M items).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; absent on musl and macOS
    except (AttributeError, OSError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    out: Callable[[int], int] = trim
    return out


def trim_heap() -> None:
    """Return the free memory of every malloc arena (the calling thread's first) to the system."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
