"""Every setting of the service, in one place (environment prefix `TWOTOWER_`, sections with `__`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

import models

# The committed demo version ships inside the `models` package, so `twotower serve` works anywhere.
DEMO_MODEL_STORE = Path(models.__file__).resolve().parent / "demo"


class Limits(BaseModel):
    """What a client may ask for; beyond these, a 4xx naming the field."""

    max_k: int = Field(1000, ge=1)
    default_k: int = Field(100, ge=1)
    max_score_items: int = Field(1000, ge=1)
    max_exclude: int = Field(10_000, ge=0)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_id_length: int = Field(256, ge=1)
    max_upsert_items: int = Field(1000, ge=1)  # items in one PUT /admin/items


class IndexSettings(BaseModel):
    """How the worker builds indexes (see index_store.build.IndexConfig)."""

    exact_threshold: int = Field(200_000, ge=0)
    ann_factory: str | None = None  # None: chosen from the catalog size
    recall_floor: float = Field(0.95, gt=0, le=1)
    recall_k: int = Field(100, ge=1)
    batch_size: int = Field(4096, ge=1)
    build_threads: int = Field(2, ge=1)
    keep_builds: int = Field(3, ge=1)
    # A build whose catalog is smaller than this share of the current build's is refused (a reindex
    # started while `twotower load` is half done); 0 turns the guard off. Override per build with
    # `twotower reindex --allow-shrink` or `{"allow_shrink": true}`.
    max_shrink: float = Field(0.5, ge=0, le=1)
    # The worker's build child, beside the serving processes (app/reindex/cpu.py): its threads,
    # its niceness and a hard share of the wall clock (SIGSTOP/SIGCONT duty cycle; 1 = no cap).
    # `build_threads` is for `twotower reindex` run by hand. Measured (bench/README.md, swap): at
    # nice 0 with 2 threads a 1M rebuild pushed /recall p99 from 5.4 ms to 878 ms; at nice 19 the
    # build starved under load (~90 s).
    build_child_threads: int = Field(1, ge=1)
    # "idle": Linux SCHED_IDLE, the child runs only on CPU no request wants and is preempted at
    # once when one does (app/reindex/cpu.py); "normal": the default class at `build_nice`.
    build_sched: Literal["idle", "normal"] = "idle"
    build_nice: int = Field(19, ge=0, le=19)
    build_cpu_share: float = Field(1.0, gt=0, le=1)
    # A SCHED_IDLE child that queued for a CPU most of a 10 s window yet ran under this share of a
    # core (the servers saturate the CPU) moves to the normal class at `build_nice`; 0: never.
    build_min_share: float = Field(0.05, ge=0, le=1)
    # Who encodes the catalog: "local" (this process) or "ray" (Ray Data on a cluster; the `ray`
    # extra; see docs/SCALE.md). `twotower reindex --engine/--ray-address` override these.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: a one-node Ray started inside the build
    ray_actor_threads: int = Field(1, ge=1)  # ONNX Runtime threads per Ray actor (Ray sets OMP to 1)


class Runtime(BaseModel):
    """Thread settings for the serving pattern: one small query per request on a 2-core box."""

    onnx_intra_threads: int = Field(1, ge=1)
    onnx_spinning: bool = False  # ORT's default spin-wait burns a core after every call
    faiss_threads: int = Field(1, ge=1)
    # Tower + search in a worker thread (both release the GIL) or inline on the event loop. Unset:
    # inline, except searches of a large exact index (measured: inline serves ~15% more req/s over
    # a 1M IVF index; a 26 ms flat search over 1M inline would serialise every request).
    compute_in_thread: bool | None = None
    thread_above_exact_items: int = Field(100_000, ge=0)


class FilterSettings(BaseModel):
    """How `filter` on /recall and /similar searches (see index_store.filtered)."""

    # A filter keeping at most this share of the catalog is answered by an exact scan of its rows'
    # stored vectors instead of a Faiss search with an IDSelector. Measured on 100k 64-d vectors
    # (IVF, 100 queries, k=100): at 2% the scan took 0.07-0.08 ms per query against 0.12-0.28 ms for
    # the filtered IVF search, which also came back short (fewer than k) for most queries below
    # ~5% and fell back to the scan anyway; at 5% the two were even (0.16 vs 0.09-0.37 ms).
    exact_below: float = Field(0.02, ge=0, le=1)
    # The same for an HNSW index, whose filtered walk grows as 1/share (index_store/filtered.py).
    # Measured on 50k 64-d vectors, HNSW32, efSearch 100: at 20% the scan took 0.42 ms against 0.50,
    # at 5% 0.13 against 1.79, at 2% 0.18 against 8.2; at 50% 0.35 against 0.31.
    exact_below_hnsw: float = Field(0.2, ge=0, le=1)
    max_values: int = Field(1000, ge=1)  # values in one any/all/none list

    def exact_below_for(self, kind: str) -> float:
        return self.exact_below_hnsw if kind == "hnsw" else self.exact_below


class Settings(BaseSettings):
    """Service configuration. Every field has a safe default; see the README's table."""

    model_config = SettingsConfigDict(
        env_prefix="TWOTOWER_", env_nested_delimiter="__", env_file=None, extra="ignore"
    )

    model_store: Path = DEMO_MODEL_STORE
    index_store: Path = Path("var/index")
    data_dir: Path | None = Path("data/ml-100k")  # the in-process feature store's source
    model_versions: list[str] = []  # empty: every version in the model store
    redis_url: str | None = None  # unset: the in-process feature store (one node)
    redis_timeout_s: float = Field(0.5, gt=0)
    redis_prefix: str = "tt:"
    admin_token: SecretStr | None = None  # unset: admin routes answer 403
    worker: bool = True  # run the reindex worker inside the API process
    reindex_interval_s: float = Field(0, ge=0)  # 0: only on POST /admin/reindex
    reindex_on_start: bool = True  # build an index for a version that has none
    poll_interval_s: float = Field(1.0, gt=0)  # how often a replica looks for new builds
    # How often a replica reads the catalog change log (upserts and deletes other replicas took).
    changes_poll_s: float = Field(0.5, gt=0)
    model_poll_s: float = Field(5.0, ge=0)  # how often a replica looks for new model versions; 0: never
    lock_ttl_s: float = Field(30.0, gt=1)
    # A replica rewrites its record (what it serves) on every poll; one not renewed this long is
    # not live. At least three polls, so one slow poll does not drop a live replica.
    replica_ttl_s: float = Field(10.0, gt=0)
    shutdown_drain_s: float = Field(2.0, ge=0)  # readiness is 503 this long before the listener closes
    limits: Limits = Limits()
    index: IndexSettings = IndexSettings()
    runtime: Runtime = Runtime()
    filters: FilterSettings = FilterSettings()
    log_level: str = "INFO"


def load_settings() -> Settings:
    """Settings from the environment. A worker hands its own settings to a build child as JSON in
    TWOTOWER_CONFIG_JSON, so tests and embedders that build Settings in code reach the child too."""
    raw = os.environ.get("TWOTOWER_CONFIG_JSON")
    return Settings(**json.loads(raw)) if raw else Settings()
