"""Catalog changes under load, the retrieval step's second part: an open-loop `/recall` on replica A,
first alone, then while upserts (100 items/s, batches of 10 every 100 ms) go to A, and a probe on
replica B every 20 ms for each item's time from its PUT to recallable on the other replica. Each
upserted item gets a `release_year` no built item has, so B's filtered `/recall` returns exactly the
upserted items it knows."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from bench.catalog import synthetic_items
from bench.context import K
from bench.load import LoadProcess, LoadSpec, percentile, summarize, write_bodies
from bench.server import ServiceProcess

if TYPE_CHECKING:
    from bench.context import Context

log = logging.getLogger("bench")
TOKEN = "bench-admin"
UPSERT_RATE = 100  # items/s
UPSERT_BATCH = 10
PROBE_EVERY_S = 0.02
FRESH_YEAR = 3000  # upserted items' release_year: 3000 + i, above every built item's


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
