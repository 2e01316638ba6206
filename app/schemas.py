"""Request and response bodies of the HTTP contract (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

# Ids are strings in the API; lengths are bounded again by the configured limits in the routes.
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Features = dict[str, Any]
# field -> {operator: value}; the operators and value types are checked against the schema
Filter = dict[str, dict[str, Any]]
FILTER_DOC = (
    "filterable item fields -> {operator: value}: any/all/none [strings] for categorical and "
    "multi_hot fields, gt/gte/lt/lte/eq number for numeric and bucket fields, eq true/false for "
    'booleans; fields and operators combine with AND, e.g. {"genres": {"any": ["Comedy"]}, '
    '"release_year": {"gte": 1990, "lt": 2000}}'
)


class _Strict(BaseModel):
    # Unknown top-level fields are a client error, not silently ignored; NaN/inf are refused.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RecallRequest(_Strict):
    user_id: ItemId | None = None
    features: Features | None = None
    k: StrictInt | None = Field(None, description="1..max_k; default 100")  # strict: `true` is not 1
    model_version: ItemId | None = Field(None, description="a version tag or an alias; omitted = default")
    exclude_item_ids: list[ItemId] = []
    exclude_history: StrictBool = True  # strict: "no" or 0 is a type error, not False
    filter: Filter | None = Field(None, description=FILTER_DOC)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecallResponse(BaseModel):
    model_version: str
    index_build: str
    cold_start: bool
    items: list[ScoredItem]


class SimilarRequest(_Strict):
    item_id: ItemId
    features: Features | None = Field(
        None, description="item features: the query is the item tower's output on them, not the stored vector"
    )
    k: StrictInt | None = Field(None, description="1..max_k; default 100")
    model_version: ItemId | None = Field(None, description="a version tag or an alias; omitted = default")
    exclude_item_ids: list[ItemId] = []
    filter: Filter | None = Field(None, description=FILTER_DOC)


class SimilarResponse(BaseModel):
    model_version: str
    index_build: str
    items: list[ScoredItem]


class ScoreItem(_Strict):
    item_id: ItemId
    features: Features | None = None


class ScoreRequest(_Strict):
    user_id: ItemId | None = None
    features: Features | None = None
    model_version: ItemId | None = None
    items: list[ScoreItem] = Field(..., min_length=1)


class ItemScore(BaseModel):
    item_id: str
    score: float | None
    missing: bool = False


class ScoreResponse(BaseModel):
    model_version: str
    index_build: str
    scores: list[ItemScore]


class ReindexRequest(_Strict):
    model_version: ItemId | None = None
    allow_shrink: StrictBool = Field(
        False, description="build even if the catalog shrank below index.max_shrink of the current build's"
    )


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobRef(BaseModel):
    job_id: str
    status: JobStatus
    model_version: str


class ReindexAccepted(BaseModel):
    job_id: str
    status: JobStatus
    jobs: list[JobRef]


class Job(BaseModel):
    job_id: str
    status: JobStatus
    model_version: str
    index_build: str | None
    items: int
    error: str | None
    attempts: int = 0  # runs started; a job handed back after its worker died is run again


class WorkerStatus(BaseModel):
    worker_id: str
    host: str
    pid: int
    state: str  # idle, starting, waiting for the lock, building, backing off
    job_id: str | None
    alive: bool  # heard from within three leases
    started_at: float
    last_loop_at: float
    seen_at: float
    jobs_done: int
    failures: int  # unexpected failures it survived
    last_error: str | None


class Workers(BaseModel):
    workers: list[WorkerStatus]


class VersionInfo(BaseModel):
    model_version: str
    aliases: list[str]
    index_build: str | None
    items: int
    state: Literal["ready", "no_index"]
    dim: int
    metrics: dict[str, Any]


class ReplicaInfo(BaseModel):
    replica: str  # host:pid:nonce
    versions: dict[str, str | None]  # version -> the build it serves (null: loaded, no index yet)
    at: float  # unix time of its last heartbeat


class Versions(BaseModel):
    versions: list[VersionInfo]
    aliases: dict[str, str]
    replicas: list[ReplicaInfo] = []  # live replicas and what each serves (empty if Redis is down)


class AliasRequest(_Strict):
    model_version: ItemId


class AliasResponse(BaseModel):
    alias: str
    model_version: str


class Health(BaseModel):
    status: str
    model_version: str | None = None
    index_build: str | None = None
