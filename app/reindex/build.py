"""One reindex run: `twotower reindex` by hand, or the worker's build child (`--json-progress`).

Builds every requested version through IndexStore.build, behind the version's lock: the worker's
(checked through `fence_token`) or, run by hand against Redis, one it takes itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from app.reindex import child
from app.reindex.cpu import lower_priority
from app.reindex.engines import RAY, ray_encoder
from app.settings import Settings
from models.data import HasTowers
from models.errors import BuildRefused, DataError, TwoTowerError

log = logging.getLogger("twotower")
BUILD_LOCK = ".build.lock"


def index_config(settings: Settings) -> Any:
    from index_store.build import IndexConfig

    s = settings.index
    config = IndexConfig(
        exact_threshold=s.exact_threshold,
        recall_floor=s.recall_floor,
        recall_k=s.recall_k,
        batch_size=s.batch_size,
        threads=s.build_threads,
        keep_builds=s.keep_builds,
        max_shrink=s.max_shrink,
    )
    return dataclasses.replace(config, ann_factory=s.ann_factory) if s.ann_factory else config


def catalog(settings: Settings, schema: HasTowers) -> Iterator[dict[str, Any]]:
    """The catalog a build of one version encodes: Redis's (as `twotower load` wrote it), else the
    items table of the data files, read with that version's schema (its names, its columns)."""
    from app.catalog import iter_catalog_file
    from app.state import RedisStore

    if settings.redis_url:
        rows = RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_prefix).iter_catalog()
        return _named(rows, schema.layout.item_id)
    if settings.data_dir is None:
        raise TwoTowerError("no catalog: set TWOTOWER_DATA_DIR or TWOTOWER_REDIS_URL")
    return iter_catalog_file(Path(settings.data_dir), schema, keep_others=False)


def _named(rows: Iterator[dict[str, Any]], id_column: str) -> Iterator[dict[str, Any]]:
    """Redis's catalog holds rows under the names `twotower load` read them with: a version whose
    item id column is another one cannot use it, and the message says what to do."""
    for n, row in enumerate(rows):
        if n == 0 and id_column not in row:
            raise DataError(
                f"the catalog in Redis has no column {id_column!r} (this version's item id; its rows "
                f"have {sorted(row)}): load the data with `twotower load --model-version` this version"
            )
        yield row


def changed_catalog(settings: Settings, schema: HasTowers) -> tuple[Iterator[Mapping[str, Any]], int]:
    """The catalog with the change log folded in, and the last change folded (the build records
    it; a replica that swaps the build in drops its pending changes up to it, keeps the later)."""
    from app.state.changes import CHANGES_FILE, FileChangeLog, fold, read_changes_sync

    if settings.redis_url:
        changes = read_changes_sync(settings.redis_url, settings.redis_prefix, settings.redis_timeout_s)
    else:
        changes = FileChangeLog(Path(settings.index_store) / CHANGES_FILE).read_since(0)
    last = max((int(c["seq"]) for c in changes), default=0)
    if not changes:  # the catalog as it is: a catalog file stays one, read as column batches
        return catalog(settings, schema), last
    return fold(catalog(settings, schema), changes, schema.item.id_field), last


def reindex(
    settings: Settings,
    model_version: str | None = None,
    if_missing: bool = False,
    build_id: str | None = None,
    fence_token: str | None = None,
    json_progress: bool = False,
    allow_shrink: bool = False,
    engine: str | None = None,
    ray_address: str | None = None,
) -> int:
    """Build, verify and publish; returns the process exit code. `engine` / `ray_address`
    override the settings' (index.engine, index.ray_address)."""
    from app.catalog import sample_users, version_schema
    from app.state import RedisStore
    from app.state.locks import SyncLock, file_lock
    from index_store.store import IndexStore
    from index_store.threads import set_faiss_threads
    from models.manifest import list_versions

    config = index_config(settings)
    if json_progress:  # a worker's child: yield the CPU to requests, die with the worker
        lower_priority(settings.index.build_sched, settings.index.build_nice)  # before any thread
        child.watch_parent()
        config = dataclasses.replace(config, threads=settings.index.build_child_threads)
    set_faiss_threads(config.threads)
    versions = (
        [model_version]
        if model_version
        else (settings.model_versions or list_versions(Path(settings.model_store)))
    )
    if not versions:
        print(f"no model version in {settings.model_store}", file=sys.stderr)
        return 2
    store = IndexStore(Path(settings.index_store), keep=settings.index.keep_builds)
    for version in versions:
        if if_missing and store.current_build(version) is not None:
            print(f"{version}: build {store.current_build(version)} is current; nothing to do")
            continue
        schema = version_schema(settings, version)  # the names this version's data files use

        def progress(n: int, version: str = version) -> None:
            if json_progress:
                print(child.progress_line(n), flush=True)
            else:
                log.info("%s: %d items encoded", version, n)

        with contextlib.ExitStack() as stack:
            fence: Callable[[], None] | None = None
            if settings.redis_url and fence_token:
                rs = RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_prefix)
                token = fence_token

                def fence(rs: RedisStore = rs, token: str = token, version: str = version) -> None:
                    if rs.lock_holder(version) != token:
                        raise BuildRefused(
                            f"lock on {version} lost before publish: stale build not published"
                        )

            elif settings.redis_url:
                lock = stack.enter_context(SyncLock(settings, version))

                def fence(lock: SyncLock = lock, version: str = version) -> None:
                    if lock.holder() != lock.token:
                        raise BuildRefused(
                            f"lock on {version} lost before publish: stale build not published"
                        )

            else:
                # One node: the worker's build child and a `twotower reindex` run by hand take turns
                # on a file lock; the kernel drops it if its holder dies.
                def waiting(version: str = version) -> None:
                    log.info("waiting for the build lock on %s (another build of it is running)", version)

                path = Path(settings.index_store) / version / BUILD_LOCK
                stack.enter_context(file_lock(path, on_wait=waiting))

            rows, last_change = changed_catalog(settings, schema)
            encoder = None
            if (engine or settings.index.engine) == RAY:
                encoder = ray_encoder(settings, schema, ray_address or settings.index.ray_address, rows)
            published = store.build(
                Path(settings.model_store),
                version,
                rows,
                config,
                fence=fence,
                build_id=build_id,
                progress=progress,
                # sampled once the catalog is encoded, while the build writes its data files
                users=functools.partial(sample_users, settings, config.sample_queries, schema),
                allow_shrink=allow_shrink,
                extra_manifest={"changes_seq": last_change},
                encoder=encoder,
            )
        if json_progress:
            print(child.done_line(published, version), flush=True)
        else:
            print(f"{version}: build {published} is current in {settings.index_store}")
    return 0
