"""The index store: `<root>/<model_version>/<build_id>/` builds, a CURRENT pointer, verification, retention.

    <root>/<version>/CURRENT                {"build_id": ..., "manifest_sha256": ...}, replaced atomically
    <root>/<version>/<build_id>/index.faiss  faiss.write_index
                                ids.npy      item ids (unicode, no pickle); row i of the index = ids[i]
                                vectors.npy  float32 [N, dim], the stored vector of every item (for /score)
                                id_table.npy int64, a hash table id -> row (the id map: index_store.idmap)
                                attributes.npz  the filterable fields' columns (index_store.attributes)
                                manifest.json
    <root>/<version>/.tmp-<build_id>.<pid>/  a build being written by process <pid>; removed by a
                                            later build once that process is gone
    <root>/<version>/.publish.lock          flock: fence + CURRENT compare-and-set, prune

A build writes a temporary directory, fsyncs it, renames it into place, then, under the publish
lock, checks `fence()` and that CURRENT is still older than itself, and replaces CURRENT. A crash at
any point leaves the previous CURRENT intact.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort

from index_store.attributes import (
    ATTRIBUTES_FILE,
    AttributeCollector,
    Attributes,
    from_arrays,
    from_bytes,
    to_bytes,
)
from index_store.build import KINDS, BuiltIndex, IndexConfig, build_index, kind_of
from index_store.encode import CatalogEncoder, EncodedCatalog, encode_catalog
from index_store.hashed import Written, save_npy, write_bytes, write_index
from index_store.heap import trim_heap
from index_store.idmap import ID_TABLE_FILE, IdMap, build_table
from index_store.locking import file_lock, pid_alive
from index_store.npzmap import map_npz
from index_store.snapshot import Snapshot
from index_store.verified import HostVerification
from models.errors import ArtifactError, BuildRefused, IndexNotReady, ManifestError, TwoTowerError
from models.manifest import ITEM_TOWER, ModelManifest, check_tag, fsync_dir, load_version
from models.runtime import TowerRunner

log = logging.getLogger(__name__)

FORMAT = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-"
PUBLISH_LOCK = ".publish.lock"
DATA_FILES = (INDEX_FILE, IDS_FILE, VECTORS_FILE)
# Zero-copy reads (Faiss >= 1.10): the codes of flat, IVF (any inverted-list codes) and HNSW
# storage point into the mapped file; only an HNSW graph and small tables are copied.
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
REQUIRED = ("format", "model_version", "build_id", "item_count", "dim", "index", "files", "item_tower_sha256")


def new_build_id() -> str:
    """Sortable UTC timestamp (milliseconds) plus a random suffix, e.g. 20261126T101500.123Z-9f3a1c."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


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


class IndexStore:
    """Builds, persists, verifies and loads index builds under one root directory.

    store = IndexStore(Path("var/index"))
    build_id = store.build(model_store, "20261122T101500Z", catalog_rows, IndexConfig())
    snapshot = store.load("20261122T101500Z", model_manifest)
    """

    def __init__(self, root: Path, keep: int = 3, verify_margin_s: float = 1.0) -> None:
        """`keep` is the default of `prune()`; a build prunes with its config's `keep_builds`.
        `verify_margin_s`: a file changed less than this before a load hashed it is hashed again
        by the next load on this host (see index_store.verified)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.verify_margin_s = verify_margin_s

    # -- reading ---------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Model versions with an index directory."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def builds(self, version: str) -> list[str]:
        """Complete builds of `version`, oldest first (build ids sort by time)."""
        vdir = self.root / check_tag(version)
        if not vdir.is_dir():
            return []
        return sorted(
            p.name
            for p in vdir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        )

    def current_build(self, version: str) -> str | None:
        """The build CURRENT points to, or None before the first build."""
        pointer = self._pointer(version)
        return None if pointer is None else str(pointer["build_id"])

    def _pointer(self, version: str) -> dict[str, Any] | None:
        path = self.root / check_tag(version) / CURRENT
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("build_id"), str):
            raise ManifestError(f"{path}: no build_id")
        check_tag(raw["build_id"])
        return raw

    def load(
        self,
        version: str,
        model_manifest: ModelManifest,
        build_id: str | None = None,
        threads: int = 1,
    ) -> Snapshot:
        """Load and verify one build (default: the current one) of `version` into a Snapshot.

        Refuses (ArtifactError / ManifestError, logged with the file and the reason) a build whose
        files fail their sha256, whose dim, model version or item tower differ from `model_manifest`,
        or whose item count does not add up.
        """
        try:
            return self._load(version, model_manifest, build_id, threads)
        except TwoTowerError as exc:
            log.error("refused index build of %s: %s", version, exc)
            raise

    def _load(self, version: str, model: ModelManifest, build_id: str | None, threads: int) -> Snapshot:
        started = time.monotonic()
        expected_manifest_sha: str | None = None
        if build_id is None:
            pointer = self._pointer(version)
            if pointer is None:
                raise IndexNotReady(version)
            build_id = str(pointer["build_id"])
            expected_manifest_sha = pointer.get("manifest_sha256")
        else:
            # Loaded by id (as the service does): the current build is still checked against CURRENT.
            try:
                pointer = self._pointer(version)
            except TwoTowerError:
                pointer = None
            if pointer is not None and pointer["build_id"] == build_id:
                expected_manifest_sha = pointer.get("manifest_sha256")
        bdir = self.root / check_tag(version) / check_tag(build_id)
        if not bdir.is_dir():
            raise ArtifactError(f"{bdir}: missing")
        mpath = bdir / MANIFEST
        raw_manifest = _read(mpath)
        if expected_manifest_sha and hashlib.sha256(raw_manifest).hexdigest() != expected_manifest_sha:
            raise ArtifactError(f"{mpath}: sha256 does not match the one recorded in {CURRENT}")
        manifest = _parse_manifest(raw_manifest, mpath)
        _check_against_model(manifest, model, version, build_id, mpath)
        # Each file is checked (size, sha256) then mapped, never copied: the pages are the page
        # cache's, shared by every process that serves this build (docs/INDEX.md, Memory maps).
        # Build files are never written after their directory is renamed into place. The hash runs
        # once per build per host: index_store.verified says when a file's unchanged stat stands in.
        names = [*DATA_FILES, *(f for f in (ID_TABLE_FILE, ATTRIBUTES_FILE) if f in manifest["files"])]
        manifest_sha = hashlib.sha256(raw_manifest).hexdigest()
        with HostVerification.held(bdir, manifest_sha, self.verify_margin_s) as host:
            for name in names:
                digest = manifest["files"].get(name)
                if not isinstance(digest, str):
                    raise ManifestError(f"{mpath}: no sha256 for {name}")
                host.verify(bdir / name, digest, functools.partial(_verify, bdir / name, manifest))
        log.debug(
            "index build %s/%s: hashed %s (others verified on this host)", version, build_id, host.hashed
        )
        try:
            index = faiss.read_index(str(bdir / INDEX_FILE), MMAP_FLAGS)
        except RuntimeError as exc:
            raise ArtifactError(f"{bdir / INDEX_FILE}: not a Faiss index ({exc})") from exc
        ids = _map_npy(bdir / IDS_FILE)
        vectors = _map_npy(bdir / VECTORS_FILE)
        n, dim = int(manifest["item_count"]), int(manifest["dim"])
        attributes = None
        if isinstance(manifest.get("attributes"), dict):  # builds from before filters have none
            attributes = _load_attributes(bdir / ATTRIBUTES_FILE, manifest, n)
        if ids.dtype.kind != "U" or ids.shape != (n,):
            raise ArtifactError(f"{bdir / IDS_FILE}: expected {n} string ids, got {ids.dtype} {ids.shape}")
        if vectors.dtype != np.float32 or vectors.shape != (n, dim):
            raise ArtifactError(
                f"{bdir / VECTORS_FILE}: expected float32 {(n, dim)}, got {vectors.dtype} {vectors.shape}"
            )
        # A dot model's ANN index holds one extra (MIPS) coordinate per vector; see index_store.build.
        index_dim = dim + (1 if manifest["index"].get("params", {}).get("mips_max_norm") is not None else 0)
        if index.ntotal != n or index.d != index_dim:
            raise ArtifactError(
                f"{bdir / INDEX_FILE}: holds {index.ntotal} x {index.d}, manifest says {n} x {index_dim}"
            )
        kind = kind_of(index)
        if kind != manifest["index"].get("kind"):
            raise ArtifactError(
                f"{bdir / INDEX_FILE}: is {kind}, manifest says {manifest['index'].get('kind')}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ArtifactError(f"{bdir / INDEX_FILE}: metric is not inner product")
        row_of = self._id_map(bdir, manifest, ids)
        snapshot = Snapshot(
            model_version=version,
            build_id=build_id,
            index=index,
            ids=ids,
            row_of=row_of,
            vectors=vectors,
            manifest=MappingProxyType(manifest),
            search_params=MappingProxyType(dict(manifest["index"].get("search_params", {}))),
            kind=kind,
            threads=threads,
            attributes=attributes,
        )
        log.info(
            "loaded index build %s/%s: %d items, %s %s, in %.2fs",
            version,
            build_id,
            n,
            kind,
            dict(snapshot.search_params),
            time.monotonic() - started,
        )
        return snapshot

    @staticmethod
    def _id_map(bdir: Path, manifest: Mapping[str, Any], ids: np.ndarray) -> IdMap:
        """The build's id map: its `id_table.npy` mapped; a build written before that file existed
        gets the table built in memory (vectorised, once per load, no dict) and its ids checked for
        duplicates here, as the build checked them when it wrote the file."""
        if ID_TABLE_FILE not in manifest["files"]:
            row_of = IdMap.from_ids(ids)
            if row_of.has_duplicates():
                raise ArtifactError(f"{bdir / IDS_FILE}: duplicate item ids")
            return row_of
        table = _map_npy(bdir / ID_TABLE_FILE)  # verified with the data files
        try:
            return IdMap(ids, table)
        except ValueError as exc:
            raise ArtifactError(f"{bdir / ID_TABLE_FILE}: {exc}") from exc

    # -- writing ---------------------------------------------------------------------------------

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

    def prune(self, version: str, keep: int | None = None) -> list[str]:
        """Delete builds beyond the newest `keep` (default: the store's), never the current one.

        Returns the build ids removed.
        """
        n = self.keep if keep is None else keep
        if n < 1:
            raise ValueError(f"keep must be >= 1, got {n}")
        with file_lock(self.root / check_tag(version) / PUBLISH_LOCK):
            return self._prune_locked(version, n)

    def _prune_locked(self, version: str, n: int) -> list[str]:
        # List first, then read CURRENT: a build published in between is either listed (and
        # CURRENT read after names it) or not listed (and so not removed). Under the publish lock
        # nothing is published in between anyway.
        builds = self.builds(version)
        current = self.current_build(version)
        keep_ids = set(builds[-n:]) | ({current} if current else set())
        removed = [b for b in builds if b not in keep_ids]
        for b in removed:
            shutil.rmtree(self.root / version / b, ignore_errors=True)
            log.info("pruned index build %s/%s", version, b)
        return removed

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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing") from exc


def _load_attributes(path: Path, manifest: Mapping[str, Any], n: int) -> Attributes:
    """The filter columns, verified with the other build files, mapped (index_store/npzmap.py) so
    that serving processes share them; an archive that cannot be mapped is read (and hashed) instead."""
    if path.name not in manifest["files"]:  # then it was not among the files verified above
        raise ManifestError(f"{path.parent / MANIFEST}: no sha256 for {path.name}")
    try:
        arrays = map_npz(path)
    except (ValueError, OSError, zipfile.BadZipFile):
        return from_bytes(_read_verified(path, manifest), manifest["attributes"], n, str(path))
    return from_arrays(arrays, manifest["attributes"], n, str(path))


def _read_verified(path: Path, manifest: Mapping[str, Any]) -> bytes:
    """The file's bytes once size and sha256 match the manifest: the bytes checked are the bytes used."""
    digest = manifest["files"].get(path.name)
    if digest is None:
        raise ManifestError(f"{path.parent / MANIFEST}: no sha256 for {path.name}")
    data = _read(path)
    size = manifest.get("sizes", {}).get(path.name)
    if size is not None and len(data) != size:
        raise ArtifactError(f"{path}: truncated or extended ({len(data)} bytes, manifest says {size})")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match manifest {digest[:12]}…")
    return data


def _verify(path: Path, manifest: Mapping[str, Any]) -> None:
    """Size and sha256 against the manifest, read in chunks (hashlib releases the GIL on each), so
    that the file can then be mapped instead of held in memory."""
    digest = manifest["files"].get(path.name)
    if digest is None:
        raise ManifestError(f"{path.parent / MANIFEST}: no sha256 for {path.name}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            expected = manifest.get("sizes", {}).get(path.name)
            if expected is not None and size != expected:
                raise ArtifactError(f"{path}: truncated or extended ({size} bytes, manifest says {expected})")
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing") from exc
    if actual != digest:
        raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match manifest {digest[:12]}…")


def _map_npy(path: Path) -> np.ndarray:
    """A read-only memory map of a verified .npy file (no pickle)."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable .npy file ({exc})") from exc
    # A plain ndarray view of the map (it keeps the map alive): np.memmap's subclass hooks cost
    # on every indexing call of the request path.
    array: np.ndarray = np.asarray(mapped)
    return array


def _parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    if raw["format"] != FORMAT:
        raise ManifestError(f"{path}: unsupported format {raw['format']!r}")
    if not isinstance(raw["index"], dict) or raw["index"].get("kind") not in KINDS:
        raise ManifestError(f"{path}: index.kind must be one of {KINDS}")
    for key in ("item_count", "dim"):
        if not isinstance(raw[key], int) or raw[key] < 1:
            raise ManifestError(f"{path}: {key} must be a positive integer, got {raw[key]!r}")
    return raw


def _check_against_model(
    manifest: Mapping[str, Any], model: ModelManifest, version: str, build_id: str, path: Path
) -> None:
    if manifest["model_version"] != version or model.version != version:
        raise ManifestError(
            f"{path}: built for model version {manifest['model_version']!r}, "
            f"loading as {version!r} with model manifest {model.version!r}"
        )
    if manifest["build_id"] != build_id:
        raise ManifestError(
            f"{path}: build_id {manifest['build_id']!r} does not match directory {build_id!r}"
        )
    if manifest["dim"] != model.dim:
        raise ManifestError(
            f"{path}: dim {manifest['dim']} does not match model {model.version} dim {model.dim}"
        )
    if manifest["item_tower_sha256"] != model.files.get(ITEM_TOWER):
        raise ManifestError(f"{path}: built with a different item tower than model {model.version}'s")
