"""A run's report: the Markdown (the machine and run line, then each section under its title), the
results as JSON, the latency plot (PNG) and the README's results block."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.index_sections import section_recall, section_reindex, section_swap
from bench.plot import plot
from bench.results import fmt, table
from bench.retrieval_report import section as section_retrieval
from bench.serving_sections import section_floor, section_hot_path, section_http, section_score
from bench.targets import targets

log = logging.getLogger(__name__)
START = "<!-- results:start -->"
END = "<!-- results:end -->"
COMMANDS = (
    "make bench            # python -m bench.run: 1M items, the reference run (< 20 min on 2 cores)\n"
    "make bench-quick      # python -m bench.run --quick: 100k items, one repeat (< 3 min)\n"
    "twotower bench [--quick]"
)


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
        ("Filters, /similar and catalog changes", section_retrieval),
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
