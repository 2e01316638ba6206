"""One index build in its own process, reporting wall time, CPU time and peak memory as JSON.

    python -m bench.reindex --model-store S --version V --index-store R --data DIR --kind ivf

Runs `IndexStore.build` (the code path of `twotower reindex` and the worker) on the catalog file
of DIR, publishes the build as CURRENT under R, and prints one JSON line: the build id, the
manifest's timings, index and recall, and the process's peak RSS (VmHWM), which is exact for
this build because nothing else runs in the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.reindex.cpu import lower_priority

ROOT = Path(__file__).resolve().parent.parent

# kind -> (exact_threshold, factory): the exact kind for any size, the ANN kinds for any size;
# "auto": the kind chosen by measured cost at the floor, as `twotower reindex` builds by default.
KINDS: dict[str, tuple[int, str | None]] = {
    "exact": (1 << 62, "IVF{nlist},Flat"),
    "ivf": (0, "IVF{nlist},Flat"),
    "hnsw": (0, "HNSW32"),
    "auto": (0, None),
}


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB.

    VmHWM, not `ru_maxrss`: Linux carries ru_maxrss across execve, so it would include the image of
    the parent this child was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args: argparse.Namespace) -> dict[str, Any]:
    from app.catalog import iter_catalog_file, sample_users, version_schema
    from app.settings import Settings
    from index_store.build import IndexConfig
    from index_store.store import IndexStore
    from index_store.threads import set_faiss_threads

    threshold, factory = KINDS[args.kind]
    config = IndexConfig(exact_threshold=threshold, ann_factory=args.factory or factory, threads=args.threads)
    set_faiss_threads(args.threads)
    store = IndexStore(Path(args.index_store), keep=args.keep)
    first_item: list[float] = []

    def progress(n: int) -> None:
        if not first_item:
            first_item.append(time.monotonic())

    # The data read with the version's names, as `twotower reindex` reads it.
    settings = Settings(data_dir=Path(args.data), model_store=Path(args.model_store), redis_url=None)
    schema = version_schema(settings, args.version)
    started = time.monotonic()
    cpu0 = time.process_time()
    build_id = store.build(
        Path(args.model_store),
        args.version,
        iter_catalog_file(Path(args.data), schema, keep_others=False),
        config,
        progress=progress,
        # the recall floor is tuned on users through the user tower, as `twotower reindex` does
        users=lambda: sample_users(settings, config.sample_queries, schema),
    )
    wall = time.monotonic() - started
    manifest = json.loads((Path(args.index_store) / args.version / build_id / "manifest.json").read_text())
    return {
        "kind": args.kind,
        "build_id": build_id,
        "items": manifest["item_count"],
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "timings": manifest.get("timings", {}),
        "index": manifest["index"],
        "recall": manifest.get("recall"),
        "threads": args.threads,
    }


def run_child(
    model_store: Path,
    version: str,
    index_store: Path,
    data: Path,
    kind: str,
    log: Path,
    threads: int = 2,
    nice: int = 0,
    factory: str | None = None,
    sched: str = "normal",
) -> subprocess.Popen[bytes]:
    """Start a build child at the worker's priority (`sched`, `nice`: app/reindex/cpu.py);
    `finish()` waits for it and parses its JSON line."""
    cmd = [sys.executable, "-m", "bench.reindex", "--model-store", str(model_store), "--version", version]
    cmd += ["--index-store", str(index_store), "--data", str(data), "--kind", kind, "--threads", str(threads)]
    if factory:
        cmd += ["--factory", factory]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    with open(log, "ab") as err:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=lambda: lower_priority(sched, nice),  # noqa: PLW1509 - no threads yet
        )


def finish(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"index build failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reindex", description=__doc__)
    p.add_argument("--model-store", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--index-store", required=True)
    p.add_argument("--data", required=True, help="a data directory with items.jsonl")
    p.add_argument("--kind", choices=sorted(KINDS), required=True)
    p.add_argument("--factory", help="a Faiss factory string for the ANN kinds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    print(json.dumps(build(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
