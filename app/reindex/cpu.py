"""How much CPU a build child may take beside the serving processes.

Three knobs (IndexSettings): its threads (`build_child_threads`: ONNX Runtime intra-op and Faiss
OpenMP), its niceness (`build_nice`), and a hard share of the wall clock (`build_cpu_share`): a
duty cycle that stops the child (SIGSTOP) for the rest of each period once it has run its share
(SIGCONT). Niceness alone either starves the build under load (nice 19: a 1M build took ~90 s) or
lets it take both cores (nice 0: /recall p99 162x steady); one thread caps it at one core, and the
duty cycle caps it below one core whatever the load. A stopped child holds no lock the worker
cannot renew: the lock is the worker's, renewed by its own heartbeat. See bench/README.md (swap).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

PERIOD_S = 0.1  # short enough that a request never waits a whole period behind the build


class DutyCycle(threading.Thread):
    """Holds process `pid` to `share` of the wall clock until it exits or `stop()` is called.

    A thread, not an asyncio task: the cycle must keep its rhythm while the event loop is busy, and
    it must end with the child resumed (a child left stopped would never exit)."""

    def __init__(self, pid: int, share: float, period_s: float = PERIOD_S) -> None:
        super().__init__(name=f"cpu-share-{pid}", daemon=True)
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.pid = pid
        self.share = share
        self.period_s = period_s
        self._done = threading.Event()

    def run(self) -> None:
        on, off = self.period_s * self.share, self.period_s * (1 - self.share)
        try:
            while not self._done.wait(on):
                os.kill(self.pid, signal.SIGSTOP)
                stopped = self._done.wait(off)
                os.kill(self.pid, signal.SIGCONT)
                if stopped:
                    return
        except ProcessLookupError:
            return  # the child has exited
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2 * self.period_s + 1)


def cap(pid: int, share: float) -> DutyCycle | None:
    """Start the duty cycle on `pid`, or None when `share` is 1 (no cap)."""
    if share >= 1:
        return None
    cycle = DutyCycle(pid, share)
    cycle.start()
    return cycle
