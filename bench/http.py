"""The `http` step of `python -m bench.run`: /recall over HTTP, twotower and the glue peer side by side
(closed-loop levels, then open loop at half the best rate), and /score over HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.context import (
    Context,
    median_of,
    recall_bodies,
    step,
    user_rows,
)
from bench.load import (
    LoadSpec,
    run_load,
    run_wrk,
    summarize,
    write_bodies,
    wrk_available,
)
from bench.server import GlueProcess, RedisServer, ServiceProcess, serve_has_workers

log = logging.getLogger("bench")


@dataclass
class Variant:
    """One served configuration in the /recall sweep: twotower or the glue peer, N processes."""

    label: str
    kind: str
    in_thread: bool | None  # TWOTOWER_RUNTIME__COMPUTE_IN_THREAD; None = the default (glue: None)
    svc: ServiceProcess
    server: str = "twotower"  # or "glue"
    processes: int = 1
    store: str = "in-process"  # twotower's feature store: "in-process" or "redis" (glue: in memory)
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    half: list[dict[str, Any]] = field(default_factory=list)


def sweep(ctx: Context, variants: Sequence[Variant], bodies: Path) -> None:
    """Closed-loop levels, then an open loop at half each variant's best rate.

    Every service is up at once (idle ones cost nothing) and the runs go round-robin, variant by
    variant within each repeat of each level: a host that slows down mid-run (shared vCPUs do, with
    no sign inside the VM) then slows every variant alike, and the ratios stay fair.
    """
    plan = ctx.plan
    for v in variants:
        run_load(
            LoadSpec(
                port=v.svc.port,
                path="/recall",
                bodies_file=str(bodies),
                concurrency=8,
                duration_s=plan.warmup_s,
            ),
            ctx.tmp,
        )
    for c in plan.concurrency:
        for _ in range(plan.repeats):
            for v in variants:
                spec = LoadSpec(
                    port=v.svc.port,
                    path="/recall",
                    bodies_file=str(bodies),
                    concurrency=c,
                    duration_s=plan.level_s,
                )
                cpu0 = v.svc.cpu_s()
                res = run_load(spec, ctx.tmp)
                summary = summarize(res)
                summary["server_cpu_ms_per_req"] = (v.svc.cpu_s() - cpu0) * 1e3 / max(1, len(res.t))
                v.runs.setdefault(c, []).append(summary)
        for v in variants:
            row = level_row(c, v.runs[c])
            log.info(
                "%s c=%d: p50 %.2f p99 %.2f ms, %.0f req/s",
                v.label,
                c,
                row["p50_ms"],
                row["p99_ms"],
                row["rps"],
            )
    for _ in range(plan.repeats):
        for v in variants:
            rate = best_level(v)["rps"] / 2
            spec = LoadSpec(
                port=v.svc.port,
                path="/recall",
                bodies_file=str(bodies),
                concurrency=64,
                duration_s=plan.half_rate_s,
                rate=rate,
                warmup_s=0.5,
            )
            cpu0 = v.svc.cpu_s()
            res = run_load(spec, ctx.tmp)
            cpu = v.svc.cpu_s() - cpu0
            span = res.window[1] - res.window[0] + spec.warmup_s  # the CPU count covers the warm-up
            # The server's CPU at this rate: how near saturation "half the best" is (the best closed
            # loop coalesces work across requests in flight that an open loop at half does not).
            v.half.append(
                {
                    **summarize(res),
                    "behind": res.behind,
                    "rate": rate,
                    "server_cpu_ms_per_req": cpu * 1e3 / max(1.0, rate * span),
                    "server_cores": cpu / max(1e-9, span),
                }
            )


LEVEL_KEYS = ("p50_ms", "p95_ms", "p99_ms", "rps", "server_cpu_ms_per_req", "client_cpu_ms_per_req")


def level_row(c: int, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"concurrency": c, **median_of(runs, LEVEL_KEYS), "failed": sum(r["failed"] for r in runs)}


def best_level(v: Variant) -> dict[str, Any]:
    return max((level_row(c, runs) for c, runs in v.runs.items()), key=lambda r: r["rps"])


def variant_result(v: Variant) -> dict[str, Any]:
    levels = [level_row(c, runs) for c, runs in sorted(v.runs.items())]
    best = max(levels, key=lambda r: r["rps"])
    half = {
        "rate": v.half[0]["rate"],
        **median_of(v.half, ("p50_ms", "p95_ms", "p99_ms", "rps", "server_cpu_ms_per_req", "server_cores")),
        "failed": sum(r["failed"] for r in v.half),
    }
    log.info(
        "%s at %.0f req/s (half the best): p50 %.2f p99 %.2f ms, server CPU %.2f ms/req (%.2f cores)",
        v.label,
        half["rate"],
        half["p50_ms"],
        half["p99_ms"],
        half["server_cpu_ms_per_req"],
        half["server_cores"],
    )
    return {
        "label": v.label,
        "server": v.server,
        "processes": v.processes,
        "store": v.store,
        "kind": v.kind,
        "compute_in_thread": v.in_thread,
        "levels": levels,
        "max_rps": best["rps"],
        "max_at": best["concurrency"],
        "half_rate": half,
        "memory_mb": v.svc.memory(),
    }


@dataclass(frozen=True)
class HttpConfig:
    label: str
    server: str  # "twotower" or "glue"
    kind: str
    processes: int = 1
    in_thread: bool | None = None  # TWOTOWER_RUNTIME__COMPUTE_IN_THREAD; None = the default
    redis: bool = False  # twotower's feature store in Redis (needed by several processes)


def http_configs(ctx: Context, workers: bool) -> list[HttpConfig]:
    """Every served variant, side by side: twotower on each kind; on the ANN kind twotower and the
    glue peer at each process count (several twotower processes share their state through Redis,
    so twotower also runs 1 process on Redis, for the same store at both counts), and twotower
    with the compute in a thread (a hot-path choice). `workers`: `twotower serve --workers` exists."""
    plan = ctx.plan
    ann = ctx.ann_kind if ctx.ann_kind in plan.http_kinds else None
    out = [HttpConfig(f"twotower {k}", "twotower", k) for k in plan.http_kinds if k != ann]
    if ann is None:
        return out
    multi = workers and any(n > 1 for n in plan.processes)
    for n in plan.processes:
        proc = f"{n} process" + ("es" if n > 1 else "")
        if n == 1:
            out.append(HttpConfig(f"twotower {ann}, 1 process", "twotower", ann))
            if multi:
                out.append(HttpConfig(f"twotower {ann}, 1 process, redis", "twotower", ann, 1, None, True))
        elif workers:
            out.append(HttpConfig(f"twotower {ann}, {proc}, redis", "twotower", ann, n, None, True))
        else:
            log.error("twotower serve has no --workers here: twotower with %s left out of this run", proc)
        out.append(HttpConfig(f"glue peer {ann}, {proc}", "glue", ann, n))
    out.append(HttpConfig(f"twotower {ann}, compute_in_thread=true", "twotower", ann, 1, True))
    return out


def start_variant(
    ctx: Context, stack: contextlib.ExitStack, c: HttpConfig, redis_url: str | None
) -> Variant | None:
    log.info("starting %s", c.label)
    logf = ctx.log_file("serve-" + "".join(ch if ch.isalnum() else "_" for ch in c.label))
    svc: ServiceProcess
    if c.server == "glue":
        index_dir = ctx.index_root(c.kind) / ctx.version
        svc = GlueProcess(ctx.model_store / ctx.version, index_dir, ctx.data, logf, workers=c.processes)
    else:
        extra = (
            {} if c.in_thread is None else {"TWOTOWER_RUNTIME__COMPUTE_IN_THREAD": str(c.in_thread).lower()}
        )
        if c.redis:
            assert redis_url is not None
            extra["TWOTOWER_REDIS_URL"] = redis_url
        svc = ServiceProcess(ctx.service_env(c.kind, **extra), logf, workers=c.processes)
    try:
        stack.enter_context(svc)
    except RuntimeError as exc:  # a variant that cannot start: the rest still runs
        log.error("%s did not start, left out of this run: %s", c.label, exc)
        return None
    store = "redis" if c.redis else "in-process"
    return Variant(c.label, c.kind, c.in_thread, svc, server=c.server, processes=c.processes, store=store)


@step("http")
def measure_http(ctx: Context) -> None:
    plan = ctx.plan
    bodies = recall_bodies(ctx, plan.pool_users, ctx.tmp / "recall.jsonl")
    workers = serve_has_workers()
    configs = http_configs(ctx, workers)
    with contextlib.ExitStack() as stack:
        redis_url = None
        if any(c.redis for c in configs):
            redis = stack.enter_context(RedisServer(ctx.tmp, ctx.data))
            redis_url = redis.url
            log.info("redis-server of the bench's own at %s, %d users loaded", redis.url, redis.users)
        variants = [v for c in configs if (v := start_variant(ctx, stack, c, redis_url)) is not None]
        sweep(ctx, variants, bodies)
        runs = [variant_result(v) for v in variants]
        by_label = {v.label: v for v in variants}
        if wrk_available():
            # wrk beside our own client, at each side's best concurrency: twotower and the glue peer
            for run in runs:
                if run["kind"] == ctx.ann_kind and run["compute_in_thread"] is None:
                    svc = by_label[run["label"]].svc
                    run["wrk"] = run_wrk(
                        svc.port, "/recall", bodies, run["max_at"], plan.level_s * 2, ctx.tmp
                    )
                    log.info("wrk %s c=%d: %.0f req/s", run["label"], run["max_at"], run["wrk"]["rps"])
        main = next(
            (
                r
                for r in runs
                if r["server"] == "twotower" and r["kind"] == ctx.ann_kind and r["processes"] == 1
                if r["compute_in_thread"] is None and r["store"] == "in-process"
            ),
            None,
        )
        if main is not None:
            main["score"] = measure_score_http(ctx, by_label[main["label"]].svc)
    ctx.results["http"] = runs


def measure_score_http(ctx: Context, svc: ServiceProcess) -> dict[str, Any]:
    """/score with 1000 stored candidates per request, one at a time (latency) and at 4 in flight."""
    users = user_rows(ctx.data, 20, seed=1)
    cands = ctx.results["score_candidates"]
    body = [
        {"user_id": u["user_id"], "items": [{"item_id": i} for i in c]}
        for u, c in zip(users, cands, strict=False)
    ]
    first = svc.post("/score", body[0])
    assert len(first["scores"]) == 1000 and not any(s.get("missing") for s in first["scores"])
    path = write_bodies(ctx.tmp / "score.jsonl", body)
    out: dict[str, Any] = {}
    for c in (1, 4):
        runs = [
            summarize(
                run_load(
                    LoadSpec(
                        port=svc.port,
                        path="/score",
                        bodies_file=str(path),
                        concurrency=c,
                        duration_s=ctx.plan.score_s,
                    ),
                    ctx.tmp,
                )
            )
            for _ in range(ctx.plan.repeats)
        ]
        out[str(c)] = {
            **median_of(runs, ("p50_ms", "p95_ms", "p99_ms", "rps")),
            "failed": sum(r["failed"] for r in runs),
        }
    out["request_bytes"] = len(json.dumps(body[0]))
    return out
