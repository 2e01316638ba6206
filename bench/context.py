"""What every step of `python -m bench.run` shares: the plan, the run's context and the step wrapper
(wall time and the CPU other processes took), the users the load is made of."""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import compute
from bench.load import (
    write_bodies,
)

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
README = ROOT / "bench" / "README.md"
K = 100


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run; `full()` is the reference, `quick()` the smoke run."""

    name: str
    items: int
    users: int
    kinds: tuple[str, ...]  # built, measured in compute; the first ANN kind is the served ANN
    http_kinds: tuple[str, ...]
    concurrency: tuple[int, ...]
    repeats: int  # each load level runs this many times; the table shows medians over them
    level_s: float
    warmup_s: float
    half_rate_s: float
    compute_n: int
    score_s: float
    swap_before_s: float
    swap_after_s: float
    # The swap targets' denominator: one open-loop window at the swap rate with no build, measured
    # once before the policies (a few seconds of "before" in each run is one burst away from a
    # p99 that flatters or condemns that run; see bench/swap.py).
    swap_steady_s: float
    swap_users: int = 32
    # One swap per policy of the build child: (threads, scheduling class, niceness, CPU share;
    # app/reindex/cpu.py). The first is the worker's default (IndexSettings.build_child_threads /
    # build_sched / build_nice / build_cpu_share); the others are what it replaced (nice 19) and
    # the build at full priority on one core (nice 0).
    swap_builds: tuple[tuple[int, str, int, float], ...] = (
        (1, "idle", 0, 1.0),
        (1, "normal", 19, 1.0),
        (1, "normal", 0, 1.0),
    )
    recall_queries: int = 500
    pool_users: int = 1000  # distinct users cycled by the load generator
    processes: tuple[int, ...] = (1, 2)  # serving processes of twotower and of the glue peer, side by side

    @classmethod
    def full(cls) -> Plan:
        return cls(
            name="full",
            items=1_000_000,
            users=10_000,
            kinds=("exact", "ivf"),
            http_kinds=("exact", "ivf"),
            concurrency=(1, 2, 4, 8, 16, 32, 64),
            repeats=3,
            level_s=3.0,
            warmup_s=2.0,
            half_rate_s=5.0,
            compute_n=1000,
            score_s=5.0,
            swap_before_s=8.0,
            swap_after_s=8.0,
            swap_steady_s=30.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            name="quick",
            items=100_000,
            users=2_000,
            kinds=("exact", "ivf"),
            http_kinds=("exact", "ivf"),
            concurrency=(1, 8, 32),
            repeats=1,
            level_s=2.0,
            warmup_s=1.0,
            half_rate_s=2.0,
            compute_n=200,
            score_s=2.0,
            swap_before_s=3.0,
            swap_after_s=3.0,
            swap_steady_s=6.0,
            recall_queries=200,
            pool_users=200,
        )


@dataclass
class Context:
    plan: Plan
    tmp: Path
    model_store: Path
    version: str
    data: Path
    results: dict[str, Any] = field(default_factory=dict)
    catalog_ids: list[str] = field(default_factory=list)
    swap_rate: float | None = None  # --swap-rate: the swap step's rate when the http step is skipped

    def index_root(self, kind: str) -> Path:
        return self.tmp / f"index-{kind}"

    def log_file(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    @property
    def ann_kind(self) -> str | None:
        return next((k for k in self.plan.kinds if k != "exact"), None)

    def service_env(self, kind: str, **extra: str) -> dict[str, str]:
        return {
            "TWOTOWER_MODEL_STORE": str(self.model_store),
            "TWOTOWER_INDEX_STORE": str(self.index_root(kind)),
            "TWOTOWER_DATA_DIR": str(self.data),
            "TWOTOWER_MODEL_VERSIONS": json.dumps([self.version]),
            "TWOTOWER_POLL_INTERVAL_S": "0.5",
            **extra,
        }


def step(name: str) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Time a step, log it, and record its wall time under results["steps_s"]."""

    def wrap(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        def run(ctx: Context) -> None:
            log.info("== %s", name)
            started = time.monotonic()
            busy0, mine0 = busy_cpu_s(), own_cpu_s()
            fn(ctx)
            wall = time.monotonic() - started
            ctx.results.setdefault("steps_s", {})[name] = round(wall, 1)
            # Other work on a shared box skews everything: keep the evidence beside the numbers. Every
            # child of a step has been waited for when it returns, so RUSAGE_CHILDREN covers them.
            foreign = max(0.0, (busy_cpu_s() - busy0) - (own_cpu_s() - mine0))
            share = foreign / (wall * (os.cpu_count() or 1))
            ctx.results.setdefault("foreign_cpu", {})[name] = {
                "core_s": round(foreign, 1),
                "share": round(share, 3),
            }
            if share > 0.05:
                log.warning("other processes used %.0f%% of the CPU during %s", share * 100, name)
            # ... and a shared host can slow the vCPUs with no trace inside the VM: a yardstick shows it.
            yardstick = compute.calibrate(repeats=1)["python_loop_ms"]
            ctx.results.setdefault("calibration", {}).setdefault("steps", {})[name] = round(yardstick)
            log.info("== %s done in %.1fs", name, time.monotonic() - started)

        return run

    return wrap


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def median_of(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in keys}


# --- steps ---------------------------------------------------------------------------------------


def user_rows(data: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` users' feature rows exactly as the in-process store serves them."""
    from app.catalog import read_users

    users = read_users(data)
    ids = list(users)[:n]
    random.Random(seed).shuffle(ids)
    return [{**users[u], "user_id": u} for u in ids]


def recall_bodies(ctx: Context, n: int, path: Path) -> Path:
    users = user_rows(ctx.data, n)
    return write_bodies(path, [{"user_id": u["user_id"], "k": K} for u in users])
