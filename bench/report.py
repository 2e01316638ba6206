"""The results of a run as JSON, a Markdown report, a latency plot (PNG) and the README's results block."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.plot import plot
from bench.results import (
    ann_kind,
    build_of,
    fmt,
    http_run,
    in_thread_label,
    server_label,
    swap_runs,
    table,
)
from bench.targets import targets

log = logging.getLogger(__name__)
START = "<!-- results:start -->"
END = "<!-- results:end -->"
COMMANDS = (
    "make bench            # python -m bench.run: 1M items, the reference run (< 20 min on 2 cores)\n"
    "make bench-quick      # python -m bench.run --quick: 100k items, one repeat (< 3 min)\n"
    "twotower bench [--quick]"
)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory and the versions that matter for the numbers."""
    import faiss
    import numpy
    import onnxruntime

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = math.nan
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "numpy": numpy.__version__,
    }


# --- Markdown ------------------------------------------------------------------------------------


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
                f"open, {fmt(h['rate'])} req/s",
                h["p50_ms"],
                h["p95_ms"],
                h["p99_ms"],
                round(h["rps"]),
                None,
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


def section_machine(results: Mapping[str, Any]) -> str:
    m = results.get("machine", {})
    plan = results.get("plan", {})
    la = results.get("load_average_at_start", [])
    return (
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
        f"{m.get('memory_gb')} GB; {m.get('os')}; Python {m.get('python')}, "
        f"onnxruntime {m.get('onnxruntime')}, "
        f"faiss {m.get('faiss')}, numpy {m.get('numpy')}.\n"
        f"Run: `{results.get('command')}` at commit {results.get('code', 'unknown')} "
        f"({plan.get('name')} plan: {fmt(plan.get('items'))} items, "
        f"{fmt(plan.get('users'))} users, model {results.get('model_version')}), "
        f"started {results.get('started_at')}, "
        f"wall time {fmt(results.get('wall_s'))} s, load average at start {', '.join(str(x) for x in la)}"
        + (
            "; CPU taken by other processes during each step (share of all cores): "
            + ", ".join(f"{k} {v['share'] * 100:.0f}%" for k, v in results["foreign_cpu"].items())
            if results.get("foreign_cpu")
            else ""
        )
        + (
            "; CPU yardstick, a fixed pure-Python loop (ms, same machine = same figure): "
            + ", ".join(
                [f"start {cal['start']['python_loop_ms']:.0f}"]
                + [f"after {k} {v:.0f}" for k, v in cal.get("steps", {}).items()]
                + [f"end {cal['end']['python_loop_ms']:.0f}"]
            )
            if (cal := results.get("calibration")) and "end" in cal
            else ""
        )
        + "."
    )


def _section_retrieval(results: Mapping[str, Any]) -> str:
    from bench import retrieval

    return retrieval.section(results)


def render_markdown(results: Mapping[str, Any]) -> str:
    sections: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("Targets", lambda r: table(["target", "goal", "measured", "verdict"], targets(r))),
        ("/recall over HTTP (k=100)", section_http),
        ("Compute floor and service overhead (k=100)", section_floor),
        ("/score: tile-once vs naive", section_score),
        ("Reindex", section_reindex),
        ("Swap under load", section_swap),
        ("ANN recall@100 against exact", section_recall),
        ("Hot-path choices", section_hot_path),
        ("Filters, /similar and catalog changes", _section_retrieval),
    ]
    out = [section_machine(results)]
    for title, fn in sections:
        body = fn(results)
        if body.strip():
            out.append(f"#### {title}\n\n{body}")
    return "\n\n".join(out) + "\n"


def replace_block(text: str, body: str, start: str = START, end: str = END) -> str:
    """Replace what lies between the markers (appending the markers if the text has none)."""
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip() + "\n\n" + block + "\n"


def readme_block(results: Mapping[str, Any]) -> str:
    return render_markdown(results) + "\n![latency](latency.png)\n\nCommands:\n\n```\n" + COMMANDS + "\n```\n"


def write_all(results: Mapping[str, Any], out: Path, readme: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths[1].write_text(render_markdown(results))
    png = plot(results, out / "latency.png")
    if png is not None:
        paths.append(png)
    if readme is not None:
        text = readme.read_text() if readme.exists() else ""
        readme.write_text(replace_block(text, readme_block(results)))
        paths.append(readme)
        if png is not None:  # out/ is not committed; the README's plot sits beside it
            paths.append(Path(shutil.copyfile(png, readme.parent / "latency.png")))
    return paths


if __name__ == "__main__":
    # Re-render the report of an earlier run: python -m bench.report [bench/out/results.json]
    import sys

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "out" / "results.json"
    done = write_all(json.loads(src.read_text()), src.parent, Path(__file__).resolve().parent / "README.md")
    print("\n".join(str(p) for p in done))
