"""The build child's CPU cap on a real busy process: held to its share, always left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from app.reindex.cpu import DutyCycle, StarvationGuard, cap, guard

BUSY = "while True: pass"


# A suite started under `nice` leaves these tests less room: niceness stops at 19, and a SCHED_IDLE
# loop beside a nice-15 busy loop gets ~8% of the core (weights 3 against 36), not a starved share.
NICE = os.nice(0)


def cpu_share(p: psutil.Process, seconds: float) -> float:
    before, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)
    return (sum(p.cpu_times()[:2]) - before) / (time.monotonic() - t0)


def test_duty_cycle_holds_a_busy_process_to_its_share_and_resumes_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        p = psutil.Process(proc.pid)
        cycle = cap(proc.pid, 0.25)
        assert cycle is not None
        capped = cpu_share(p, 1.5)
        cycle.stop()
        assert not cycle.is_alive()
        time.sleep(0.05)
        assert p.status() != psutil.STATUS_STOPPED  # never left stopped: it could not exit
        free = cpu_share(p, 0.5)
        # A busy loop takes a whole core uncapped (less on a loaded box: compared side by side).
        assert capped < 0.4 and capped < 0.6 * free, (capped, free)
    finally:
        proc.kill()
        proc.wait()


def test_no_cap_at_full_share_and_exited_child() -> None:
    assert cap(1, 1.0) is None
    with pytest.raises(ValueError):
        DutyCycle(1, 0)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    cycle = DutyCycle(proc.pid, 0.5, period_s=0.01)
    cycle.start()
    cycle.join(2)
    assert not cycle.is_alive()  # the child had exited: the cycle ends by itself


def on_cpu_s(pid: int) -> float:
    """Seconds on a CPU, in nanoseconds from the scheduler (psutil's times count 10 ms ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


PRIORITY = """
import os, sys, threading
from app.reindex.cpu import lower_priority
lower_priority(sys.argv[1], int(sys.argv[2]))
seen = []
t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(threading.get_native_id())))
t.start(); t.join()
print(os.sched_getscheduler(0), seen[0], os.nice(0))
"""


@pytest.mark.parametrize(("sched", "nice"), [("idle", 19), ("normal", 7), ("normal", 0)])
def test_lower_priority_sets_the_class_for_the_child_and_the_threads_it_starts(sched: str, nice: int) -> None:
    if sched == "normal" and NICE + nice > 19:
        pytest.skip(f"the suite runs at nice {NICE}: no room to lower a child by {nice}")
    out = subprocess.run(
        [sys.executable, "-c", PRIORITY, sched, str(nice)], capture_output=True, text=True, check=True
    ).stdout.split()
    policy, thread_policy, niceness = map(int, out)
    want = os.SCHED_IDLE if sched == "idle" else os.SCHED_OTHER
    assert policy == thread_policy == want
    if sched == "normal":
        assert niceness == NICE + nice


def wait_for_class(pid: int, policy: int) -> None:
    deadline = time.monotonic() + 20
    while os.sched_getscheduler(pid) != policy:
        assert time.monotonic() < deadline, "the child never set its class"
        time.sleep(0.05)


def wait_for_niceness(pid: int, nice: int) -> None:
    deadline = time.monotonic() + 20
    while os.getpriority(os.PRIO_PROCESS, pid) != nice:
        assert time.monotonic() < deadline, "the child never set its niceness"
        time.sleep(0.05)


def test_an_idle_class_build_yields_its_core_to_a_busy_normal_process() -> None:
    """Three busy loops on one CPU: a normal one, a nice-19 one and a SCHED_IDLE one. The idle one
    gets several times less than the nice-19 one (which keeps the core for its slice when a
    request wakes up). Compared within one run, so other load on the machine hits all three."""
    cpu = min(os.sched_getaffinity(0))
    pin = f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"

    def loop(sched: str, nice: int) -> subprocess.Popen[bytes]:
        lower = f"from app.reindex.cpu import lower_priority; lower_priority({sched!r}, {nice})\n"
        return subprocess.Popen([sys.executable, "-c", pin + lower + BUSY])

    procs = {"normal": loop("normal", 0), "nice19": loop("normal", 19), "idle": loop("idle", 19)}
    try:
        # Each in its class before the count starts (a child still importing runs as a normal task).
        wait_for_class(procs["idle"].pid, os.SCHED_IDLE)
        wait_for_niceness(procs["nice19"].pid, min(19, os.nice(0) + 19))
        time.sleep(0.3)  # the normal one is past its imports too (it started first)
        before = {name: on_cpu_s(p.pid) for name, p in procs.items()}
        time.sleep(3.0)
        got = {name: on_cpu_s(p.pid) - before[name] for name, p in procs.items()}
        assert got["normal"] > 0.3, got  # it ran (on a loaded box, less than the whole 3 s)
        # Measured here: SCHED_IDLE 0.9% of the normal loop's time, nice 19 4.4% (by weight alone
        # 0.3% and 1.4%: 3 and 15 against nice 0's 1024).
        assert got["nice19"] > 0.01 * got["normal"], got
        assert got["idle"] < 0.5 * got["nice19"], got
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_a_starved_idle_build_is_moved_to_the_normal_class() -> None:
    """A SCHED_IDLE loop pinned beside a busy normal loop on one CPU queues and barely runs: the
    guard moves it to the normal class at its niceness."""
    if NICE > 10:
        pytest.skip(f"the suite runs at nice {NICE}: its busy loop does not starve a SCHED_IDLE one")
    cpu = min(os.sched_getaffinity(0))

    def loop(sched: str, code: str) -> subprocess.Popen[bytes]:
        start = (
            f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"
            f"from app.reindex.cpu import lower_priority; lower_priority({sched!r}, 0)\n"
        )
        return subprocess.Popen([sys.executable, "-c", start + code])

    busy, starved = loop("normal", BUSY), loop("idle", BUSY)
    try:
        wait_for_class(starved.pid, os.SCHED_IDLE)
        g = StarvationGuard(starved.pid, 0.05, 19, window_s=1.0)
        g.start()
        g.join(20)
        assert g.promoted_at is not None
        assert os.sched_getscheduler(starved.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, starved.pid) == 19
    finally:
        for p in (busy, starved):
            p.kill()
            p.wait()


def test_a_build_that_does_not_queue_for_a_cpu_stays_idle() -> None:
    """Slow for another reason than the CPU (here it sleeps, as a build does on its files or its
    lock): it runs under its minimum share but never waits on a run queue, so it is left alone."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from app.reindex.cpu import lower_priority; lower_priority('idle', 0)\n"
            "import time; time.sleep(60)",
        ]
    )
    try:
        wait_for_class(proc.pid, os.SCHED_IDLE)
        g = StarvationGuard(proc.pid, 0.05, 19, window_s=0.5)
        g.start()
        time.sleep(2.0)  # four windows
        g.stop()
        assert g.promoted_at is None
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
        assert guard(proc.pid, "normal", 0.05, 19) is None  # only SCHED_IDLE children are watched
        assert guard(proc.pid, "idle", 0.0, 19) is None  # min_share 0: off
    finally:
        proc.kill()
        proc.wait()
