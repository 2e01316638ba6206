"""The Markdown sections on the index: reindex timings, the swap under load and ANN recall against
exact search."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from bench.results import build_of, fmt, swap_runs, table


def section_reindex(results: Mapping[str, Any]) -> str:
    rows = []
    builds = dict(results.get("reindex", {}))
    for sw in swap_runs(results):
        builds[f"{sw['kind']} (rebuild under load, {build_of(sw)})"] = sw["reindex"]
    for kind, b in builds.items():
        t = b.get("timings", {})
        idx = b.get("index", {})
        parts = [f"{k[:-2]} {t[k]:.1f}" for k in ("train_s", "add_s", "tune_s") if k in t]
        rows.append(
            [
                kind,
                b["items"],
                t.get("encode_items_per_s"),
                t.get("encode_s"),
                f"{t.get('index_s', math.nan):.1f}" + (f" ({', '.join(parts)})" if parts else ""),
                t.get("write_s"),
                b["wall_s"],
                b["peak_rss_mb"],
                f"{idx.get('factory', '')} {json.dumps(idx.get('search_params', {}))}",
            ]
        )
    return table(
        [
            "index",
            "items",
            "encode items/s",
            "encode s",
            "index s",
            "write s",
            "total s",
            "peak RSS MiB",
            "index (tuned)",
        ],
        rows,
    )


def section_swap(results: Mapping[str, Any]) -> str:
    names = {
        "before": "before the build",
        "during_reindex": "during the reindex (child process encoding + building)",
        "at_swap": "at the swap (build published -> loaded, verified, warmed, swapped; +1 s)",
        "after": "after",
        "whole": "the whole window",
    }
    parts = []
    steady = results.get("swap_steady")
    if steady:
        parts.append(
            f"Steady state, measured once before the swaps: open loop at {fmt(steady['rate'])} req/s with no "
            f"build for {fmt(steady['requests'])} requests, p50 {fmt(steady['p50_ms'])} ms, p99 "
            f"{fmt(steady['p99_ms'])} ms, worst {fmt(steady['max_ms'])} ms, {fmt(steady['failed'])} failed. "
            'The last column and the targets divide by its p99; each run\'s own "before" is a few seconds.'
        )
    for s in swap_runs(results):
        before = steady["p99_ms"] if steady else s["phases"]["before"]["p99_ms"]
        rows = [
            [
                f"{build_of(s)}: {names[k]}",
                p["requests"],
                p["failed"],
                p["p50_ms"],
                p["p99_ms"],
                p["max_ms"],
                f"{p['p99_ms'] / before:.1f}x" if before else None,
            ]
            for k, p in s["phases"].items()
        ]
        c = s["consistency"]
        m = s["marks"]
        parts.append(
            table(
                ["build child / phase", "requests", "failed", "p50 ms", "p99 ms", "max ms", "p99 / steady"],
                rows,
            )
            + f"\n\nOpen loop at {fmt(s['rate'])} req/s ({s['kind']}), build child {build_of(s)}: "
            f"reindex from {m['reindex_start_s']:.1f} s to {m['reindex_end_s']:.1f} s, "
            f"new build serving at {m['swapped_s']:.1f} s. Every response checked against an offline "
            f"recomputation for its `index_build`: {fmt(c['checked'])} checked, {fmt(c['inconsistent'])} "
            f"inconsistent (the two builds answer differently for {c['users_whose_results_differ']} of "
            f"{c['users']} users, so a mix-up would show). "
            f"Connection errors: {json.dumps(s['errors']) if s['errors'] else 'none'}."
        )
    return "\n\n".join(parts)


def section_recall(results: Mapping[str, Any]) -> str:
    rows = []
    notes = []
    for kind, r in results.get("compute", {}).get("recall", {}).items():
        for st in r["settings"]:
            rows.append(
                [
                    kind,
                    f"{st['param']}={st['value']}" + (" (tuned)" if st["tuned"] else ""),
                    st["recall"],
                    st["id_overlap"],
                    st["search_p50_ms"],
                ]
            )
        rows.append([kind, "exact search, for reference", 1.0, 1.0, r["exact_search_p50_ms"]])
        br = r.get("build_recall") or {}
        if br:
            notes.append(
                f"{kind}: the build tuned {br.get('param')} to reach recall@{br.get('k')} {br.get('value')} "
                f"on its own {br.get('queries')} queries (item vectors + noise {br.get('query_noise')})"
            )
    out = table(["index", "setting", "recall@100", "id overlap", "search p50 ms (1 query, 1 thread)"], rows)
    if notes:
        out += "\n\nRecall measured with user-tower queries of synthetic users. " + "; ".join(notes) + "."
    return out
