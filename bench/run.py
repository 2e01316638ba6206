"""The benchmark, end to end: `python -m bench.run [--quick]` (also `twotower bench`, `make bench`).

Generates the synthetic catalog and users, builds each index kind in a child process, measures the
compute floors in this process, then starts the service as real `app.cli serve --no-worker`
processes and drives `/recall` and `/score` from separate load-generator processes; last, a full
reindex and swap under load. Writes bench/out/results.{json,md}, bench/out/latency.png and the
table into bench/README.md. Every service and child is stopped on the way out.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import compute, memory, report, retrieval
from bench.catalog import write_data_dir
from bench.context import (
    OUT,
    README,
    ROOT,
    Context,
    K,
    Plan,
    step,
    user_rows,
)
from bench.http import measure_http
from bench.machine import machine_info
from bench.reindex import finish, run_child
from bench.swap import measure_swap

log = logging.getLogger("bench")


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
        machine=machine_info(),
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
