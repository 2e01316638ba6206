"""The build child's CPU cap on a real busy process: held to its share, always left running."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from app.reindex.cpu import DutyCycle, cap

BUSY = "while True: pass"


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
