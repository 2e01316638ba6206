"""The feature store interface: what the service keeps outside its own process memory.

Two implementations: Redis (several replicas, app/state/redis_store.py) and in-process (one node,
read from the data files, app/state/local.py). A store failure surfaces as StoreUnavailable so a
route can answer 503, and the service keeps serving what does not need the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any


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

    @abstractmethod
    async def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    async def set_alias(self, alias: str, version: str) -> None: ...

    @abstractmethod
    async def put_job(self, job: dict[str, Any]) -> None: ...

    @abstractmethod
    async def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        """Mark `job_id` as the version's active job; returns the existing one instead if any."""

    @abstractmethod
    async def clear_active(self, version: str, job_id: str) -> None: ...

    @abstractmethod
    async def enqueue(self, job_id: str) -> None: ...

    @abstractmethod
    async def dequeue(self) -> str | None: ...

    @abstractmethod
    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def release_lock(self, version: str, token: str) -> None: ...

    @abstractmethod
    async def set_active_build(self, version: str, build_id: str) -> None: ...

    @abstractmethod
    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        """Stream the item catalog (sync: builds run in a worker process)."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
