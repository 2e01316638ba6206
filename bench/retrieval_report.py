"""The retrieval step as the report shows it: its rows of the Targets table and its Markdown section."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bench.context import K
from bench.results import fmt, table
from bench.upserts import PROBE_EVERY_S, UPSERT_BATCH, UPSERT_RATE


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
