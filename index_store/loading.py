"""Loading a build: its manifest checked against the model and its files against their sha256,
then mapped (never copied) into a Snapshot."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import faiss
import numpy as np

from index_store.attributes import ATTRIBUTES_FILE, Attributes, from_arrays, from_bytes
from index_store.build import KINDS, kind_of
from index_store.directory import (
    CURRENT,
    DATA_FILES,
    FORMAT,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST,
    VECTORS_FILE,
    StoreDirectory,
)
from index_store.idmap import ID_TABLE_FILE, IdMap
from index_store.npzmap import map_npz
from index_store.snapshot import Snapshot
from index_store.verified import HostVerification
from models.errors import ArtifactError, IndexNotReady, ManifestError, TwoTowerError
from models.manifest import ITEM_TOWER, ModelManifest, check_tag

# The store's one log channel wherever its code lives (log filters and the tests name it).
log = logging.getLogger("index_store.store")

# Zero-copy reads (Faiss >= 1.10): the codes of flat, IVF (any inverted-list codes) and HNSW
# storage point into the mapped file; only an HNSW graph and small tables are copied.
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
REQUIRED = ("format", "model_version", "build_id", "item_count", "dim", "index", "files", "item_tower_sha256")


class BuildReader(StoreDirectory):
    """IndexStore's load path."""

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
        # A dot model's ANN index holds one extra (MIPS) coordinate per vector; see index_store.mips.
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
