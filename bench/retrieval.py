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
build as it was.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from bench.catalog import synthetic_items
from bench.load import LoadProcess, LoadSpec, percentile, run_load, summarize, write_bodies
from bench.results import fmt, table
from bench.server import ServiceProcess

if TYPE_CHECKING:
    from bench.context import Context

log = logging.getLogger("bench")
K = 100
TOKEN = "bench-admin"
CONCURRENCY = 8  # the side-by-side level: near the best rate of one service on 2 cores
UPSERT_RATE = 100  # items/s
UPSERT_BATCH = 10
PROBE_EVERY_S = 0.02
FRESH_YEAR = 3000  # upserted items' release_year: 3000 + i, above every built item's
TARGET_SHARES = {"50%": 0.5, "1%": 0.01}


# --- filters -------------------------------------------------------------------------------------


def candidate_filters(attributes: Any) -> list[dict[str, Any]]:
    """Filters on genres and release_year whose shares cover 0.1%..90% in small steps."""
    from index_store.attributes import NumberColumn, ValuesColumn

    out: list[dict[str, Any]] = []
    years = attributes.columns.get("release_year")
    if isinstance(years, NumberColumn):
        x = years.x[~np.isnan(years.x)]
        for q in np.linspace(0.001, 0.9, 60):
            y = float(np.quantile(x, q))
            out.append({"release_year": {"lt": y}})
            out.append({"release_year": {"gte": y}})
    genres = attributes.columns.get("genres")
    if isinstance(genres, ValuesColumn):
        counts = np.diff(genres.ptr)
        order = [str(genres.values[i]) for i in np.argsort(-counts, kind="stable")]
        for n in range(1, len(order) + 1):
            out.append({"genres": {"any": order[:n]}})
        for g in order:  # one genre within a range of years: the selective end
            if isinstance(years, NumberColumn):
                x = years.x[~np.isnan(years.x)]
                for q in (0.05, 0.1, 0.2, 0.3):
                    out.append({"genres": {"any": [g]}, "release_year": {"lt": float(np.quantile(x, q))}})
    return out


def pick_filters(build_dir: Path, manifest: Any) -> dict[str, dict[str, Any]]:
    """For each target share, the candidate whose measured share is closest (in ratio)."""
    from index_store.attributes import ATTRIBUTES_FILE, from_bytes
    from index_store.filters import filter_mask

    built = json.loads((build_dir / "manifest.json").read_text())
    n = int(built["item_count"])
    attributes = from_bytes(
        (build_dir / ATTRIBUTES_FILE).read_bytes(), built["attributes"], n, str(build_dir)
    )
    measured = []
    for flt in candidate_filters(attributes):
        mask = filter_mask(flt, manifest.features.item, attributes, max_values=1000)
        assert mask is not None
        share = float(mask.mean())
        if share > 0:
            measured.append((flt, share))
    out = {}
    for label, target in TARGET_SHARES.items():
        flt, share = min(measured, key=lambda fs: abs(np.log(fs[1] / target)))
        out[label] = {"filter": flt, "share": share, "items": n}
        log.info("filter keeping ~%s: %s keeps %.2f%% of %d items", label, json.dumps(flt), share * 100, n)
    return out


# --- the step ------------------------------------------------------------------------------------


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
            {"user_id": u, "k": K, "filter": _distinct(filters["50%"]["filter"], j)}
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


def _distinct(flt: dict[str, Any], j: int) -> dict[str, Any]:
    """`flt` with a bound on release_year that no item fails: the same rows, a filter the build has
    not seen."""
    year = dict(flt.get("release_year", {}))
    if "gt" not in year:
        year["gt"] = -10_000 - j
    else:
        year["lte"] = 10_000 + j
    return {**flt, "release_year": year}


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


def upsert_stream(
    ctx: Context, a: ServiceProcess, b: ServiceProcess, manifest: Any, users: Sequence[str], rate: float
) -> dict[str, Any]:
    """Open-loop /recall on A alone, then with 100 upserted items/s to A probed on B."""
    plan = ctx.plan
    window_s = 10.0 if plan.name == "full" else 5.0
    bodies = write_bodies(ctx.tmp / "retrieval-load.jsonl", [{"user_id": u, "k": K} for u in users])
    id_field = manifest.features.item.id_field
    n_items = int(UPSERT_RATE * window_s)
    rows = []
    for i, row in enumerate(synthetic_items(manifest, n_items, seed=7, prefix="fresh-")):
        feats = {k: v for k, v in row.items() if k != id_field}
        rows.append({"item_id": f"fresh-{i}", "features": {**feats, "release_year": FRESH_YEAR + i}})
    phases = {}
    for phase in ("steady", "upserts"):
        spec = LoadSpec(a.port, "/recall", str(bodies), 64, window_s, rate=rate, warmup_s=1.0)
        load = LoadProcess(spec, ctx.tmp)
        sent: dict[int, float] = {}
        seen: dict[int, float] = {}
        errors: list[str] = []
        stop = threading.Event()
        # The probe runs in both phases (it finds nothing in the first), so both carry its load.
        probe = threading.Thread(target=_probe, args=(b, users[0], sent, seen, stop, errors))
        probe.start()
        cpu0 = a.cpu_s(), b.cpu_s()
        time.sleep(1.0)  # the load's warm-up
        if phase == "upserts":
            _upsert(a, rows, sent, errors)
            deadline = time.monotonic() + 10
            while len(seen) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.05)
        res = load.wait()
        stop.set()
        probe.join(timeout=30)
        cpu = a.cpu_s() - cpu0[0], b.cpu_s() - cpu0[1]
        s = summarize(res)
        phases[phase] = {k: s[k] for k in ("rps", "p50_ms", "p99_ms", "failed", "requests")}
        phases[phase].update(a_cpu_s=cpu[0], b_cpu_s=cpu[1], probe_errors=len(errors))
        if phase == "upserts":
            lags = [seen[i] - sent[i] for i in sent if i in seen]
            phases[phase].update(
                items=len(sent),
                recallable=len(lags),
                lag_p50_s=percentile(lags, 50),
                lag_p99_s=percentile(lags, 99),
                lag_max_s=max(lags, default=float("nan")),
                errors=errors[:5],
                error_count=len(errors),
            )
            log.info(
                "upserts: %d items at %d/s, %d recallable on the other replica, p50 %.2f s p99 %.2f s",
                len(sent),
                UPSERT_RATE,
                len(lags),
                phases[phase]["lag_p50_s"],
                phases[phase]["lag_p99_s"],
            )
        log.info(
            "recall on A (%s) at %.0f req/s: p99 %.2f ms, %d failed", phase, rate, s["p99_ms"], s["failed"]
        )
    return {"rate": rate, "window_s": window_s, **phases}


def _upsert(
    svc: ServiceProcess, rows: list[dict[str, Any]], sent: dict[int, float], errors: list[str]
) -> None:
    """Batches of UPSERT_BATCH every UPSERT_BATCH / UPSERT_RATE seconds, on schedule."""
    every = UPSERT_BATCH / UPSERT_RATE
    start = time.monotonic()
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for n, i in enumerate(range(0, len(rows), UPSERT_BATCH)):
            wait = start + n * every - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            t = time.monotonic()
            try:
                r = client.put(f"{svc.url}/admin/items", json={"items": rows[i : i + UPSERT_BATCH]})
                ok = r.status_code == 202
            except httpx.HTTPError as exc:
                ok, r = False, None
                errors.append(repr(exc))
            if ok:
                for j in range(i, min(i + UPSERT_BATCH, len(rows))):
                    sent[j] = t
            elif r is not None:
                errors.append(f"{r.status_code} {r.text[:200]}")


def _probe(
    svc: ServiceProcess,
    user: str,
    sent: dict[int, float],
    seen: dict[int, float],
    stop: threading.Event,
    errors: list[str],
) -> None:
    """Until `stop`: B's /recall filtered on the fresh years of the items sent and not all seen yet
    (a few dozen at most: the answer stays small, so the probe costs B little), every 20 ms."""
    oldest = 0
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            newest = max(sent, default=-1)
            body = {
                "user_id": user,
                "k": 1000,
                "exclude_history": False,
                "filter": {
                    "release_year": {"gte": FRESH_YEAR + oldest, "lte": FRESH_YEAR + max(newest, oldest)}
                },
            }
            r = client.post(f"{svc.url}/recall", json=body)
            now = time.monotonic()
            if r.status_code != 200:
                errors.append(f"probe {r.status_code} {r.text[:200]}")
            else:
                for it in r.json()["items"]:
                    i = int(it["item_id"].removeprefix("fresh-"))
                    seen.setdefault(i, now)
                while oldest in seen:
                    oldest += 1
            time.sleep(PROBE_EVERY_S)


# --- report --------------------------------------------------------------------------------------


def target_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, goal, measured, met) rows for the Targets table."""
    r = results.get("retrieval")
    if not r:
        return []
    sbs = r["side_by_side"]
    half = sbs.get("filter 50%")
    rows = []
    if half:
        share = r["filters"]["50%"]["share"]
        rows.append(
            (
                f"/recall with a filter keeping {share:.0%}: cost / unfiltered (server CPU per request)",
                "<= 1.5x",
                f"{half['cost_x']:.2f}x ({fmt(half['server_cpu_ms_per_req'], 3)} / "
                f"{fmt(sbs['unfiltered']['server_cpu_ms_per_req'], 3)} ms); req/s {half['rps_x']:.2f}x",
                half["cost_x"] <= 1.5,
            )
        )
    fresh = sbs.get("filter 50%, new each request")
    if fresh:
        rows.append(
            (
                "/recall with that filter new on each request (its rows not cached): cost / unfiltered",
                "<= 1.5x",
                f"{fresh['cost_x']:.2f}x ({fmt(fresh['server_cpu_ms_per_req'], 3)} / "
                f"{fmt(sbs['unfiltered']['server_cpu_ms_per_req'], 3)} ms); req/s {fresh['rps_x']:.2f}x",
                fresh["cost_x"] <= 1.5,
            )
        )
    up = r.get("upserts", {}).get("upserts")
    if up:
        rows.append(
            (
                f"upserted item recallable on another replica ({UPSERT_RATE} items/s), p99",
                "< 2 s",
                f"{up['lag_p99_s']:.2f} s ({up['recallable']} of {up['items']} items seen)",
                up["lag_p99_s"] < 2 and up["recallable"] == up["items"],
            )
        )
    failed = sum(row["failed"] for row in sbs.values())
    failed += sum(r.get("upserts", {}).get(p, {}).get("failed", 0) for p in ("steady", "upserts"))
    failed += (up or {}).get("error_count", 0)
    rows.append(("filters, /similar, upserts: failed requests", "0", fmt(failed), failed == 0))
    return rows


def section(results: Mapping[str, Any]) -> str:
    r = results.get("retrieval")
    if not r:
        return ""
    sbs = r["side_by_side"]
    filters = r["filters"]
    shares = {"filter 50%": filters["50%"], "filter 1%": filters["1%"]}
    rows = []
    for label, row in sbs.items():
        what = label
        if label in shares:
            what = f"/recall, {json.dumps(shares[label]['filter'])} (keeps {shares[label]['share']:.2%})"
        elif label == "unfiltered":
            what = "/recall, no filter"
        elif label == "filter 50%, new each request":
            what = "/recall, the ~50% filter made new on each request (a bound no item fails): not cached"
        elif label == "/similar":
            what = "/similar (stored item)"
        rows.append(
            [
                what,
                row["rps"],
                row["p50_ms"],
                row["p99_ms"],
                row["server_cpu_ms_per_req"],
                f"{row['cost_x']:.2f}x",
                row["failed"],
            ]
        )
    head = (
        f"{r['kind']} build, k={K}, closed loop at {r['concurrency']} connections, medians of the "
        "repeats, run round-robin:\n\n"
        + table(
            ["request", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "cost vs no filter", "failed"], rows
        )
    )
    up = r.get("upserts")
    if not up:
        return head
    steady, during = up["steady"], up["upserts"]
    rows2 = [
        [label, ph["rps"], ph["p50_ms"], ph["p99_ms"], ph.get("a_cpu_s"), ph.get("b_cpu_s"), ph["failed"]]
        for label, ph in (
            ("/recall on A, no upserts", steady),
            (f"/recall on A, {UPSERT_RATE} upserted items/s to A", during),
        )
    ]
    lag = (
        f"p50 {during['lag_p50_s']:.2f} s, p99 {during['lag_p99_s']:.2f} s, "
        f"max {during['lag_max_s']:.2f} s ({during['recallable']} of {during['items']} seen; "
        f"{during['error_count']} upsert or probe errors)"
    )
    tail = (
        f"\n\nUpserts: {during['items']} items in batches of {UPSERT_BATCH} at {UPSERT_RATE} items/s "
        f"to replica A while /recall runs open loop at {fmt(up['rate'])} req/s on A; time from PUT "
        f"to recallable on replica B (a filtered /recall every {PROBE_EVERY_S * 1e3:.0f} ms): "
        f"{lag}.\n\n"
        + table(["phase", "req/s", "p50 ms", "p99 ms", "CPU s of A", "CPU s of B", "failed"], rows2)
    )
    return head + tail
