"""Compute-only measurements (no HTTP): the floors the service is compared with, and hot-path choices.

Every function runs the same calls the request path makes (`TowerRunner.embed`, `Snapshot.search`,
`Snapshot.vectors_for`), times each call with `perf_counter`, and reports medians and tails in ms.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import percentile
from index_store.build import HNSW, IVF, recall_at_k, search_parameters
from index_store.snapshot import Snapshot
from index_store.threads import using_faiss_threads
from models.manifest import ModelManifest
from models.runtime import TowerRunner


def stats_ms(latencies: Sequence[float]) -> dict[str, float]:
    xs = list(latencies)
    return {
        "p50_ms": percentile(xs, 50) * 1e3,
        "p95_ms": percentile(xs, 95) * 1e3,
        "p99_ms": percentile(xs, 99) * 1e3,
        "mean_ms": statistics.fmean(xs) * 1e3 if xs else float("nan"),
        "n": len(xs),
    }


def timed(fn: Callable[[int], object], n: int, warmup: int = 20, gap_s: float = 0.0) -> dict[str, float]:
    """Call `fn(i)` n times after a warm-up; per-call latency stats plus process CPU ms per call.

    `gap_s` idles between calls, as a service does between requests: CPU a thread pool burns
    spin-waiting after a call then shows in `cpu_ms` (process CPU, every thread).
    """
    for i in range(warmup):
        fn(i)
    lat: list[float] = []
    cpu0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t0)
        if gap_s:
            time.sleep(gap_s)
    cpu = time.process_time() - cpu0
    return {**stats_ms(lat), "cpu_ms": cpu * 1e3 / n}


def timed_interleaved(
    fns: Mapping[str, Callable[[int], object]], n: int, warmup: int = 20, gap_s: float = 0.0, block: int = 1
) -> dict[str, dict[str, float]]:
    """`timed` for several variants at once, round-robin in blocks of `block` calls, so that a host
    slowing down mid-measurement (shared vCPUs) hits every variant alike and their ratio stays fair.

    CPU is counted per block (process CPU, every thread). Thread pools keep spin-waiting for a while
    after a call returns, so measure CPU with blocks of tens of calls: only the spin after a block's
    last call then lands on the next variant.
    """
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    lat: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, float] = dict.fromkeys(fns, 0.0)
    for first in range(0, n, block):
        for name, fn in fns.items():
            c0 = time.process_time()
            for i in range(first, min(n, first + block)):
                t0 = time.perf_counter()
                fn(i)
                lat[name].append(time.perf_counter() - t0)
                if gap_s:
                    time.sleep(gap_s)
            cpu[name] += time.process_time() - c0
    return {name: {**stats_ms(lat[name]), "cpu_ms": cpu[name] * 1e3 / n} for name in fns}


def history_of(row: Mapping[str, Any]) -> set[str]:
    return {x for x in row.get("history") or () if isinstance(x, str)}


def recall_floor(
    user: TowerRunner, snap: Snapshot, users: Sequence[Mapping[str, Any]], k: int, n: int
) -> dict[str, Any]:
    """User tower + search with the history excluded, one request's compute, in a loop."""
    banned = [history_of(u) for u in users]

    def call(i: int) -> None:
        j = i % len(users)
        snap.search(user.embed([users[j]]), k, [banned[j]])

    out = timed(call, n)
    out["rps_one_thread"] = 1e3 / out["mean_ms"]
    return out


def compute_throughput(
    user: TowerRunner,
    snap: Snapshot,
    users: Sequence[Mapping[str, Any]],
    k: int,
    threads: int,
    seconds: float,
) -> float:
    """Recalls per second with `threads` Python threads calling the compute path back to back."""
    banned = [history_of(u) for u in users]
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(t: int) -> None:
        i = t
        while time.monotonic() < stop:
            j = i % len(users)
            snap.search(user.embed([users[j]]), k, [banned[j]])
            counts[t] += 1
            i += threads

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    started = time.monotonic()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(counts) / (time.monotonic() - started)


def tile_vs_naive(
    user: TowerRunner,
    snap: Snapshot,
    users: Sequence[Mapping[str, Any]],
    candidates: Sequence[list[str]],
    n: int,
) -> dict[str, Any]:
    """/score compute: the user tower once, tiled (one mat-vec) vs the naive path: the user row
    repeated through the tower and each candidate's row found by its own dict lookup (what the
    service did before its id map was vectorised), then a row-wise dot. The scores must agree
    (checked). `lookup` is the service's vectorised id -> vector step, `lookup_dict` the naive one.
    """
    # The naive path's id map, built once outside any timing (the service built it at every load).
    row_dict = {x: r for r, x in enumerate(snap.ids.tolist())}

    def dict_vectors(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.fromiter((row_dict.get(x, -1) for x in ids), dtype=np.int64, count=len(ids))
        found = rows >= 0
        out = np.zeros((len(ids), snap.dim), dtype=np.float32)
        out[found] = snap.vectors[rows[found]]
        return out, found

    def tile(i: int) -> np.ndarray:
        u = user.embed([users[i % len(users)]])[0]
        vecs, found = snap.vectors_for(candidates[i % len(candidates)])
        return np.asarray(vecs @ u)

    def naive(i: int) -> np.ndarray:
        ids = candidates[i % len(candidates)]
        us = user.embed([users[i % len(users)]] * len(ids))
        vecs, found = dict_vectors(ids)
        return np.asarray(np.einsum("ij,ij->i", us, vecs))

    diff = max(float(np.max(np.abs(tile(i) - naive(i)))) for i in range(5))
    r = timed_interleaved(
        {
            "tile": tile,
            "naive": naive,
            "tower_once": lambda i: user.embed([users[i % len(users)]]),
            "tower_repeated": lambda i: user.embed([users[i % len(users)]] * len(candidates[0])),
            "lookup": lambda i: snap.vectors_for(candidates[i % len(candidates)]),
            "lookup_dict": lambda i: dict_vectors(candidates[i % len(candidates)]),
        },
        max(20, n // 2),
        warmup=3,
        block=10,  # blocks, not single calls: a 1000-row call would skew the small call right after it
    )
    t, nv, tower_once, tower_repeated, lookup, lookup_dict = (
        r["tile"],
        r["naive"],
        r["tower_once"],
        r["tower_repeated"],
        r["lookup"],
        r["lookup_dict"],
    )
    return {
        "candidates": len(candidates[0]),
        "tile": t,
        "naive": nv,
        "tower_once": tower_once,
        "tower_repeated": tower_repeated,
        "lookup": lookup,
        "lookup_dict": lookup_dict,
        "ratio_p50": nv["p50_ms"] / t["p50_ms"],
        "tower_ratio_p50": tower_repeated["p50_ms"] / tower_once["p50_ms"],
        "max_abs_score_diff": diff,
    }


def faiss_threads(
    snap: Snapshot, queries: np.ndarray, k: int, n: int, threads: Sequence[int]
) -> dict[str, Any]:
    """One query per call over the whole index, with 1 or 2 Faiss (OpenMP) threads."""
    fns = {str(t): _searcher(dataclasses.replace(snap, threads=t), queries, k) for t in threads}
    return dict(timed_interleaved(fns, n, block=max(1, n // 10)))


def _searcher(snap: Snapshot, queries: np.ndarray, k: int) -> Callable[[int], object]:
    return lambda i: snap.search(queries[i % len(queries)][None, :], k)


def _embedder(runner: TowerRunner, users: Sequence[Mapping[str, Any]]) -> Callable[[int], object]:
    return lambda i: runner.embed([users[i % len(users)]])


def ort_spinning(
    model_dir: Path,
    manifest: ModelManifest,
    users: Sequence[Mapping[str, Any]],
    n: int,
    intra: Sequence[int] = (1, 2),
    gap_s: float = 0.0005,
) -> list[dict[str, Any]]:
    """The user tower (one row) with ONNX Runtime spin-waiting on vs off, per intra-op thread count."""
    configs = [(threads, spinning) for threads in intra for spinning in (False, True)]
    fns = {
        f"{t}/{sp}": _embedder(
            TowerRunner(model_dir, manifest, "user", intra_threads=t, spinning=sp).load(), users
        )
        for t, sp in configs
    }
    r = timed_interleaved(fns, n, gap_s=gap_s, block=max(1, n // 10))
    return [{"intra_threads": t, "spinning": sp, **r[f"{t}/{sp}"]} for t, sp in configs]


def sweep_values(snap: Snapshot) -> tuple[str, list[int]]:
    """The search parameter of an ANN snapshot and the values to measure (always the tuned one)."""
    tuned = dict(snap.search_params)
    if snap.kind == IVF:
        nlist = int(snap.manifest["index"]["params"].get("nlist", 1 << 20))
        values = [v for v in (1, 2, 4, 8, 16, 32, 64, 128) if v <= nlist]
        name = "nprobe"
    elif snap.kind == HNSW:
        values = [16, 32, 64, 100, 128, 256]
        name = "efSearch"
    else:
        return "", []
    if name in tuned:
        values.append(int(tuned[name]))
    return name, sorted(set(values))


def ann_recall(exact: Snapshot, ann: Snapshot, queries: np.ndarray, k: int, n_timed: int) -> dict[str, Any]:
    """Recall@k of the ANN snapshot against exact search, for user-tower queries, per setting.

    Recall counts a returned item as a hit when its true score reaches the exact k-th score (the
    build's own tie-aware measure); `id_overlap` is the plain |ANN ∩ exact| / k.
    """
    if not np.array_equal(exact.ids, ann.ids):
        raise ValueError("the exact and ANN builds do not index the same catalog in the same order")
    with using_faiss_threads(2):  # a batch: both cores help here (not timed)
        ex_scores, ex_rows = exact.index.search(queries, k)
    kth = ex_scores[:, k - 1]
    name, values = sweep_values(ann)
    tuned = int(ann.search_params.get(name, 0))
    rows = []
    for v in values:
        params = search_parameters(ann.kind, {name: v})
        with using_faiss_threads(2):
            _, found = ann.index.search(queries, k, params=params)
        overlap = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, ex_rows, strict=True)]))

        def one(i: int, p: Any = params) -> object:
            return ann.index.search(queries[i % len(queries)][None, :], k, params=p)

        with using_faiss_threads(1):
            lat = timed(one, n_timed)
        rows.append(
            {
                "param": name,
                "value": v,
                "tuned": v == tuned,
                "recall": recall_at_k(exact.vectors, queries, found, kth),
                "id_overlap": overlap,
                "search_p50_ms": lat["p50_ms"],
            }
        )
    with using_faiss_threads(1):
        exact_lat = timed(
            lambda i: exact.index.search(queries[i % len(queries)][None, :], k), max(20, n_timed // 4)
        )
    return {
        "kind": ann.kind,
        "queries": int(queries.shape[0]),
        "k": k,
        "build_recall": dict(ann.manifest.get("recall") or {}),
        "settings": rows,
        "exact_search_p50_ms": exact_lat["p50_ms"],
    }


def calibrate(repeats: int = 3) -> dict[str, float]:
    """A fixed CPU yardstick, so two runs on the 'same' machine can be compared: on shared hosts the
    same vCPU can be 2x slower from one hour to the next with no sign of it inside the VM."""

    def loop() -> float:
        t = time.perf_counter()
        s = 0
        for i in range(3_000_000):
            s += i * i
        return time.perf_counter() - t

    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)

    def matmul() -> float:
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        return time.perf_counter() - t

    matmul()  # BLAS thread pool start-up is not part of the yardstick
    return {
        "python_loop_ms": statistics.median(loop() for _ in range(repeats)) * 1e3,
        "matmul_ms": statistics.median(matmul() for _ in range(repeats)) * 1e3,
    }
