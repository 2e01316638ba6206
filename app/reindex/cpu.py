"""How much CPU a build child may take beside the serving processes.

Four knobs (IndexSettings): its threads (`build_child_threads`: ONNX Runtime intra-op and Faiss
OpenMP), its scheduling class (`build_sched`), its niceness (`build_nice`, for the normal class),
and a hard share of the wall clock (`build_cpu_share`): a duty cycle that stops the child
(SIGSTOP) for the rest of each period once it has run its share (SIGCONT).

`build_sched="idle"` (the default) puts the child in Linux's SCHED_IDLE class: it runs only on CPU
time no other task wants, and a request's thread that wakes up preempts it at once (since Linux
5.4 the scheduler also counts a CPU that runs only SCHED_IDLE tasks as idle when it places a waking
task: LWN, "Fixing SCHED_IDLE"). Niceness is
only a weight: a nice-19 build keeps the core until the scheduler's next decision, so a request
arriving on that core waits behind it (measured in the swap step of bench/README.md). Neither
starves the build while the servers leave a core idle; under saturation both do, by design (the
last good build keeps serving). Nice 0 lets it take a whole core (with 2 threads, both: /recall
p99 162x steady); one thread caps it at one core, and the duty cycle caps it below one core
whatever the load. A stopped child holds no lock the worker cannot renew: the lock is the
worker's, renewed by its own heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

PERIOD_S = 0.1  # short enough that a request never waits a whole period behind the build


def lower_priority(sched: str, nice: int) -> None:
    """In the build child, before it starts any thread (threads inherit the class when created):
    SCHED_IDLE for `sched="idle"`, else `nice` added to its niceness."""
    if sched == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif nice:
        os.nice(nice)


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
