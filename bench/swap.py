"""The `swap` step of `python -m bench.run`: full reindexes and swaps while /recall runs open loop, one
per build policy, every answer checked against an offline recomputation for its build."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import compute
from bench.catalog import ITEMS, synthetic_items, write_items
from bench.context import (
    Context,
    K,
    recall_bodies,
    step,
    user_rows,
)
from bench.load import (
    LoadProcess,
    LoadResult,
    LoadSpec,
    run_load,
    summarize,
)
from bench.reindex import finish, run_child
from bench.server import ServiceProcess

log = logging.getLogger("bench")


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
        steady = LoadSpec(
            port=svc.port,
            path="/recall",
            bodies_file=str(bodies),
            concurrency=64,
            duration_s=plan.swap_steady_s,
            rate=rate,
            warmup_s=1.0,
        )
        ctx.results["swap_steady"] = {"rate": rate, **summarize(run_load(steady, ctx.tmp))}
        log.info(
            "swap: steady state at %.0f req/s with no build: p50 %.1f ms, p99 %.1f ms, worst %.1f ms",
            rate,
            ctx.results["swap_steady"]["p50_ms"],
            ctx.results["swap_steady"]["p99_ms"],
            ctx.results["swap_steady"]["max_ms"],
        )
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
