"""Reading a run's results: number formatting, Markdown tables and the lookups every section shares."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def http_run(
    results: Mapping[str, Any],
    kind: str | None,
    in_thread: bool | None = None,
    server: str = "twotower",
    processes: int = 1,
) -> Mapping[str, Any] | None:
    """The served variant with these settings (`in_thread` None: the default setting)."""
    runs: list[Mapping[str, Any]] = results.get("http", [])
    for run in runs:
        if (
            (kind is None or run["kind"] == kind)
            and run["compute_in_thread"] == in_thread
            and run.get("server", "twotower") == server
            and run.get("processes", 1) == processes
        ):
            return run
    return None


def most_processes(results: Mapping[str, Any], kind: str | None, server: str) -> Mapping[str, Any] | None:
    """The default variant of `server` with the most processes that ran."""
    runs = [
        r
        for r in results.get("http", [])
        if r["kind"] == kind and r.get("server", "twotower") == server and r["compute_in_thread"] is None
    ]
    return max(runs, key=lambda r: r.get("processes", 1)) if runs else None


def procs(run: Mapping[str, Any]) -> str:
    n = run.get("processes", 1)
    return f"{n} process" + ("es" if n > 1 else "")


def swap_runs(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    swap = results.get("swap") or []
    return [swap] if isinstance(swap, Mapping) else list(swap)


def build_of(sw: Mapping[str, Any]) -> str:
    """The build child's policy of one swap run (runs from before the policies name only nice)."""
    return str(sw.get("build") or f"nice {sw['nice']}")


def ann_kind(results: Mapping[str, Any]) -> str | None:
    kinds = results.get("plan", {}).get("kinds", [])
    return next((k for k in kinds if k != "exact"), kinds[0] if kinds else None)


def server_label(run: Mapping[str, Any]) -> str:
    if run.get("server") == "glue":
        return f"glue peer, {procs(run)}"
    return f"twotower, {procs(run)}" + (", redis" if run.get("store") == "redis" else "")


def in_thread_label(run: Mapping[str, Any]) -> str:
    if run.get("server") == "glue":
        return "–"
    v = run["compute_in_thread"]
    return "default" if v is None else str(v).lower()
