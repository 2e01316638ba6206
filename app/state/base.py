"""The feature store interface: what the service keeps outside its own process memory.

Two implementations: Redis (several replicas, app/state/redis_store.py) and in-process (one node,
read from the data files, app/state/local.py). A store failure surfaces as StoreUnavailable so a
route can answer 503, and the service keeps serving what does not need the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from models.layout import DataLayout


def text(raw: Any) -> str | None:
    """A Redis reply (bytes, as the client is not set to decode) as text."""
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class FeatureStore(ABC):
    """User features, the item catalog, aliases, jobs and build locks."""

    kind: str

    @abstractmethod
    async def get_user(self, user_id: str) -> dict[str, Any] | None: ...

    def version_added(self, tag: str, layout: DataLayout) -> None:
        """A model version loaded after start (its data layout): a store that read the data files
        itself makes its rows fit it where it can. Redis holds what `twotower load` wrote."""
        return None

    @abstractmethod
    async def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    async def set_alias(self, alias: str, version: str) -> None:
        """Record durably first, then make live; on failure nothing changed (StoreUnavailable)."""

    @abstractmethod
    async def init_alias(self, alias: str, version: str) -> str:
        """Point `alias` at `version` only if no record of it exists anywhere; returns its target."""

    @abstractmethod
    async def put_job(self, job: dict[str, Any]) -> None: ...

    @abstractmethod
    async def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        """Mark `job_id` as the version's active job; returns the existing one instead if any."""

    @abstractmethod
    async def clear_active(self, version: str, job_id: str) -> None: ...

    # The queue. A job taken off it carries a lease (`take_job`) that its worker renews; a job whose
    # lease expired is handed back by `reap_jobs`. So a job is queued, held under a live lease, or
    # finished: never lost.

    @abstractmethod
    async def submit_job(self, job: dict[str, Any], active_ttl_s: float) -> str | None:
        """Atomically: mark the job active for its version, record it and queue it. If another job
        is already marked active, nothing is written and its id is returned."""

    @abstractmethod
    async def job_in_flight(self, job_id: str) -> bool:
        """True if the job is in the queue or held under a lease (live or not yet reaped)."""

    @abstractmethod
    async def take_job(self, owner: str, lease_s: float) -> str | None:
        """Move the next job off the queue under `owner`'s lease of `lease_s` (one atomic step)."""

    @abstractmethod
    async def renew_job(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False if it is not `owner`'s any more (reaped, maybe another's now)."""

    @abstractmethod
    async def finish_job(self, job_id: str, owner: str) -> bool:
        """Drop the job and its lease (its record holds the final status); False if not ours."""

    @abstractmethod
    async def hand_back(self, job_id: str, owner: str) -> bool:
        """Back to the queue at once (a worker that cannot run it now); False if not ours."""

    @abstractmethod
    async def reap_jobs(self) -> list[str]:
        """Hand back every job whose lease expired; returns their ids."""

    @abstractmethod
    async def put_worker(self, status: dict[str, Any], ttl_s: float) -> None:
        """A worker's heartbeat: its status, kept `ttl_s`."""

    @abstractmethod
    async def workers(self) -> list[dict[str, Any]]:
        """The status of every worker heard from within its TTL."""

    @abstractmethod
    async def put_replica(self, record: dict[str, Any], ttl_s: float) -> None:
        """What an API replica serves (`record["replica"]` is its id), kept `ttl_s`."""

    @abstractmethod
    async def replicas(self) -> list[dict[str, Any]]:
        """The record of every replica heard from within its TTL."""

    @abstractmethod
    async def drop_replica(self, replica_id: str) -> None: ...

    @abstractmethod
    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def release_lock(self, version: str, token: str) -> None: ...

    @abstractmethod
    async def set_active_build(self, version: str, build_id: str) -> None: ...

    @abstractmethod
    async def append_changes(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append catalog changes durably in one step (all or none); returns them with their `seq`."""

    @abstractmethod
    async def changes_since(self, seq: int) -> list[dict[str, Any]]:
        """Every catalog change after `seq`, in order (app/state/changes.py)."""

    @abstractmethod
    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        """Stream the item catalog (sync: builds run in a worker process)."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
