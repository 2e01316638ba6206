"""Faiss/OpenMP thread settings for serving and for builds.

With the libgomp that faiss-cpu wheels ship, `omp_set_num_threads` sets the *calling thread's*
OpenMP ICV only: a thread started later (a uvicorn worker thread, a build thread) still sees the
process default (OMP_NUM_THREADS, else the core count). So the setting is applied per call on the
thread that searches or builds, never once at startup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import faiss

log = logging.getLogger(__name__)


def set_faiss_threads(n: int) -> None:
    """Set the OpenMP threads Faiss uses for calls made from the current thread."""
    if n < 1:
        raise ValueError(f"faiss threads must be >= 1, got {n}")
    faiss.omp_set_num_threads(n)


def faiss_threads() -> int:
    """Threads Faiss would use for a call made from the current thread."""
    return int(faiss.omp_get_max_threads())


@contextmanager
def using_faiss_threads(n: int) -> Iterator[None]:
    """Run a block with `n` Faiss threads on this thread, then restore the previous setting."""
    before = faiss_threads()
    set_faiss_threads(n)
    try:
        yield
    finally:
        set_faiss_threads(before)
