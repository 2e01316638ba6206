"""How much CPU a build child may take beside the serving processes.

Four knobs (IndexSettings): its threads (`build_child_threads`: ONNX Runtime intra-op and Faiss
OpenMP), its scheduling class (`build_sched`), its niceness (`build_nice`, for the normal class),
and a hard share of the wall clock (`build_cpu_share`): a duty cycle that stops the child
(SIGSTOP) for the rest of each period once it has run its share (SIGCONT).

`build_sched="idle"` (the default) puts the child in Linux's SCHED_IDLE class: it runs only on CPU
time no other task wants, and a request's thread that wakes up preempts it at once (since Linux
5.4 the scheduler also counts a CPU that runs only SCHED_IDLE tasks as idle when it places a waking
task: LWN, "Fixing SCHED_IDLE"). Niceness is only a weight: a nice-19 build keeps the core until
the scheduler's next decision, so a request arriving on that core waits behind it (measured in the
swap step of bench/README.md). Neither starves the build while the servers leave a core idle;
under saturation both nearly do (by weight, SCHED_IDLE gets 0.3% of a core beside one busy thread,
nice 19 1.4%), and the last good build keeps serving. Saturation that lasts would hold a
SCHED_IDLE build back for good, so the worker watches it (`StarvationGuard`, `build_min_share`): a
child that wanted a CPU for most of a window yet ran under its minimum share is moved to the normal
class at `build_nice`.
Nice 0 lets it take a whole core (with 2 threads, both: /recall p99 162x steady); one thread caps
it at one core, and the duty cycle caps it below one core whatever the load. A stopped child holds
no lock the worker cannot renew: the lock is the worker's, renewed by its own heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

PERIOD_S = 0.1  # short enough that a request never waits a whole period behind the build
GUARD_WINDOW_S = 10.0  # a starved build is promoted after one such window: a swap that waits 10 s


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


def _threads(pid: int) -> list[int]:
    """Thread ids of process `pid`; ProcessLookupError once it is gone (the guard's one signal that
    the child exited, whichever of its steps notices first)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc


def _schedstat(pid: int) -> tuple[float, float]:
    """Seconds process `pid` ran on a CPU and waited on a run queue, summed over its threads (the
    scheduler's own nanoseconds, /proc/<pid>/task/<tid>/schedstat). Raises ProcessLookupError once
    the process is gone."""
    ran = waited = 0
    for tid in _threads(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            ran += int(fields[0])
            waited += int(fields[1])
    return ran / 1e9, waited / 1e9


def promote(pid: int, nice: int) -> None:
    """Every thread of `pid` from SCHED_IDLE to the normal class at niceness `nice`. The niceness
    first: an unprivileged process may leave SCHED_IDLE only for a niceness its RLIMIT_NICE allows,
    and raising it always is. Twice over the threads: one started meanwhile by a thread not yet
    moved inherits SCHED_IDLE."""
    for _ in range(2):
        for tid in _threads(pid):
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
                if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


class StarvationGuard(threading.Thread):
    """Watches a SCHED_IDLE build child; promotes it (`promote`) the first time it was starved over
    a window: it waited on a run queue for more than half the window and ran under `min_share` of
    one core. Waiting is what tells starvation from a build that is slow for other reasons (reading
    files, waiting for its lock): those do not queue for a CPU. One way: once promoted it stays at
    `nice` (the policy SCHED_IDLE replaced), so a saturated service does not flip it every window."""

    def __init__(self, pid: int, min_share: float, nice: int, window_s: float = GUARD_WINDOW_S) -> None:
        super().__init__(name=f"cpu-guard-{pid}", daemon=True)
        self.pid = pid
        self.min_share = min_share
        self.nice = nice
        self.window_s = window_s
        self.promoted_at: float | None = None  # seconds after the start, once promoted
        self._done = threading.Event()

    def run(self) -> None:
        try:
            ran, waited = _schedstat(self.pid)
            windows = 0
            while not self._done.wait(self.window_s):
                windows += 1
                ran1, waited1 = _schedstat(self.pid)
                if waited1 - waited > self.window_s / 2 and ran1 - ran < self.min_share * self.window_s:
                    try:
                        promote(self.pid, self.nice)
                    except PermissionError as exc:  # RLIMIT_NICE refuses: it stays SCHED_IDLE
                        log.warning("build child %d starved; cannot leave SCHED_IDLE: %s", self.pid, exc)
                        return
                    self.promoted_at = windows * self.window_s
                    log.warning(
                        "build child %d ran %.1f%% of a core over %.0f s, queued for one: moved to nice %d",
                        self.pid,
                        100 * (ran1 - ran) / self.window_s,
                        self.window_s,
                        self.nice,
                    )
                    return
                ran, waited = ran1, waited1
        except ProcessLookupError:
            return  # the child has exited

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2.0)


def guard(pid: int, sched: str, min_share: float, nice: int) -> StarvationGuard | None:
    """Start the guard on a SCHED_IDLE child, or None (another class, or `min_share` 0)."""
    if sched != "idle" or min_share <= 0:
        return None
    g = StarvationGuard(pid, min_share, nice)
    g.start()
    return g
