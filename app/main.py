"""The app factory and its lifespan: every heavy resource is made here and torn down here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app import errors
from app.api.hot import HotRoutes, is_hot
from app.api.routes import admin, health, items, recall, score, similar
from app.metrics import Metrics
from app.middleware import BodyLimit, RequestMetrics
from app.reindex.jobs import submit
from app.reindex.worker import Worker
from app.service import Service
from app.settings import Settings
from app.state import make_store
from models.errors import StoreUnavailable

log = logging.getLogger(__name__)
_TEARDOWN_S = 15.0  # per shutdown step: longer than the worker's own 10 s bound on reaping its build child


async def _every(seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except Exception:  # a background loop must outlive any one failure
            log.exception("background task %s failed", getattr(fn, "__name__", fn))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    store = make_store(settings, on_error=lambda op: metrics.store_errors.labels(op).inc())
    service = Service(settings, store, metrics)
    await anyio.to_thread.run_sync(service.load_versions)
    await service.refresh_aliases()
    await service.sync_builds()
    await service.sync_changes()  # replays the change log on top of the builds just loaded
    await service.heartbeat()
    app.state.service = service
    # Everything loaded so far (the in-process users with their histories, vocabularies, modules)
    # lives as long as the process: out of the collector's reach, a full collection no longer walks
    # it. Measured: ~55 ms per full collection with 10k users, the one ~127 ms stall a second after
    # a swap in the bench. Forked workers also keep these pages shared (no GC header writes).
    gc.collect()  # garbage first: what is frozen is never collected (freed by refcount only)
    gc.freeze()

    async def poll() -> None:
        await service.refresh_aliases()
        await service.sync_builds()
        await service.heartbeat()

    tasks = [
        asyncio.create_task(_every(settings.poll_interval_s, poll)),
        asyncio.create_task(_every(settings.changes_poll_s, service.sync_changes)),
    ]
    if settings.model_poll_s > 0:

        async def discover() -> None:
            """New versions in the model store: loaded here, their index queued (built once)."""
            await service.queue_missing_builds(await service.discover_versions())

        tasks.append(asyncio.create_task(_every(settings.model_poll_s, discover)))
    worker: Worker | None = None
    if settings.worker:

        async def on_built(version: str) -> None:
            await service.sync_builds()

        worker = Worker(settings, store, metrics, lambda: sorted(service.versions), on_built)
        tasks.append(asyncio.create_task(worker.run()))
        if settings.reindex_on_start:
            for tag in sorted(service.versions):
                if service.index_store.current_build(tag) is None:
                    with contextlib.suppress(StoreUnavailable):
                        job = await submit(store, tag)
                        log.info("no index for %s yet: build queued (job %s)", tag, job["job_id"])
    try:
        yield
    finally:
        service.draining = True
        if worker is not None:
            worker.stop()
        for t in tasks:
            t.cancel()
        # Shutdown is bounded: a task that does not end on its cancellation (a Redis call wedged
        # past its own timeouts) is logged and left behind instead of holding the process up;
        # the orchestrator would kill it anyway, without the replica record being dropped.
        _, stuck = await asyncio.wait(tasks, timeout=_TEARDOWN_S)
        for t in stuck:
            log.error("background task %s did not stop within %.0fs on shutdown", t.get_coro(), _TEARDOWN_S)
        for step in (service.leave, store.close):
            try:
                await asyncio.wait_for(step(), _TEARDOWN_S)
            except TimeoutError:
                log.error("%s did not finish within %.0fs on shutdown", step.__qualname__, _TEARDOWN_S)


class TwoTowerAPI(FastAPI):
    """FastAPI, with POST /recall, /similar and /score answered before its per-request machinery
    (app/api/hot.py); what the hot path cannot take, it hands back to the full stack."""

    hot: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot is not None and is_hot(scope):
            scope["app"] = self
            await self.hot(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> TwoTowerAPI:
    settings = settings or Settings()
    app = TwoTowerAPI(
        title="twotower",
        version="1",
        summary="Online retrieval for two-tower recommenders",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    errors.install(app)
    for module in (recall, similar, score, admin, items, health):
        app.include_router(module.router)
    # Outermost first: count every request, then refuse oversized bodies before parsing.
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)

    async def full_stack(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    app.hot = HotRoutes(full_stack, metrics=app.state.metrics, max_bytes=settings.limits.max_body_bytes)
    return app
