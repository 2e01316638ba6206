"""`twotower serve --workers N`: N serving processes on one port, each a full replica.

The supervisor binds the port once, imports the app (FastAPI, NumPy, Faiss, ONNX Runtime) and what
a serving process imports late (app.serve.preload), freezes the collector (gc.freeze: a collection
in a child would write to every object made before the fork) and forks N processes, which all
accept on that one socket; what the imports allocated is shared copy-on-write (measured, 2
processes with no index loaded: 141 MB PSS for the whole service forked, 191 MB with
multiprocessing's spawn; with a 100k-item build, 2 processes 219 -> 181 MB with the preload and
the freeze, against 134 MB for one). Nothing that starts threads of ours is made before
the fork (OpenBLAS's own pool handles a fork itself, through pthread_atfork). Each process is a
whole replica: its own lifespan, ONNX sessions, poll loop and replica record, all made after the
fork. They share what is on disk: a build's files are memory-mapped (index_store.loading), so a
second process adds little memory. State that must agree across them lives in Redis (jobs,
locks, replica records, the change log), so more than one process needs `TWOTOWER_REDIS_URL`.

- The reindex worker runs in process 0 only: one worker per service; the others pick a new build
  up through their poll (`poll_interval_s`), as replicas on other hosts do.
- Metrics: prometheus_client's multiprocess mode in a directory of the supervisor's
  (`PROMETHEUS_MULTIPROC_DIR`, made and removed here unless the operator set one), so /metrics
  sums every process's counters whichever process answers (app.metrics).
- SIGTERM / SIGINT go to every process, which drain as one (`shutdown_drain_s`); the supervisor
  waits for them. A process that dies otherwise is started again. A process dies with the
  supervisor (PR_SET_PDEATHSIG), so a SIGKILLed service leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from app.settings import Settings

log = logging.getLogger("twotower")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SHM = "/dev/shm"


def memory_dir() -> str | None:
    """/dev/shm where the host has it (a tmpfs), else the default temporary directory.

    Every request updates the processes' metric files through shared memory maps: on a disk
    filesystem those dirty pages go to disk every few seconds, and a write to a page being written
    back waits for it (ext4 in ordered mode can hold it behind a build's fsync of hundreds of MB).
    """
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK) else None


_STOP_S = 30.0  # after the drain: how long a process may take to finish before it is killed
_RESTART_S = 1.0  # pause before a crashed process is started again (no tight crash loop)


def default_workers(settings: Settings) -> int:
    """The usable cores with Redis (shared state); 1 with the in-process store."""
    if not settings.redis_url:
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _replica(settings: Settings, index: int, sock: socket.socket, host: str, announce: bool) -> None:
    """One serving process (forked): the worker in process 0 only."""
    from app.reindex.child import die_with_parent
    from app.serve import serve

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the supervisor's handlers, until uvicorn's own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    die_with_parent()
    if os.getppid() == 1:  # the supervisor died before the line above
        return
    settings = settings.model_copy(deep=True)
    settings.worker = settings.worker and index == 0
    port = int(sock.getsockname()[1])
    serve(settings, host, port, announce=announce and index == 0, sockets=[sock])


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int, announce: bool) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.workers = workers
        self.announce = announce
        self.stopping = False
        self.procs: dict[int, BaseProcess] = {}
        self.ctx = multiprocessing.get_context("fork")

    def _start(self, index: int, sock: socket.socket) -> None:
        p = self.ctx.Process(
            target=_replica,
            args=(self.settings, index, sock, self.host, self.announce),
            name=f"twotower-serve-{index}",
        )
        p.start()
        self.procs[index] = p
        log.info("serving process %d started (pid %s)", index, p.pid)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("signal %s: stopping %d serving processes", sig, len(self.procs))
        self.stopping = True
        for p in self.procs.values():
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def run(self) -> int:
        own_dir = MULTIPROC_ENV not in os.environ
        mdir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="twotower-metrics-", dir=memory_dir())
        os.environ[MULTIPROC_ENV] = mdir  # before prometheus_client is imported: it reads it then
        # Preload: imported once here, shared copy-on-write by every forked process. Then the
        # objects made so far go to the collector's permanent generation (gc.freeze): a collection
        # in a child would otherwise write to every one of them and copy the pages they sit on.
        from app.serve import preload

        preload()
        gc.collect()
        gc.freeze()

        sock = bind(self.host, self.port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for i in range(self.workers):
                self._start(i, sock)
            self._watch(sock)
        finally:
            sock.close()
            if own_dir:
                shutil.rmtree(mdir, ignore_errors=True)
        return 0

    def _watch(self, sock: socket.socket) -> None:
        from prometheus_client import multiprocess

        stop_by: float | None = None
        while self.procs:
            time.sleep(0.2)
            if self.stopping and stop_by is None:
                stop_by = time.monotonic() + self.settings.shutdown_drain_s + _STOP_S
            for index, p in list(self.procs.items()):
                if p.is_alive():
                    if stop_by is not None and time.monotonic() > stop_by and p.pid is not None:
                        log.error("serving process %d (pid %s) did not stop: killed", index, p.pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGKILL)
                    continue
                p.join()
                del self.procs[index]
                if p.pid is not None:
                    multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                if not self.stopping:
                    log.error(
                        "serving process %d (pid %s) exited (%s): starting it again", index, p.pid, p.exitcode
                    )
                    time.sleep(_RESTART_S)
                    if not self.stopping:
                        self._start(index, sock)
