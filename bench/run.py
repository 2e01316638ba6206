"""The benchmark, end to end: `python -m bench.run [--quick]` (also `twotower bench`, `make bench`).

Generates the synthetic catalog and users, builds each index kind in a child process, measures the
compute floors in this process, then starts the service as real `app.cli serve --no-worker`
processes and drives `/recall` and `/score` from separate load-generator processes; last, a full
reindex and swap under load. Writes bench/out/results.{json,md}, bench/out/latency.png and the
table into bench/README.md. Every service and child is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import compute, memory, report, retrieval
from bench.catalog import ITEMS, synthetic_items, write_data_dir, write_items
from bench.load import (
    LoadProcess,
    LoadResult,
    LoadSpec,
    run_load,
    run_wrk,
    summarize,
    write_bodies,
    wrk_available,
)
from bench.reindex import finish, run_child
from bench.server import GlueProcess, RedisServer, ServiceProcess, serve_has_workers

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


@step("data")
def make_data(ctx: Context) -> None:
    from models.manifest import load_version

    manifest = load_version(ctx.model_store, ctx.version)
    started = time.monotonic()
    counts = write_data_dir(ctx.data, manifest, ctx.plan.items, ctx.plan.users, seed=0)
    ctx.results["data"] = {**counts, "write_s": time.monotonic() - started, "seed": 0}


@step("reindex")
def build_indexes(ctx: Context) -> None:
    out: dict[str, Any] = {}
    for kind in ctx.plan.kinds:
        log.info("building the %s index over %d items", kind, ctx.plan.items)
        logf = ctx.log_file(f"build-{kind}")
        proc = run_child(ctx.model_store, ctx.version, ctx.index_root(kind), ctx.data, kind, logf)
        out[kind] = finish(proc, logf)
        log.info("%s: %.1fs, peak %.0f MiB", kind, out[kind]["wall_s"], out[kind]["peak_rss_mb"])
    ctx.results["reindex"] = out


def user_rows(data: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` users' feature rows exactly as the in-process store serves them."""
    from app.catalog import read_users

    users = read_users(data)
    ids = list(users)[:n]
    random.Random(seed).shuffle(ids)
    return [{**users[u], "user_id": u} for u in ids]


@step("compute")
def measure_compute(ctx: Context) -> None:
    from index_store.store import IndexStore
    from index_store.threads import set_faiss_threads
    from models.manifest import load_version
    from models.runtime import TowerRunner

    plan = ctx.plan
    manifest = load_version(ctx.model_store, ctx.version)
    set_faiss_threads(1)
    user = TowerRunner(
        ctx.model_store / ctx.version, manifest, "user", intra_threads=1, spinning=False
    ).load()
    rows = user_rows(ctx.data, plan.pool_users)
    snaps = {k: IndexStore(ctx.index_root(k)).load(ctx.version, manifest) for k in plan.kinds}
    first = snaps[plan.kinds[0]]
    ctx.catalog_ids = first.ids.tolist()
    out: dict[str, Any] = {"floor": {}, "throughput": {}, "faiss_threads": {}, "recall": {}}
    for kind, snap in snaps.items():
        log.info("compute floor: %s", kind)
        n = plan.compute_n if kind != "exact" else max(100, plan.compute_n // 4)  # exact: ~20 ms a call
        out["floor"][kind] = compute.recall_floor(user, snap, rows, K, n)
        out["throughput"][kind] = {
            str(t): compute.compute_throughput(user, snap, rows, K, t, 2.0 if plan.name == "full" else 1.0)
            for t in (1, 2)
        }
        queries = user.embed(rows[:200])
        n = plan.compute_n if kind != "exact" else max(50, plan.compute_n // 10)
        out["faiss_threads"][kind] = compute.faiss_threads(snap, queries, K, n, (1, 2))
    rng = np.random.default_rng(0)
    candidates = [
        [ctx.catalog_ids[j] for j in rng.choice(len(ctx.catalog_ids), 1000, replace=False)] for _ in range(20)
    ]
    ctx.results["score_candidates"] = candidates
    score_snap = snaps[ctx.ann_kind or plan.kinds[0]]
    log.info("compute: /score tile-once vs naive")
    out["score"] = compute.tile_vs_naive(user, score_snap, rows, candidates, max(50, plan.compute_n // 5))
    log.info("compute: ORT spinning")
    out["ort_spinning"] = compute.ort_spinning(
        ctx.model_store / ctx.version, manifest, rows, max(200, plan.compute_n)
    )
    if "exact" in snaps:
        queries = user.embed(rows[: plan.recall_queries])
        for kind, snap in snaps.items():
            if kind != "exact":
                log.info("compute: recall@%d of %s against exact", K, kind)
                out["recall"][kind] = compute.ann_recall(snaps["exact"], snap, queries, K, 200)
    ctx.results["compute"] = out
    del snaps, first, score_snap
    gc.collect()


def recall_bodies(ctx: Context, n: int, path: Path) -> Path:
    users = user_rows(ctx.data, n)
    return write_bodies(path, [{"user_id": u["user_id"], "k": K} for u in users])


@dataclass
class Variant:
    """One served configuration in the /recall sweep: twotower or the glue peer, N processes."""

    label: str
    kind: str
    in_thread: bool | None  # TWOTOWER_RUNTIME__COMPUTE_IN_THREAD; None = the default (glue: None)
    svc: ServiceProcess
    server: str = "twotower"  # or "glue"
    processes: int = 1
    store: str = "in-process"  # twotower's feature store: "in-process" or "redis" (glue: in memory)
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    half: list[dict[str, Any]] = field(default_factory=list)


def sweep(ctx: Context, variants: Sequence[Variant], bodies: Path) -> None:
    """Closed-loop levels, then an open loop at half each variant's best rate.

    Every service is up at once (idle ones cost nothing) and the runs go round-robin, variant by
    variant within each repeat of each level: a host that slows down mid-run (shared vCPUs do, with
    no sign inside the VM) then slows every variant alike, and the ratios stay fair.
    """
    plan = ctx.plan
    for v in variants:
        run_load(
            LoadSpec(
                port=v.svc.port,
                path="/recall",
                bodies_file=str(bodies),
                concurrency=8,
                duration_s=plan.warmup_s,
            ),
            ctx.tmp,
        )
    for c in plan.concurrency:
        for _ in range(plan.repeats):
            for v in variants:
                spec = LoadSpec(
                    port=v.svc.port,
                    path="/recall",
                    bodies_file=str(bodies),
                    concurrency=c,
                    duration_s=plan.level_s,
                )
                cpu0 = v.svc.cpu_s()
                res = run_load(spec, ctx.tmp)
                summary = summarize(res)
                summary["server_cpu_ms_per_req"] = (v.svc.cpu_s() - cpu0) * 1e3 / max(1, len(res.t))
                v.runs.setdefault(c, []).append(summary)
        for v in variants:
            row = level_row(c, v.runs[c])
            log.info(
                "%s c=%d: p50 %.2f p99 %.2f ms, %.0f req/s",
                v.label,
                c,
                row["p50_ms"],
                row["p99_ms"],
                row["rps"],
            )
    for _ in range(plan.repeats):
        for v in variants:
            rate = best_level(v)["rps"] / 2
            spec = LoadSpec(
                port=v.svc.port,
                path="/recall",
                bodies_file=str(bodies),
                concurrency=64,
                duration_s=plan.half_rate_s,
                rate=rate,
                warmup_s=0.5,
            )
            res = run_load(spec, ctx.tmp)
            v.half.append({**summarize(res), "behind": res.behind, "rate": rate})


LEVEL_KEYS = ("p50_ms", "p95_ms", "p99_ms", "rps", "server_cpu_ms_per_req", "client_cpu_ms_per_req")


def level_row(c: int, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"concurrency": c, **median_of(runs, LEVEL_KEYS), "failed": sum(r["failed"] for r in runs)}


def best_level(v: Variant) -> dict[str, Any]:
    return max((level_row(c, runs) for c, runs in v.runs.items()), key=lambda r: r["rps"])


def variant_result(v: Variant) -> dict[str, Any]:
    levels = [level_row(c, runs) for c, runs in sorted(v.runs.items())]
    best = max(levels, key=lambda r: r["rps"])
    half = {
        "rate": v.half[0]["rate"],
        **median_of(v.half, ("p50_ms", "p95_ms", "p99_ms", "rps")),
        "failed": sum(r["failed"] for r in v.half),
    }
    log.info(
        "%s at %.0f req/s (half the best): p50 %.2f p99 %.2f ms",
        v.label,
        half["rate"],
        half["p50_ms"],
        half["p99_ms"],
    )
    return {
        "label": v.label,
        "server": v.server,
        "processes": v.processes,
        "store": v.store,
        "kind": v.kind,
        "compute_in_thread": v.in_thread,
        "levels": levels,
        "max_rps": best["rps"],
        "max_at": best["concurrency"],
        "half_rate": half,
        "memory_mb": v.svc.memory(),
    }


@dataclass(frozen=True)
class HttpConfig:
    label: str
    server: str  # "twotower" or "glue"
    kind: str
    processes: int = 1
    in_thread: bool | None = None  # TWOTOWER_RUNTIME__COMPUTE_IN_THREAD; None = the default
    redis: bool = False  # twotower's feature store in Redis (needed by several processes)


def http_configs(ctx: Context, workers: bool) -> list[HttpConfig]:
    """Every served variant, side by side: twotower on each kind; on the ANN kind twotower and the
    glue peer at each process count (several twotower processes share their state through Redis,
    so twotower also runs 1 process on Redis, for the same store at both counts), and twotower
    with the compute in a thread (a hot-path choice). `workers`: `twotower serve --workers` exists."""
    plan = ctx.plan
    ann = ctx.ann_kind if ctx.ann_kind in plan.http_kinds else None
    out = [HttpConfig(f"twotower {k}", "twotower", k) for k in plan.http_kinds if k != ann]
    if ann is None:
        return out
    multi = workers and any(n > 1 for n in plan.processes)
    for n in plan.processes:
        proc = f"{n} process" + ("es" if n > 1 else "")
        if n == 1:
            out.append(HttpConfig(f"twotower {ann}, 1 process", "twotower", ann))
            if multi:
                out.append(HttpConfig(f"twotower {ann}, 1 process, redis", "twotower", ann, 1, None, True))
        elif workers:
            out.append(HttpConfig(f"twotower {ann}, {proc}, redis", "twotower", ann, n, None, True))
        else:
            log.error("twotower serve has no --workers here: twotower with %s left out of this run", proc)
        out.append(HttpConfig(f"glue peer {ann}, {proc}", "glue", ann, n))
    out.append(HttpConfig(f"twotower {ann}, compute_in_thread=true", "twotower", ann, 1, True))
    return out


def start_variant(
    ctx: Context, stack: contextlib.ExitStack, c: HttpConfig, redis_url: str | None
) -> Variant | None:
    log.info("starting %s", c.label)
    logf = ctx.log_file("serve-" + "".join(ch if ch.isalnum() else "_" for ch in c.label))
    svc: ServiceProcess
    if c.server == "glue":
        index_dir = ctx.index_root(c.kind) / ctx.version
        svc = GlueProcess(ctx.model_store / ctx.version, index_dir, ctx.data, logf, workers=c.processes)
    else:
        extra = (
            {} if c.in_thread is None else {"TWOTOWER_RUNTIME__COMPUTE_IN_THREAD": str(c.in_thread).lower()}
        )
        if c.redis:
            assert redis_url is not None
            extra["TWOTOWER_REDIS_URL"] = redis_url
        svc = ServiceProcess(ctx.service_env(c.kind, **extra), logf, workers=c.processes)
    try:
        stack.enter_context(svc)
    except RuntimeError as exc:  # a variant that cannot start: the rest still runs
        log.error("%s did not start, left out of this run: %s", c.label, exc)
        return None
    store = "redis" if c.redis else "in-process"
    return Variant(c.label, c.kind, c.in_thread, svc, server=c.server, processes=c.processes, store=store)


@step("http")
def measure_http(ctx: Context) -> None:
    plan = ctx.plan
    bodies = recall_bodies(ctx, plan.pool_users, ctx.tmp / "recall.jsonl")
    workers = serve_has_workers()
    configs = http_configs(ctx, workers)
    with contextlib.ExitStack() as stack:
        redis_url = None
        if any(c.redis for c in configs):
            redis = stack.enter_context(RedisServer(ctx.tmp, ctx.data))
            redis_url = redis.url
            log.info("redis-server of the bench's own at %s, %d users loaded", redis.url, redis.users)
        variants = [v for c in configs if (v := start_variant(ctx, stack, c, redis_url)) is not None]
        sweep(ctx, variants, bodies)
        runs = [variant_result(v) for v in variants]
        by_label = {v.label: v for v in variants}
        if wrk_available():
            # wrk beside our own client, at each side's best concurrency: twotower and the glue peer
            for run in runs:
                if run["kind"] == ctx.ann_kind and run["compute_in_thread"] is None:
                    svc = by_label[run["label"]].svc
                    run["wrk"] = run_wrk(
                        svc.port, "/recall", bodies, run["max_at"], plan.level_s * 2, ctx.tmp
                    )
                    log.info("wrk %s c=%d: %.0f req/s", run["label"], run["max_at"], run["wrk"]["rps"])
        main = next(
            (
                r
                for r in runs
                if r["server"] == "twotower" and r["kind"] == ctx.ann_kind and r["processes"] == 1
                if r["compute_in_thread"] is None and r["store"] == "in-process"
            ),
            None,
        )
        if main is not None:
            main["score"] = measure_score_http(ctx, by_label[main["label"]].svc)
    ctx.results["http"] = runs


def measure_score_http(ctx: Context, svc: ServiceProcess) -> dict[str, Any]:
    """/score with 1000 stored candidates per request, one at a time (latency) and at 4 in flight."""
    users = user_rows(ctx.data, 20, seed=1)
    cands = ctx.results["score_candidates"]
    body = [
        {"user_id": u["user_id"], "items": [{"item_id": i} for i in c]}
        for u, c in zip(users, cands, strict=False)
    ]
    first = svc.post("/score", body[0])
    assert len(first["scores"]) == 1000 and not any(s.get("missing") for s in first["scores"])
    path = write_bodies(ctx.tmp / "score.jsonl", body)
    out: dict[str, Any] = {}
    for c in (1, 4):
        runs = [
            summarize(
                run_load(
                    LoadSpec(
                        port=svc.port,
                        path="/score",
                        bodies_file=str(path),
                        concurrency=c,
                        duration_s=ctx.plan.score_s,
                    ),
                    ctx.tmp,
                )
            )
            for _ in range(ctx.plan.repeats)
        ]
        out[str(c)] = {
            **median_of(runs, ("p50_ms", "p95_ms", "p99_ms", "rps")),
            "failed": sum(r["failed"] for r in runs),
        }
    out["request_bytes"] = len(json.dumps(body[0]))
    return out


@step("swap")
def measure_swap(ctx: Context) -> None:
    """Full reindexes (new features for every item, same ids) and swaps while /recall runs open loop.

    Once per build policy of `Plan.swap_builds` (threads, class, niceness, CPU share), the child held to its
    share by the worker's own duty cycle; each rebuild alternates between two catalogs so that every
    swap changes the answers.
    """
    from models.manifest import load_version

    plan = ctx.plan
    kind = ctx.ann_kind or plan.kinds[0]
    manifest = load_version(ctx.model_store, ctx.version)
    swap_data = ctx.tmp / "data-swap"
    swap_data.mkdir(exist_ok=True)
    write_items(swap_data / ITEMS, synthetic_items(manifest, plan.items, seed=1))
    bodies = recall_bodies(ctx, plan.swap_users, ctx.tmp / "swap.jsonl")
    served = next(
        (
            r
            for r in ctx.results.get("http", [])
            if r["kind"] == kind
            and r.get("server", "twotower") == "twotower"
            and r.get("processes", 1) == 1
            and r.get("store", "in-process") == "in-process"
        ),
        None,
    )
    # Half the best rate of the http step; without it (--skip http), --swap-rate or 200 req/s.
    rate = served["half_rate"]["rate"] if served else (ctx.swap_rate or 200.0)
    runs = []
    with ServiceProcess(ctx.service_env(kind), ctx.log_file("serve-swap")) as svc:
        warm = LoadSpec(
            port=svc.port, path="/recall", bodies_file=str(bodies), concurrency=8, duration_s=plan.warmup_s
        )
        run_load(warm, ctx.tmp)
        for policy, source in zip(plan.swap_builds, itertools.cycle((swap_data, ctx.data)), strict=False):
            log.info("swap under load at %.0f req/s, reindex %s", rate, build_label(*policy))
            runs.append(swap_once(ctx, svc, kind, source, policy, rate, bodies))
            sw = runs[-1]
            log.info(
                "swap: %d failed, %d inconsistent, p99 before %.1f / reindex %.1f / swap %.1f ms",
                sw["failed"],
                sw["consistency"]["inconsistent"],
                sw["phases"]["before"]["p99_ms"],
                sw["phases"]["during_reindex"]["p99_ms"],
                sw["phases"]["at_swap"]["p99_ms"],
            )
    ctx.results["swap"] = runs


def build_label(threads: int, sched: str, nice: int, share: float) -> str:
    priority = "SCHED_IDLE" if sched == "idle" else f"nice {nice}"
    return f"{threads} thread{'s' if threads > 1 else ''}, {priority}" + (
        f", CPU share {share:g}" if share < 1 else ""
    )


def swap_once(
    ctx: Context,
    svc: ServiceProcess,
    kind: str,
    source: Path,
    policy: tuple[int, str, int, float],
    rate: float,
    bodies: Path,
) -> dict[str, Any]:
    from app.reindex.cpu import cap

    threads, sched, nice, share = policy
    plan = ctx.plan
    old_build = svc.health()["index_build"]
    spec = LoadSpec(
        port=svc.port,
        path="/recall",
        bodies_file=str(bodies),
        concurrency=64,
        duration_s=plan.swap_before_s + 600,
        rate=rate,
        warmup_s=0.5,
        record=True,
    )
    load = LoadProcess(spec, ctx.tmp)
    try:
        time.sleep(0.5 + plan.swap_before_s)
        t_build0 = time.monotonic()
        logf = ctx.log_file(f"build-swap-{threads}-{sched}-{nice}-{share:g}")
        child = run_child(
            ctx.model_store,
            ctx.version,
            ctx.index_root(kind),
            source,
            kind,
            logf,
            threads=threads,
            nice=nice,
            sched=sched,
        )
        cycle = cap(child.pid, share)
        try:
            build = finish(child, logf)
        finally:
            if cycle is not None:
                cycle.stop()
        t_build1 = time.monotonic()
        t_swapped = wait_for_build(svc, build["build_id"], timeout_s=120)
        time.sleep(plan.swap_after_s + 1.0)
    finally:
        load.stop()
    result = load.wait()
    out = analyse_swap(ctx, result, kind, old_build, build, rate, (t_build0, t_build1, t_swapped))
    label = build_label(threads, sched, nice, share)
    return {"sched": sched, "nice": nice, "threads": threads, "cpu_share": share, "build": label, **out}


def wait_for_build(svc: ServiceProcess, build_id: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if client.get(f"{svc.url}/readyz").json().get("index_build") == build_id:
                return time.monotonic()
            time.sleep(0.02)
    raise RuntimeError(f"the service did not swap to build {build_id} within {timeout_s}s")


def expected_results(
    ctx: Context, kind: str, build_id: str, users: Sequence[Mapping[str, Any]]
) -> dict[str, list[tuple[str, float]]]:
    """What the service must answer for each user on one build, recomputed offline."""
    from index_store.store import IndexStore
    from models.manifest import load_version
    from models.runtime import TowerRunner

    manifest = load_version(ctx.model_store, ctx.version)
    snap = IndexStore(ctx.index_root(kind)).load(ctx.version, manifest, build_id)
    user = TowerRunner(ctx.model_store / ctx.version, manifest, "user").load()
    out = {}
    for u in users:
        q = user.embed([u])
        out[str(u["user_id"])] = snap.search(q, K, [compute.history_of(u)])[0]
    return out


def consistent(items: Sequence[Mapping[str, Any]], expected: Sequence[tuple[str, float]]) -> bool:
    if len(items) != len(expected):
        return False
    if {i["item_id"] for i in items} != {i for i, _ in expected}:
        return False
    return all(abs(a["score"] - b) <= 1e-4 for a, (_, b) in zip(items, expected, strict=True))


def analyse_swap(
    ctx: Context,
    res: LoadResult,
    kind: str,
    old_build: str,
    build: dict[str, Any],
    rate: float,
    marks: tuple[float, float, float],
) -> dict[str, Any]:
    t_build0, t_build1, t_swapped = marks
    w0, w1 = res.window
    phases = {
        "whole": summarize(res, w0, w1),
        "before": summarize(res, w0, t_build0),
        "during_reindex": summarize(res, t_build0, t_build1),
        "at_swap": summarize(res, t_build1, t_swapped + 1.0),
        "after": summarize(res, t_swapped + 1.0, w1),
    }
    # Every response's index_build must match its items: recompute both builds' answers offline.
    bodies = [json.loads(line) for line in (ctx.tmp / "swap.jsonl").read_text().splitlines()]
    by_id = {u["user_id"]: u for u in user_rows(ctx.data, ctx.plan.swap_users)}
    users = [by_id[b["user_id"]] for b in bodies]
    expected = {
        b: expected_results(ctx, kind, b, users) for b in (old_build, build["build_id"]) if b in res.builds
    }
    verdict: dict[tuple[int, int, int], bool] = {}
    for s in res.samples:
        body = json.loads(s["body"])
        name = res.builds[s["build"]]
        want = expected.get(name, {}).get(bodies[s["req"]]["user_id"])
        verdict[(s["req"], s["build"], s["digest"])] = (
            want is not None and body["index_build"] == name and consistent(body["items"], want)
        )
    checked = bad = 0
    for i, status in enumerate(res.status):
        if status != 200:
            continue
        checked += 1
        if not verdict.get((res.req[i], res.build[i], res.digest[i]), False):
            bad += 1
    differ = 0
    if len(expected) == 2:
        a, b = expected.values()
        differ = sum(1 for u in a if [i for i, _ in a[u]] != [i for i, _ in b[u]])
    new_ix = res.builds.index(build["build_id"]) if build["build_id"] in res.builds else -1
    first_new = min((res.t[i] for i, b in enumerate(res.build) if b == new_ix), default=float("nan"))
    old_after = sum(1 for i, b in enumerate(res.build) if b != new_ix and res.t[i] > first_new)
    timeline = timeline_of(res, 0.5)
    return {
        "kind": kind,
        "rate": rate,
        "old_build": old_build,
        "new_build": build["build_id"],
        "reindex": build,
        "requests": len(res.t),
        "failed": sum(1 for s in res.status if s != 200),
        "errors": res.errors,
        "phases": phases,
        "marks": {
            "reindex_start_s": t_build0 - w0,
            "reindex_end_s": t_build1 - w0,
            "swapped_s": t_swapped - w0,
            "first_new_response_s": first_new - w0,
        },
        # requests due after the first new-build answer yet answered by the old build: in-flight
        # overlap (a request due earlier may be read later), informative only
        "old_build_answers_due_after_first_new": old_after,
        "consistency": {
            "checked": checked,
            "inconsistent": bad,
            "users_whose_results_differ": differ,
            "users": len(users),
        },
        "timeline": timeline,
    }


def timeline_of(res: LoadResult, bucket_s: float) -> list[dict[str, float]]:
    """p50/p99 per time bucket since the window start (for the plot)."""
    w0 = res.window[0]
    buckets: dict[int, list[float]] = {}
    for t, lat, st in zip(res.t, res.latency, res.status, strict=True):
        if st == 200:
            buckets.setdefault(int((t - w0) / bucket_s), []).append(lat)
    out = []
    for b in sorted(buckets):
        xs = sorted(buckets[b])
        out.append(
            {
                "t_s": b * bucket_s,
                "p50_ms": xs[len(xs) // 2] * 1e3,
                "p99_ms": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3,
                "n": len(xs),
            }
        )
    return out


@step("retrieval")
def measure_retrieval(ctx: Context) -> None:
    """Filters (~50%, ~1%), /similar and an upsert stream under load (bench/retrieval.py)."""
    retrieval.measure(ctx)


# --- entry point ---------------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured (the checkout may be shared and moving: say so when it is dirty)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")


def newest_version(store: Path) -> str:
    from models.manifest import list_versions

    versions = list_versions(store)
    if not versions:
        raise SystemExit(f"no model version in {store}")
    return versions[-1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from app.settings import DEMO_MODEL_STORE

    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="100k items, one repeat, short levels (< 3 minutes)")
    p.add_argument("--items", type=int, help="catalog size (default 1,000,000; quick 100,000)")
    p.add_argument("--kinds", help="index kinds to build, comma-separated (default exact,ivf; also: hnsw)")
    p.add_argument("--model-store", type=Path, default=DEMO_MODEL_STORE)
    p.add_argument("--version", help="model version (default: the newest in the store)")
    p.add_argument("--out", type=Path, default=OUT, help="where results.json/.md and latency.png go")
    p.add_argument("--readme", type=Path, default=README, help="README whose results block is replaced")
    p.add_argument("--no-readme", action="store_true", help="do not touch any README")
    p.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary directory (data, indexes, logs)"
    )
    p.add_argument("--skip", default="", help="steps to skip, comma-separated: http,swap,memory,retrieval")
    p.add_argument("--swap-rate", type=float, help="req/s of the swap step when http is skipped (200)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    for noisy in ("httpx", "index_store", "models", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.items:
        plan = replace(plan, items=args.items)
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        plan = replace(plan, kinds=kinds, http_kinds=tuple(k for k in plan.http_kinds if k in kinds))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    version = args.version or newest_version(args.model_store)
    load_avg = os.getloadavg()
    if load_avg[0] > 1.0:
        log.warning("load average %.2f: other work on this machine will skew the numbers", load_avg[0])
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="twotower-bench-"))
    ctx = Context(plan, tmp, args.model_store.resolve(), version, tmp / "data", swap_rate=args.swap_rate)
    ctx.results.update(
        plan=asdict(plan),
        model_version=version,
        machine=report.machine_info(),
        load_average_at_start=[round(x, 2) for x in load_avg],
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command="python -m bench.run" + (" --quick" if args.quick else ""),
        calibration={"start": compute.calibrate(), "steps": {}},
        code=code_version(),
    )
    try:
        steps: list[Callable[[Context], None]] = [make_data, build_indexes, measure_compute]
        if "http" not in skip:
            steps.append(measure_http)
        if "swap" not in skip:
            steps.append(measure_swap)
        if "memory" not in skip:
            steps.append(step("memory")(lambda c: memory.measure_memory(c, user_rows(c.data, 200))))
        if "retrieval" not in skip:
            steps.append(measure_retrieval)
        for fn in steps:
            fn(ctx)
    finally:
        if args.keep_tmp:
            log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ctx.results.pop("score_candidates", None)
    ctx.results["wall_s"] = round(time.monotonic() - started, 1)
    ctx.results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ctx.results["calibration"]["end"] = compute.calibrate()
    paths = report.write_all(ctx.results, args.out, None if args.no_readme else args.readme)
    log.info("done in %.0fs: %s", ctx.results["wall_s"], ", ".join(str(p) for p in paths))
    print(report.render_markdown(ctx.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
