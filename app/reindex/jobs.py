"""Reindex jobs: one record per build request, coalesced per version while queued or running.

A job is never lost or stuck: it is submitted in one atomic step (active marker, record, queue),
taken off the queue under a lease its worker renews, and handed back when the lease runs out (see
app/state/queue.py). A job handed back MAX_ATTEMPTS times (its workers died each time) fails.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.state import FeatureStore
from models.errors import BuildRefused, StoreUnavailable

ACTIVE_TTL_S = 3600.0
TERMINAL = ("succeeded", "failed")
MAX_ATTEMPTS = 3


def new_job(version: str, allow_shrink: bool = False) -> dict[str, Any]:
    return {
        "job_id": uuid.uuid4().hex,
        "status": "queued",
        "model_version": version,
        "index_build": None,
        "items": 0,
        "error": None,
        "attempts": 0,
        "allow_shrink": allow_shrink,
        "created_at": time.time(),
        "updated_at": time.time(),
    }


async def submit(store: FeatureStore, version: str, allow_shrink: bool = False) -> dict[str, Any]:
    """Queue a build of `version`, or return the job already queued or running for it."""
    job = new_job(version, allow_shrink)
    for _ in range(3):
        existing = await store.submit_job(job, ACTIVE_TTL_S)
        if existing is None:
            return job
        found = await store.get_job(existing)
        if found is not None and found["status"] not in TERMINAL:
            if await store.job_in_flight(existing):
                if allow_shrink and not found.get("allow_shrink"):
                    raise BuildRefused(
                        f"a build of {version} without allow_shrink is already {found['status']} "
                        f"(job {existing}); ask again once it has ended"
                    )
                return found
            # Marked active, but neither queued nor held: written by an older version of this code
            # or left by a partial restore. Close it rather than block the version for an hour.
            found.update(status="failed", error="lost: neither queued nor held by a worker")
            found["updated_at"] = time.time()
            await store.put_job(found)
        await store.clear_active(version, existing)  # a stale marker (its job ended or expired)
    raise StoreUnavailable(f"could not queue a build of {version}")
