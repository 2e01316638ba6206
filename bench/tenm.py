"""Ten million items on one box: `make bench-10m` (not in CI; `--items` for a smaller run).

    python -m bench.tenm [--items 10000000] [--users 2000] [--engines local,ray] [--seconds 10]
                         [--serve-workers 1,2] [--workdir var/bench-10m] [--serve-only]

1. A data directory: N synthetic items (bench.catalog) as one Parquet file, and users with
   histories (users.jsonl, interactions.csv). Generated once per size and kept in the workdir.
2. `twotower reindex` with each engine, in its own process: wall time, encoding rate, build time,
   the index kind chosen, recall@100 on user queries (the build's own check, through the user
   tower), and the process's peak memory (its max RSS; for Ray, the driver's: the actors' RSS is
   sampled apart, summed over the Ray worker processes).
3. `twotower serve --workers N` on the first engine's build, and closed-loop load on /recall
   (k=100, distinct users; wrk when installed, else bench.load's client): req/s and p99 at 8 and 32
   requests in flight, for each N of --serve-workers.

Every figure comes with the CPU yardstick and the load average at the start (the machine is shared).
Results: <workdir>/tenm.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from bench import compute
from bench.catalog import synthetic_items, synthetic_users, write_users
from bench.load import LoadSpec, run_load, run_wrk, summarize, write_bodies, wrk_available
from bench.server import RedisServer, ServiceProcess
from models.manifest import list_versions, load_version

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
CHUNK = 250_000


def make_data(out: Path, items: int, users: int) -> Path:
    """The data directory for `items` items (reused when already complete)."""
    done = out / "COMPLETE"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_version(DEMO, list_versions(DEMO)[-1])
    rows = synthetic_items(manifest, items)
    writer: pq.ParquetWriter | None = None
    started = time.monotonic()
    while True:
        chunk = [row for _, row in zip(range(CHUNK), rows, strict=False)]
        if not chunk:
            break
        table = pa.Table.from_pylist(chunk)
        if writer is None:
            writer = pq.ParquetWriter(out / "items.parquet", table.schema)
        writer.write_table(table, row_group_size=CHUNK)
    if writer is not None:
        writer.close()
    write_users(out, synthetic_users(manifest, users), layout=manifest.features.layout)
    done.write_text(json.dumps({"items": items, "users": users, "s": time.monotonic() - started}))
    return out


class RaySampler:
    """Peak summed RSS of the Ray worker processes (ray::*) while a build runs."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for p in psutil.process_iter(["name", "memory_info"]):
                if (p.info["name"] or "").startswith("ray::") and p.info["memory_info"] is not None:
                    total += p.info["memory_info"].rss
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self) -> RaySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def reindex(
    data: Path, store: Path, engine: str, log: Path, settings: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env.update(
        TWOTOWER_MODEL_STORE=str(DEMO),
        TWOTOWER_DATA_DIR=str(data),
        TWOTOWER_INDEX_STORE=str(store),
        RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"),
        **(settings or {}),
    )
    cmd = [sys.executable, "-m", "app.cli", "reindex", "--engine", engine]
    # peak RSS of this child alone: the wait4 rusage of the one process (not RUSAGE_CHILDREN's max)
    started = time.monotonic()
    with open(log, "wb") as err, RaySampler() as ray_mem:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"reindex --engine {engine} failed ({code}):\n{tail}")
    (vdir,) = [p for p in store.iterdir() if p.is_dir()]
    build = json.loads((vdir / "CURRENT").read_text())["build_id"]
    m = json.loads((vdir / build / "manifest.json").read_text())
    t = m["timings"]
    return {
        "engine": engine,
        "wall_s": round(wall, 1),
        "encode_s": t["encode_s"],
        "encode_items_per_s": round(t["encode_items_per_s"]),
        "index_s": t["index_s"],
        "write_s": t.get("write_s"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "ray_workers_peak_rss_mb": round(ray_mem.peak_mb) if engine == "ray" else None,
        "factory": m["index"]["factory"],
        "search_params": m["index"]["search_params"],
        "candidates": m["index"]["params"].get("candidates"),
        "recall": m["recall"]["value"] if m["recall"] else None,
        "recall_queries": m["recall"]["query_source"] if m["recall"] else None,
        "index_bytes": m["sizes"]["index.faiss"],
        "build_id": build,
    }


def users_only(data: Path, work: Path) -> Path:
    """The data dir's users and interactions beside an empty catalog: what the serving processes
    read from Redis (RedisServer loads a data dir; the 10M-item catalog is not needed there)."""
    out = work / "data-users"
    out.mkdir(exist_ok=True)
    for name in ("users.jsonl", "interactions.csv"):
        if not (out / name).exists():
            (out / name).symlink_to(data / name)
    (out / "items.jsonl").write_text("")
    return out


def serve_load(
    data: Path, store: Path, work: Path, seconds: float, users: int, workers: list[int]
) -> list[dict[str, Any]]:
    """`twotower serve --workers N` on one build, for each N, and closed-loop load on /recall
    (k=100, distinct users) at 8 and 32 requests in flight: wrk when installed, else the
    project's own client (bench.load; its own CPU is recorded, and it shares the cores)."""
    ids = [json.loads(line)["user_id"] for line in (data / "users.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(ids)
    bodies = write_bodies(work / "recall.jsonl", [{"user_id": u, "k": 100} for u in ids[:users]])
    client = "wrk" if wrk_available() is not None else "bench.load"

    def load(port: int, concurrency: int, duration_s: float) -> dict[str, Any]:
        if client == "wrk":
            return run_wrk(port, "/recall", bodies, concurrency, duration_s, work)
        spec = LoadSpec(
            port=port, path="/recall", bodies_file=str(bodies), concurrency=concurrency, duration_s=duration_s
        )
        return {"concurrency": concurrency, **summarize(run_load(spec, work))}

    env = {
        "TWOTOWER_MODEL_STORE": str(DEMO),
        "TWOTOWER_DATA_DIR": str(data),
        "TWOTOWER_INDEX_STORE": str(store),
    }
    out = []
    for n in workers:
        with contextlib.ExitStack() as stack:
            store_kind, svc_env = "in-process", env
            if n > 1:  # more than one serving process shares its state through Redis (a bench's own)
                redis = stack.enter_context(RedisServer(work, users_only(data, work)))
                svc_env = {**env, "TWOTOWER_REDIS_URL": redis.url, "TWOTOWER_REDIS_PREFIX": f"w{n}:"}
                store_kind = "redis"
            log = work / f"serve-{n}.log"
            svc = stack.enter_context(ServiceProcess(svc_env, log=log, ready_timeout_s=900, workers=n))
            time.sleep(2.0 if n > 1 else 0.0)  # every process ready (the first answers /readyz)
            out.append({"workers": n, "feature_store": store_kind, "service_rss_mb": svc.memory()})
            load(svc.port, 8, min(10.0, seconds))  # warm-up: every process loaded and answering
            for c in (8, 32):
                result = load(svc.port, c, seconds)
                out.append({"workers": n, "client": client, **result})
                print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tenm", description=__doc__)
    p.add_argument("--items", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--engines", default="local,ray")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--serve-workers", default=f"1,{os.cpu_count() or 1}", help="serving processes, each")
    p.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-10m")
    p.add_argument(
        "--exact-threshold",
        type=int,
        help="TWOTOWER_INDEX__EXACT_THRESHOLD for the builds (a small smoke run: 0, to build an IVF index)",
    )
    p.add_argument(
        "--serve-only",
        action="store_true",
        help="skip the reindex: serve the build already in <workdir>/index-<items>-<first engine>",
    )
    args = p.parse_args(argv)
    work: Path = args.workdir.resolve()  # users_only() symlinks into it: a relative target would dangle
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "items": args.items,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "yardstick_python_loop_ms": compute.calibrate(repeats=1)["python_loop_ms"],
    }
    t = time.monotonic()
    data = make_data(work / f"data-{args.items}", args.items, args.users)
    result["data_s"] = round(time.monotonic() - t, 1)
    print(f"data ready in {result['data_s']}s: {data}", flush=True)
    settings = {}
    if args.exact_threshold is not None:
        settings["TWOTOWER_INDEX__EXACT_THRESHOLD"] = str(args.exact_threshold)
    for engine in [] if args.serve_only else args.engines.split(","):
        store = work / f"index-{args.items}-{engine}"
        result[engine] = reindex(data, store, engine, work / f"reindex-{engine}.log", settings)
        print(json.dumps(result[engine]), flush=True)
    if "local" in result and "ray" in result:
        result["ray_over_local_wall"] = round(result["ray"]["wall_s"] / result["local"]["wall_s"], 2)
    serve_store = work / f"index-{args.items}-{args.engines.split(',')[0]}"
    workers = sorted({int(n) for n in args.serve_workers.split(",")})
    result["serve"] = serve_load(data, serve_store, work, args.seconds, args.users, workers)
    result["loadavg_at_end"] = os.getloadavg()
    result["own_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (work / "tenm.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
