"""The worker survives any single failure and says it is alive (issue 11, case 2): real build
children, the in-process store, a real Metrics registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.metrics import Metrics
from app.reindex.jobs import submit
from app.reindex.worker import Worker
from app.settings import Settings
from app.state import LocalStore
from tests.app.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_ended(store: LocalStore, job_id: str, timeout: float = 60) -> dict[str, Any]:
    for _ in range(int(timeout / 0.1)):
        job = await store.get_job(job_id)
        if job is not None and job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def worker_for(
    settings: Settings,
    store: LocalStore,
    metrics: Metrics,
    on_built: Callable[[str], Awaitable[None]] | None = None,
) -> Worker:
    return Worker(settings, store, metrics, lambda: [], on_built)


async def test_survives_a_build_child_that_cannot_start(
    model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    """OSError from exec: the settings handed to the child in one environment string are over
    MAX_ARG_STRLEN (E2BIG)."""
    settings = make_settings(
        model_store, index_root, data_dir, model_versions=["a" * 70_000, "b" * 70_000], poll_interval_s=0.05
    )
    store = LocalStore(data_dir, index_root / "aliases.json").load()
    metrics = Metrics()
    worker = worker_for(settings, store, metrics)
    task = asyncio.create_task(worker.run())
    try:
        jobs = [await submit(store, version)]
        first = await wait_ended(store, jobs[0]["job_id"])
        assert first["status"] == "failed" and "Argument list too long" in str(first["error"]), first
        jobs.append(await submit(store, version))  # the loop went on: the next job is taken too
        second = await wait_ended(store, jobs[1]["job_id"])
        assert second["status"] == "failed", second
        assert not task.done()
        assert worker.status["failures"] == 2 and "Argument list too long" in worker.status["last_error"]
        assert metrics.worker_last_loop._value.get() > 0  # noqa: SLF001 (the gauge's value)
        (status,) = await store.workers()
        assert status["worker_id"] == worker.status["worker_id"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_survives_on_built_raising(
    model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    settings = make_settings(model_store, index_root, data_dir, poll_interval_s=0.05)
    store = LocalStore(data_dir, index_root / "aliases.json").load()
    metrics = Metrics()
    calls: list[str] = []

    async def on_built(v: str) -> None:
        calls.append(v)
        raise RuntimeError("the API could not load the build")

    worker = worker_for(settings, store, metrics, on_built)
    task = asyncio.create_task(worker.run())
    try:
        for n in (1, 2):
            job = await submit(store, version)
            done = await wait_ended(store, job["job_id"])
            assert done["status"] == "succeeded", done  # published: the failure was the caller's
            assert len(calls) == n and not task.done()
        assert worker.status["failures"] == 2 and "could not load" in worker.status["last_error"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
