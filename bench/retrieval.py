"""Filters, `/similar` and catalog changes under load (the `retrieval` step of `python -m bench.run`).

Two parts, on the served ANN build of the run's catalog:

1. Side by side on one service: `/recall` unfiltered, `/recall` with a filter keeping ~50% and one
   keeping ~1% of the catalog, and `/similar` on stored items, each closed loop at the same
   concurrency, round-robin within every repeat (a host that slows mid-run slows all four alike).
   The filters are picked from candidates on the demo schema's filterable fields (`genres`,
   `release_year`) by their share of the build's own attribute columns, measured with the
   service's filter code; the share is printed and recorded. A request's cost is the service's CPU
   per request (from /proc); req/s and p99 are beside it.
2. Catalog changes: two replicas on one index store (the in-process store, sharing the file change
   log). An open-loop `/recall` load runs on replica A, first alone, then while a stream of
   upserts (100 items/s, batches of 10 every 100 ms) goes to A. Each upserted item gets a
   `release_year` no built item has, so replica B answers a `/recall` filtered on it with exactly
   the upserted items it knows: a probe on B every 20 ms gives each item's time from its PUT to
   recallable on the *other* replica (the replica that takes it answers after applying it).
   Recall p99 on A with and without the stream, side by side.

The step appends to the index store's change log and removes it afterwards, so later steps see the
build as it was. This module holds the step and its first part; the filters it picks are in
`bench/filter_picks.py`, the second part in `bench/upserts.py`, the report's rows and section in
`bench/retrieval_report.py`.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.context import K
from bench.filter_picks import distinct, pick_filters
from bench.load import LoadSpec, run_load, summarize, write_bodies
from bench.server import ServiceProcess
from bench.upserts import TOKEN, upsert_stream

if TYPE_CHECKING:
    from bench.context import Context

log = logging.getLogger("bench")
CONCURRENCY = 8  # the side-by-side level: near the best rate of one service on 2 cores


def measure(ctx: Context) -> None:
    """The `retrieval` step: results under ctx.results["retrieval"]."""
    from index_store.store import IndexStore
    from models.manifest import load_version

    plan = ctx.plan
    kind = ctx.ann_kind or plan.kinds[0]
    root = ctx.index_root(kind)
    manifest = load_version(ctx.model_store, ctx.version)
    build = IndexStore(root).current_build(ctx.version)
    assert build is not None, f"no {kind} build"
    filters = pick_filters(root / ctx.version / build, manifest)
    users = _user_ids(ctx, plan.pool_users)
    ids = _item_ids(root / ctx.version / build, 1000)
    bodies = {
        "unfiltered": [{"user_id": u, "k": K} for u in users],
        **{
            f"filter {lab}": [{"user_id": u, "k": K, "filter": f["filter"]} for u in users]
            for lab, f in filters.items()
        },
        # the ~50% filter, made different on each request by an upper bound no item reaches: what a
        # filter costs the first time a build sees it (each build caches the rows of recent ones)
        "filter 50%, new each request": [
            {"user_id": u, "k": K, "filter": distinct(filters["50%"]["filter"], j)}
            for j, u in enumerate(users)
        ],
        "/similar": [{"item_id": i, "k": K} for i in ids],
    }
    out: dict[str, Any] = {"kind": kind, "filters": filters, "concurrency": CONCURRENCY}
    env = ctx.service_env(kind, TWOTOWER_ADMIN_TOKEN=TOKEN, TWOTOWER_CHANGES_POLL_S="0.5")
    log_path = root / "changes.jsonl"
    try:
        with ServiceProcess(env, ctx.log_file("serve-retrieval-a")) as a:
            out["side_by_side"] = side_by_side(ctx, a, bodies)
            with ServiceProcess(env, ctx.log_file("serve-retrieval-b")) as b:
                rate = _third_rate(ctx, out["side_by_side"]["unfiltered"]["rps"])
                out["upserts"] = upsert_stream(ctx, a, b, manifest, users, rate)
    finally:
        for p in (log_path, log_path.with_name(log_path.name + ".lock")):
            p.unlink(missing_ok=True)  # later steps rebuild from the catalog as generated
    ctx.results["retrieval"] = out


def _user_ids(ctx: Context, n: int) -> list[str]:
    from bench.context import user_rows

    return [str(u["user_id"]) for u in user_rows(ctx.data, n)]


def _item_ids(build_dir: Path, n: int) -> list[str]:
    from index_store.directory import IDS_FILE

    ids = np.load(build_dir / IDS_FILE, mmap_mode="r")
    rows = np.random.default_rng(0).choice(len(ids), min(n, len(ids)), replace=False)
    return [str(ids[r]) for r in rows.tolist()]


def _third_rate(ctx: Context, side_by_side_rps: float) -> float:
    """A third of the best /recall rate (of the http step, or of this step's unfiltered level):
    two replicas, the probe and the upserts share the 2 cores with it."""
    runs = [r for r in ctx.results.get("http", []) if r.get("kind") == ctx.ann_kind]
    best = max((r["max_rps"] for r in runs), default=side_by_side_rps)
    return max(20.0, min(best, side_by_side_rps) / 3)


def side_by_side(
    ctx: Context, svc: ServiceProcess, bodies: Mapping[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    plan = ctx.plan
    files = {
        label: write_bodies(ctx.tmp / f"retrieval-{i}.jsonl", b)
        for i, (label, b) in enumerate(bodies.items())
    }
    for label, body in bodies.items():  # every request shape answers before anything is timed
        path = "/similar" if label == "/similar" else "/recall"
        got = svc.post(path, body[0])
        assert len(got["items"]) == K, (label, len(got["items"]))
    for label, f in files.items():
        path = "/similar" if label == "/similar" else "/recall"
        run_load(LoadSpec(svc.port, path, str(f), CONCURRENCY, plan.warmup_s), ctx.tmp)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in files}
    for _ in range(plan.repeats):
        for label, f in files.items():
            path = "/similar" if label == "/similar" else "/recall"
            cpu0 = svc.cpu_s()
            res = run_load(LoadSpec(svc.port, path, str(f), CONCURRENCY, plan.level_s), ctx.tmp)
            s = summarize(res)
            s["server_cpu_ms_per_req"] = (svc.cpu_s() - cpu0) * 1e3 / max(1, len(res.t))
            runs[label].append(s)
    out: dict[str, Any] = {}
    for label, rs in runs.items():
        keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_req")
        out[label] = {
            **{k: statistics.median(r[k] for r in rs) for k in keys},
            "failed": sum(r["failed"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
        }
    base = out["unfiltered"]
    for label, row in out.items():
        row["cost_x"] = row["server_cpu_ms_per_req"] / base["server_cpu_ms_per_req"]
        row["rps_x"] = row["rps"] / base["rps"]
        log.info(
            "%s: %.0f req/s, p99 %.2f ms, %.3f CPU ms/req (%.2fx unfiltered), %d failed",
            label,
            row["rps"],
            row["p99_ms"],
            row["server_cpu_ms_per_req"],
            row["cost_x"],
            row["failed"],
        )
    return out
