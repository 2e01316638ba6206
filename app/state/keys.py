"""The Redis key layout, in one place: every shared record of the service lives under a prefix.

<prefix>user:<user_id>      JSON user features with `history` (written by `twotower load`)
<prefix>items               hash item_id -> JSON item row (the catalog a build encodes)
<prefix>aliases             hash alias -> model version
<prefix>builds              hash model version -> index build id (the last one published)
<prefix>job:<job_id>        JSON job record (expires after JOB_TTL_S)
<prefix>queue               list of job ids waiting for a worker
<prefix>active:<version>    the job id queued or running for a version (coalesces submits)
<prefix>lock:<version>      the build lock's token (expires unless renewed)
<prefix>replica:<id>        JSON: what one API replica serves (expires unless renewed; see Service.heartbeat)
<prefix>changes             sorted set: catalog changes (JSON) by sequence number (app/state/changes.py)
<prefix>changes:seq         the last sequence number handed out
<prefix>changes:ids         hash item id -> the seq of its newest change (the log's compaction)
"""

from __future__ import annotations

from dataclasses import dataclass

JOB_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Keys:
    prefix: str = "tt:"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    @property
    def items(self) -> str:
        return f"{self.prefix}items"

    @property
    def aliases(self) -> str:
        return f"{self.prefix}aliases"

    @property
    def builds(self) -> str:
        return f"{self.prefix}builds"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    @property
    def queue(self) -> str:
        return f"{self.prefix}queue"

    @property
    def processing(self) -> str:
        return f"{self.prefix}processing"

    @property
    def leases(self) -> str:
        return f"{self.prefix}leases"

    @property
    def owners(self) -> str:
        return f"{self.prefix}owners"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def active(self, version: str) -> str:
        return f"{self.prefix}active:{version}"

    def lock(self, version: str) -> str:
        return f"{self.prefix}lock:{version}"

    @property
    def changes(self) -> str:
        return f"{self.prefix}changes"

    @property
    def changes_seq(self) -> str:
        return f"{self.prefix}changes:seq"

    @property
    def changes_ids(self) -> str:
        return f"{self.prefix}changes:ids"
