"""The latency plot of a run (PNG): latency and throughput per served configuration, swap timelines."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.results import build_of, in_thread_label, server_label, swap_runs

log = logging.getLogger(__name__)


def plot(results: Mapping[str, Any], path: Path) -> Path | None:
    """Latency and throughput per served configuration, and the swap timelines. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (the `bench` extra): %s not written", path.name)
        return None
    from matplotlib.ticker import ScalarFormatter

    swaps = swap_runs(results)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    lat, thr = axes[0]
    for run in results.get("http", []):
        label = f"{server_label(run)}, {run['kind']}" + (
            f", compute_in_thread={in_thread_label(run)}" if run["compute_in_thread"] is not None else ""
        )
        cs = [lv["concurrency"] for lv in run["levels"]]
        (line,) = lat.plot(cs, [lv["p50_ms"] for lv in run["levels"]], "o-", label=f"{label} p50")
        lat.plot(
            cs, [lv["p99_ms"] for lv in run["levels"]], "s--", color=line.get_color(), label=f"{label} p99"
        )
        thr.plot(cs, [lv["rps"] for lv in run["levels"]], "o-", color=line.get_color(), label=label)
    for ax, title, ylabel in (
        (lat, "/recall k=100 over HTTP: latency", "latency (ms)"),
        (thr, "/recall k=100 over HTTP: throughput", "req/s"),
    ):
        ax.set_xscale("log", base=2)
        levels = sorted({lv["concurrency"] for run in results.get("http", []) for lv in run["levels"]})
        if levels:
            ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("requests in flight (closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    lat.set_yscale("log")
    lat.yaxis.set_major_formatter(ScalarFormatter())
    for ax, sw in zip(axes[1], [*swaps, None, None][:2], strict=True):
        if sw is None:
            ax.set_visible(False)
            continue
        tl = sw["timeline"]
        ax.plot([p["t_s"] for p in tl], [p["p50_ms"] for p in tl], label="p50")
        ax.plot([p["t_s"] for p in tl], [p["p99_ms"] for p in tl], label="p99")
        m = sw["marks"]
        ax.axvspan(
            m["reindex_start_s"], m["reindex_end_s"], color="orange", alpha=0.15, label="reindex running"
        )
        ax.axvline(m["swapped_s"], color="red", linestyle=":", label="new build serving")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("time (s)")
        ax.set_ylabel("latency (ms), 0.5 s buckets")
        ax.set_title(f"swap under load: {sw['kind']}, {sw['rate']:.0f} req/s open loop, build {build_of(sw)}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- files ---------------------------------------------------------------------------------------
