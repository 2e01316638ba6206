"""Building and publishing: a catalog encoded, indexed and written into a new build, then made current.

A build writes a temporary directory, fsyncs it, renames it into place, then, under the publish
lock, checks `fence()` and that CURRENT is still older than itself, and replaces CURRENT. A crash at
any point leaves the previous CURRENT intact.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort

from index_store.attributes import ATTRIBUTES_FILE, AttributeCollector, Attributes, to_bytes
from index_store.build import BuiltIndex, IndexConfig, build_index
from index_store.directory import (
    CURRENT,
    DATA_FILES,
    FORMAT,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST,
    PUBLISH_LOCK,
    TMP_PREFIX,
    VECTORS_FILE,
    StoreDirectory,
    new_build_id,
)
from index_store.encode import CatalogEncoder, EncodedCatalog, encode_catalog
from index_store.hashed import Written, save_npy, write_bytes, write_index
from index_store.heap import trim_heap
from index_store.idmap import ID_TABLE_FILE, build_table
from index_store.locking import file_lock, pid_alive
from models.errors import BuildRefused, TwoTowerError
from models.manifest import ITEM_TOWER, ModelManifest, check_tag, fsync_dir, load_version
from models.runtime import TowerRunner

# The store's one log channel wherever its code lives (log filters and the tests name it).
log = logging.getLogger("index_store.store")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a small file via tmp + fsync + os.replace, then fsync the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


class BuildPublisher(StoreDirectory):
    """IndexStore's build path: encode, index, write, publish."""

    def build(
        self,
        model_store: Path,
        model_version: str,
        catalog: Iterable[Mapping[str, Any]],
        config: IndexConfig,
        fence: Callable[[], None] | None = None,
        build_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        users: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]] = (),
        allow_shrink: bool = False,
        extra_manifest: Mapping[str, Any] | None = None,
        encoder: CatalogEncoder | None = None,
    ) -> str:
        """Encode `catalog` with the version's item tower, index, verify recall, persist, publish.

        `users` (or a function returning them, called once the catalog is encoded, while the data
        files are being written: a sample read from files takes ~1 s of Python at 10k users) are
        the recall check's queries, through the version's user tower.

        `encoder` replaces the in-process encoding of `catalog` (which is then unused): it gets the
        loaded item tower and returns ids, vectors and attributes (the Ray engine, index_store.encode_ray).

        The caller holds the per-version build lock. `.tmp-*` directories whose writer process is
        gone are removed as leftovers of crashed builds. `fence()` is called under the publish lock
        right before CURRENT is replaced and must raise if this worker lost the lock; the new build
        is then deleted, never published. A catalog smaller than `config.max_shrink` times the
        current build's is refused unless `allow_shrink`. `extra_manifest` is
        recorded in the manifest as is (e.g. the last catalog change the catalog holds).
        """
        started = time.monotonic()
        build_id = check_tag(build_id or new_build_id())
        model = load_version(Path(model_store), model_version)
        vdir = self.root / check_tag(model_version)
        vdir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp(vdir)
        if (vdir / build_id).exists():
            raise BuildRefused(f"{vdir / build_id}: build id already exists")
        log.info("index build %s/%s: encoding the catalog", model_version, build_id)

        runner = TowerRunner(Path(model_store) / model_version, model, "item", intra_threads=config.threads)
        runner.load()
        t = time.monotonic()
        if encoder is not None:
            encoded = encoder(runner, progress)
        else:
            collector = AttributeCollector(model.features.item)
            encoded = EncodedCatalog(
                *encode_catalog(
                    runner, catalog, batch_size=config.batch_size, progress=progress, collector=collector
                ),
                collector.finish(),
                "local",
            )
        id_list, vectors, attributes = encoded.ids, encoded.vectors, encoded.attributes
        engine = encoded.engine
        del encoded
        encode_s = time.monotonic() - t
        _check_unique(id_list)
        # One unicode array from here on (what ids.npy holds): 10M ids as Python strings are ~0.7
        # GB, the array ~0.5 GB, and the list is not kept beside it through the kind search.
        ids = np.array(id_list, dtype=str)
        del id_list
        if not allow_shrink:
            self._check_shrink(vdir, len(ids), config.max_shrink)

        tmp, final = vdir / f"{TMP_PREFIX}{build_id}.{os.getpid()}", vdir / build_id
        tmp.mkdir()
        try:
            # The files that do not depend on the index (vectors, ids, id table, attributes: ~1 s
            # of CPU at 1M items, mostly in numpy, hashlib and writes, which release the GIL) are
            # written on a thread while the users are sampled (Python: one core), and the index
            # waits for them: Faiss's train and add run OpenMP loops on every core, and a thread
            # of ours beside them makes each loop wait for its descheduled thread.
            stop = threading.Event()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="build-write") as pool:
                data_files = pool.submit(_write_data_files, tmp, ids, vectors, attributes, stop)
                try:
                    t = time.monotonic()
                    queries = self._user_queries(model_store, model, users, config)
                    waited = time.monotonic()
                    written, data_files_s = data_files.result()
                    waited_s = time.monotonic() - waited
                    built = build_index(vectors, config, queries)
                    index_s = time.monotonic() - t
                except BaseException:
                    stop.set()  # the writer stops at its next file; the directory is removed below
                    raise
            t = time.monotonic()
            extra_manifest = {"encode_engine": engine, **(extra_manifest or {})}
            timings = {
                "encode_s": encode_s,
                "encode_items_per_s": len(ids) / max(encode_s, 1e-9),
                "index_s": index_s,
                **built.timings,
                "data_files_s": data_files_s,  # on the writer thread, while the users were sampled
                "data_files_wait_s": waited_s,  # what the index waited for them (within index_s)
            }
            manifest = self._write_build(
                tmp,
                model,
                build_id,
                len(ids),
                vectors,
                attributes,
                written,
                built,
                config,
                timings,
                started,
                t,
                extra_manifest or {},
            )
            os.rename(tmp, final)
            fsync_dir(vdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with file_lock(vdir / PUBLISH_LOCK):
            try:
                if fence is not None:
                    fence()
                try:
                    current = self.current_build(model_version)
                except TwoTowerError as exc:  # an unreadable CURRENT is replaced, not obeyed
                    log.warning("index build %s/%s: replacing CURRENT: %s", model_version, build_id, exc)
                    current = None
                if current is not None and current >= build_id:
                    raise BuildRefused(
                        f"build {current} of {model_version} was published after this one started: "
                        f"{build_id} is not made current"
                    )
            except BaseException:
                log.warning("index build %s/%s: publish refused; deleting it", model_version, build_id)
                shutil.rmtree(final, ignore_errors=True)
                raise
            pointer = {"build_id": build_id, "manifest_sha256": manifest}
            _write_atomic(vdir / CURRENT, (json.dumps(pointer, sort_keys=True) + "\n").encode())
            self._prune_locked(model_version, config.keep_builds)
        log.info(
            "index build %s/%s published: %d items, %s, %.1fs",
            model_version,
            build_id,
            len(ids),
            built.factory,
            time.monotonic() - started,
        )
        return build_id

    def _check_shrink(self, vdir: Path, items: int, max_shrink: float) -> None:
        """Refuse a catalog that shrank below `max_shrink` of the current build's (a half-done load)."""
        try:
            current = self.current_build(vdir.name)
        except TwoTowerError:
            return  # an unreadable current build is no yardstick
        if current is None or max_shrink <= 0:
            return
        try:
            previous = int(json.loads((vdir / current / MANIFEST).read_text())["item_count"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable current build is no yardstick
        if items < max_shrink * previous:
            raise BuildRefused(
                f"catalog shrank from {previous} items (build {current}) to {items}, below "
                f"index.max_shrink={max_shrink:g} of it: refused; if intended, reindex with "
                '--allow-shrink (admin: {"allow_shrink": true})'
            )

    def _write_build(
        self,
        tmp: Path,
        model: ModelManifest,
        build_id: str,
        item_count: int,
        vectors: np.ndarray,
        attributes: Attributes,
        written: Mapping[str, Written],
        built: BuiltIndex,
        config: IndexConfig,
        timings: dict[str, float],
        started: float,
        write_started: float,
        extra: Mapping[str, Any],
    ) -> str:
        """Write the index and the manifest into `tmp` beside the `written` data files (each
        fsynced, hashed as written), fsync the directory; returns the manifest's sha256."""
        written = {**written, INDEX_FILE: write_index(tmp / INDEX_FILE, built.index)}
        names = (*DATA_FILES, ID_TABLE_FILE, ATTRIBUTES_FILE)
        files = {name: written[name].sha256 for name in names}
        sizes = {name: written[name].size for name in names}
        timings["write_s"] = time.monotonic() - write_started
        timings["total_s"] = time.monotonic() - started
        manifest = {
            "format": FORMAT,
            "model_version": model.version,
            "build_id": build_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "item_count": item_count,
            "dim": int(vectors.shape[1]),
            "similarity": model.similarity,
            "metric": "inner_product",
            "item_tower_sha256": model.files[ITEM_TOWER],
            "index": {
                "kind": built.kind,
                "factory": built.factory,
                "params": dict(built.params),
                "search_params": dict(built.search_params),
            },
            "recall": dict(built.recall) if built.recall is not None else None,
            "attributes": attributes.describe(),
            "files": files,
            "sizes": sizes,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "config": config.to_dict(),
            "versions": {"faiss": faiss.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
            **extra,
        }
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        with open(tmp / MANIFEST, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        return hashlib.sha256(data).hexdigest()

    @staticmethod
    def _user_queries(
        model_store: Path,
        model: ModelManifest,
        users: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
        config: IndexConfig,
    ) -> np.ndarray | None:
        """Up to `sample_queries` users through the version's user tower: the recall check's queries."""
        sample = list(itertools.islice(users() if callable(users) else users, config.sample_queries))
        if not sample:
            return None
        runner = TowerRunner(Path(model_store) / model.version, model, "user", intra_threads=config.threads)
        return runner.load().embed(sample)

    @staticmethod
    def _remove_stale_tmp(vdir: Path) -> None:
        """Remove `.tmp-<build_id>.<pid>` directories whose writer is not a live process here.

        A live writer is left alone even if it lost its lock: it is fenced at publish. (A writer
        on another host cannot be checked; its pid is most likely not alive here, and such a
        build lost its lock to us.)"""
        for p in vdir.iterdir():
            if not (p.name.startswith(TMP_PREFIX) and p.is_dir()):
                continue
            pid = p.name.rsplit(".", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                log.info("keeping %s: its builder (pid %s) is still running", p, pid)
                continue
            log.warning("removing %s: left by an interrupted build", p)
            shutil.rmtree(p, ignore_errors=True)


def _write_data_files(
    tmp: Path, ids: np.ndarray, vectors: np.ndarray, attributes: Attributes, stop: threading.Event
) -> tuple[dict[str, Written], float]:
    """The build's files that do not depend on its index, each hashed as written and fsynced;
    returns them and the seconds taken. `stop` set: return early (the build failed: its directory
    is removed). Every array is only read here; the index build reads `vectors` meanwhile."""
    started = time.monotonic()
    out: dict[str, Written] = {}
    steps: list[tuple[str, Callable[[], Written]]] = [
        (VECTORS_FILE, lambda: save_npy(tmp / VECTORS_FILE, vectors)),
        (IDS_FILE, lambda: save_npy(tmp / IDS_FILE, ids)),  # the unicode array ids.npy holds
        (ID_TABLE_FILE, lambda: save_npy(tmp / ID_TABLE_FILE, build_table(ids))),
        (ATTRIBUTES_FILE, lambda: write_bytes(tmp / ATTRIBUTES_FILE, to_bytes(attributes))),
    ]
    try:
        for name, write in steps:
            if stop.is_set():
                break
            out[name] = write()
    finally:
        trim_heap()  # the writer thread's arena kept its temporaries resident
    return out, time.monotonic() - started


def _check_unique(ids: list[str]) -> None:
    if len(set(ids)) == len(ids):  # one C-level pass; the loop below only names the first repeat
        return
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise BuildRefused(f"item id {item!r} appears more than once in the catalog")
        seen.add(item)
