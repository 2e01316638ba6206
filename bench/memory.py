"""Resident memory of the whole service: every process of `twotower serve --workers N`, summed.

PSS (proportional set size, /proc/<pid>/smaps_rollup) charges each shared page to the processes
mapping it in equal parts, so the sum over the service's processes is what the service costs the
host: a build's memory-mapped files count once however many processes serve them, while RSS would
count them once per process. RSS is reported beside it.

The step starts the ANN service with 1 and then 2 processes on the same index store (on the
bench's own redis-server, bench.server.RedisServer: more than one process needs Redis), warms each
with /recall load, and reads the tree's PSS. Evidence beside the figure: which processes have the
build's index file mapped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.load import LoadSpec, run_load, write_bodies
from bench.server import RedisServer, ServiceProcess, tree_pids

log = logging.getLogger("bench")
_KB = 1024.0


def smaps_rollup(pid: int) -> dict[str, float]:
    """The kernel's memory summary of one process, MiB (Rss, Pss, Pss_Anon, Pss_File, ...)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key.strip()] = int(parts[0]) / _KB
    return out


def service_memory(pid: int, mapped: str | None = None) -> dict[str, Any]:
    """PSS and RSS of `pid`'s whole process tree, MiB; `mapped`: count the processes mapping it."""
    procs = []
    for p in tree_pids(pid):
        try:
            m = smaps_rollup(p)
            maps = Path(f"/proc/{p}/maps").read_text() if mapped else ""
        except OSError:
            continue  # exited meanwhile
        procs.append(
            {
                "pid": p,
                "pss_mb": round(m.get("Pss", 0.0), 1),
                "rss_mb": round(m.get("Rss", 0.0), 1),
                "pss_anon_mb": round(m.get("Pss_Anon", 0.0), 1),
                "pss_file_mb": round(m.get("Pss_File", 0.0), 1),
                "maps_index": bool(mapped and mapped in maps),
            }
        )
    return {
        "processes": len(procs),
        "pss_mb": round(sum(p["pss_mb"] for p in procs), 1),
        "rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
        "pss_anon_mb": round(sum(p["pss_anon_mb"] for p in procs), 1),
        "pss_file_mb": round(sum(p["pss_file_mb"] for p in procs), 1),
        "mapping_index": sum(p["maps_index"] for p in procs),
        "per_process": procs,
    }


def measure_memory(ctx: Any, users: list[dict[str, Any]], workers: tuple[int, ...] = (1, 2)) -> None:
    """results["memory"]: the service's PSS with each number of processes, and the ratio 2 : 1.

    The warm-up requests carry each user's features (each run has its own Redis prefix, which holds
    none), so that they search with as many distinct query vectors as the other steps do."""
    plan = ctx.plan
    bodies = write_bodies(
        ctx.tmp / "memory.jsonl",
        [
            {"user_id": u["user_id"], "features": {k: v for k, v in u.items() if k != "user_id"}}
            for u in users
        ],
    )
    kind = ctx.ann_kind or plan.kinds[0]
    root = ctx.index_root(kind)
    current = json.loads((root / ctx.version / "CURRENT").read_text())["build_id"]
    index_file = str(root / ctx.version / current / "index.faiss")
    runs: dict[str, Any] = {}
    with RedisServer(ctx.tmp, ctx.data) as redis:
        for n in workers:
            env = ctx.service_env(kind, TWOTOWER_REDIS_URL=redis.url, TWOTOWER_REDIS_PREFIX=f"m{n}:")
            with ServiceProcess(env, ctx.log_file(f"serve-memory-{n}"), workers=n) as svc:
                time.sleep(2.0)  # every process ready (the supervisor answers once the first one is)
                spec = LoadSpec(
                    port=svc.port,
                    path="/recall",
                    bodies_file=str(bodies),
                    concurrency=8,
                    duration_s=plan.warmup_s,
                )
                warm = run_load(spec, ctx.tmp)
                time.sleep(0.5)
                mem = service_memory(svc.pid, mapped=index_file)
                mem["warm_requests"] = len(warm.status)
                mem["warm_failed"] = sum(1 for st in warm.status if st != 200)
                runs[str(n)] = mem
                log.info(
                    "memory with %d serving process(es): PSS %.0f MB (anon %.0f, file %.0f), RSS %.0f MB, "
                    "%d process(es) map the index",
                    n,
                    mem["pss_mb"],
                    mem["pss_anon_mb"],
                    mem["pss_file_mb"],
                    mem["rss_mb"],
                    mem["mapping_index"],
                )
    out: dict[str, Any] = {"kind": kind, "items": plan.items, "runs": runs}
    if "1" in runs and "2" in runs:
        out["ratio_pss"] = round(runs["2"]["pss_mb"] / runs["1"]["pss_mb"], 3)
        out["ratio_rss"] = round(runs["2"]["rss_mb"] / runs["1"]["rss_mb"], 3)
    ctx.results["memory"] = out
