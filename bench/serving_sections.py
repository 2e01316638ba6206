"""The Markdown sections on answering requests: /recall over HTTP, the compute floor and the
service's overhead, /score, and the hot-path choices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.results import ann_kind, fmt, http_run, in_thread_label, server_label, table


def section_http(results: Mapping[str, Any]) -> str:
    rows = []
    for run in results.get("http", []):
        for lv in run["levels"]:
            rows.append(
                [
                    server_label(run),
                    run["kind"],
                    in_thread_label(run),
                    f"closed, {lv['concurrency']} in flight",
                    lv["p50_ms"],
                    lv["p95_ms"],
                    lv["p99_ms"],
                    round(lv["rps"]),
                    lv["server_cpu_ms_per_req"],
                    lv["failed"],
                ]
            )
        h = run["half_rate"]
        rows.append(
            [
                server_label(run),
                run["kind"],
                in_thread_label(run),
                f"open, {fmt(h['rate'])} req/s"
                + (f" ({h['server_cores']:.2f} cores busy)" if "server_cores" in h else ""),
                h["p50_ms"],
                h["p95_ms"],
                h["p99_ms"],
                round(h["rps"]),
                h.get("server_cpu_ms_per_req"),  # runs before it was measured: none
                h["failed"],
            ]
        )
    out = table(
        [
            "server",
            "index",
            "compute_in_thread",
            "load",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s",
            "server CPU ms/req",
            "failed",
        ],
        rows,
    )
    wrk = [
        [
            server_label(run),
            run["kind"],
            w["concurrency"],
            round(w["rps"]),
            w["p50_ms"],
            w["p99_ms"],
            w["failed"],
        ]
        for run in results.get("http", [])
        if (w := run.get("wrk"))
    ]
    if wrk:
        out += "\n\nCross-check with wrk (1 thread, at each variant's best concurrency):\n\n" + table(
            ["server", "index", "connections", "req/s", "p50 ms", "p99 ms", "failed"], wrk
        )
    return out


def section_floor(results: Mapping[str, Any]) -> str:
    comp = results.get("compute", {})
    rows = []
    for kind, f in comp.get("floor", {}).items():
        run = http_run(results, kind)
        c1 = next((lv for lv in run["levels"] if lv["concurrency"] == 1), None) if run else None
        glue = http_run(results, kind, None, "glue", 1)
        g1 = next((lv for lv in glue["levels"] if lv["concurrency"] == 1), None) if glue else None
        tp = comp.get("throughput", {}).get(kind, {})
        rows.append(
            [
                kind,
                f["p50_ms"],
                f["p95_ms"],
                f["p99_ms"],
                round(tp["1"]) if "1" in tp else None,
                round(tp["2"]) if "2" in tp else None,
                c1["p50_ms"] if c1 else None,
                f"{c1['p50_ms'] / f['p50_ms']:.2f}x" if c1 else None,
                round(run["max_rps"]) if run else None,
                f"{fmt(g1['p50_ms'])} ms, {g1['p50_ms'] / f['p50_ms']:.2f}x" if g1 else "–",
            ]
        )
    return table(
        [
            "index",
            "floor p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s, 1 thread",
            "req/s, 2 threads",
            "HTTP p50 ms (1 in flight)",
            "overhead",
            "HTTP best req/s",
            "glue peer p50 (1 in flight), overhead",
        ],
        rows,
    )


def section_score(results: Mapping[str, Any]) -> str:
    s = results.get("compute", {}).get("score")
    if not s:
        return ""
    rows: list[list[Any]] = [
        [
            "compute: tile-once (tower x1, stored vectors, one mat-vec)",
            s["tile"]["p50_ms"],
            s["tile"]["p99_ms"],
            "1x",
        ],
        [
            "compute: naive (user row x1000 through the tower)",
            s["naive"]["p50_ms"],
            s["naive"]["p99_ms"],
            f"{s['ratio_p50']:.1f}x",
        ],
        ["user tower alone: 1 row", s["tower_once"]["p50_ms"], s["tower_once"]["p99_ms"], "1x"],
        [
            f"user tower alone: {s['candidates']} rows",
            s["tower_repeated"]["p50_ms"],
            s["tower_repeated"]["p99_ms"],
            f"{s['tower_ratio_p50']:.1f}x",
        ],
    ]
    if "lookup" in s:
        rows.append(
            [
                f"stored-vector lookup alone ({s['candidates']} ids)",
                s["lookup"]["p50_ms"],
                s["lookup"]["p99_ms"],
                "–",
            ]
        )
    run = http_run(results, ann_kind(results))
    http = run.get("score") if run else None
    if http:
        one = http["1"]
        rows.append(["HTTP tile-once, 1 in flight (measured)", one["p50_ms"], one["p99_ms"], "1x"])
        naive_http = one["p50_ms"] - s["tile"]["p50_ms"] + s["naive"]["p50_ms"]
        rows.append(
            [
                "HTTP naive (estimated: HTTP tile-once − tile compute + naive compute)",
                naive_http,
                None,
                f"{naive_http / one['p50_ms']:.1f}x",
            ]
        )
    out = table(["/score, 1000 candidates", "p50 ms", "p99 ms", "vs tile-once"], rows)
    if http:
        out += (
            f"\n\nHTTP /score at 4 in flight: {fmt(http['4']['rps'])} req/s, "
            f"p99 {fmt(http['4']['p99_ms'])} ms (request body {fmt(http['request_bytes'])} bytes). "
            f"Scores of both paths agree within {s['max_abs_score_diff']:.1e}. "
            "The app has no naive path, so naive over HTTP is the estimate above."
        )
    return out


def section_hot_path(results: Mapping[str, Any]) -> str:
    parts = []
    kind = ann_kind(results)
    a, b = http_run(results, kind, True), http_run(results, kind, None)
    if a and b:
        rows = []
        for la, lb in zip(a["levels"], b["levels"], strict=False):
            rows.append(
                [
                    la["concurrency"],
                    la["p50_ms"],
                    lb["p50_ms"],
                    la["p99_ms"],
                    lb["p99_ms"],
                    la["rps"],
                    lb["rps"],
                ]
            )
        ha, hb = a["half_rate"], b["half_rate"]
        rows.append(
            [
                f"open, {fmt(ha['rate'])} / {fmt(hb['rate'])} req/s",
                ha["p50_ms"],
                hb["p50_ms"],
                ha["p99_ms"],
                hb["p99_ms"],
                ha["rps"],
                hb["rps"],
            ]
        )
        parts.append(
            f"`TWOTOWER_RUNTIME__COMPUTE_IN_THREAD` ({kind}, /recall over HTTP, 1 process; the default "
            "runs an ANN search inline):\n\n"
            + table(
                [
                    "in flight",
                    "p50 ms true",
                    "p50 ms default",
                    "p99 ms true",
                    "p99 ms default",
                    "req/s true",
                    "req/s default",
                ],
                rows,
            )
        )
    ft = results.get("compute", {}).get("faiss_threads", {})
    if ft:
        rows = [
            [k, t, r["p50_ms"], r["p99_ms"], r["cpu_ms"]] for k, per in ft.items() for t, r in per.items()
        ]
        parts.append(
            "Faiss threads, one query (k=100) over the whole index, compute only:\n\n"
            + table(["index", "threads", "p50 ms", "p99 ms", "CPU ms/query"], rows)
        )
    spin = results.get("compute", {}).get("ort_spinning", [])
    if spin:
        rows = [[r["intra_threads"], r["spinning"], r["p50_ms"], r["p99_ms"], r["cpu_ms"]] for r in spin]
        parts.append(
            "ONNX Runtime spin-wait, user tower (1 row), 0.5 ms idle between calls, CPU = whole process:\n\n"
            + table(["intra-op threads", "spinning", "p50 ms", "p99 ms", "CPU ms/call"], rows)
        )
    return "\n\n".join(parts)
