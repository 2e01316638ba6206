"""The model store format: `<store>/<version>/{user_tower.onnx, item_tower.onnx, manifest.json}`.

A version is immutable: it is written to a temporary sibling directory, fsynced and renamed into
place, and writing over an existing tag is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.errors import ArtifactError, ManifestError, VersionExists
from models.features import FeatureSchema

MANIFEST = "manifest.json"
USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
FORMAT = 2  # 2: the resolved schema of any schema file (numeric, vector, defaults, filterable, layout)
READABLE_FORMATS = (1, 2)  # 1: the MovieLens-only schema, a subset of 2
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REQUIRED = ("format", "version", "dim", "similarity", "features", "files")


def new_version_tag() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise ManifestError(f"invalid version tag {tag!r}: use letters, digits, '.', '_' or '-'")
    return tag


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ModelManifest:
    version: str
    dim: int
    similarity: str
    features: FeatureSchema
    files: Mapping[str, str]  # file name -> sha256
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)  # tower -> [{name, dtype, shape}]
    created_at: str = ""
    source: str = "train"  # "train" (twotower train) or "import" (twotower import)
    outputs: Mapping[str, str] = field(default_factory=lambda: {"user": "embedding", "item": "embedding"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "dim": self.dim,
            "similarity": self.similarity,
            "source": self.source,
            "files": dict(self.files),
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "features": self.features.to_dict(),
            "metrics": dict(self.metrics),
            "training": dict(self.training),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = MANIFEST) -> ModelManifest:
        missing = [k for k in REQUIRED if k not in raw]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
        if raw["format"] not in READABLE_FORMATS:
            raise ManifestError(f"{where}: unsupported format {raw['format']!r}")
        if not isinstance(raw["dim"], int) or raw["dim"] <= 0:
            raise ManifestError(f"{where}: dim must be a positive integer, got {raw['dim']!r}")
        if raw["similarity"] not in ("cosine", "dot"):
            raise ManifestError(f"{where}: unknown similarity {raw['similarity']!r}")
        try:
            schema = FeatureSchema.from_dict(raw["features"])
        except Exception as exc:  # a schema error is a manifest error for the caller
            raise ManifestError(f"{where}: features: {exc}") from exc
        return cls(
            version=check_tag(str(raw["version"])),
            dim=raw["dim"],
            similarity=raw["similarity"],
            features=schema,
            files=dict(raw["files"]),
            metrics=raw.get("metrics", {}),
            training=raw.get("training", {}),
            inputs=raw.get("inputs", {}),
            created_at=str(raw.get("created_at", "")),
            source=str(raw.get("source", "train")),
            outputs=dict(raw.get("outputs") or {"user": "embedding", "item": "embedding"}),
        )


def read_manifest(version_dir: Path) -> ModelManifest:
    path = version_dir / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    manifest = ModelManifest.from_dict(raw, where=str(path))
    if manifest.version != version_dir.name:
        raise ManifestError(
            f"{path}: version {manifest.version!r} does not match directory {version_dir.name!r}"
        )
    return manifest


def verify_files(version_dir: Path, manifest: ModelManifest) -> None:
    """Every file the manifest lists exists and matches its sha256."""
    for name in (USER_TOWER, ITEM_TOWER):
        if name not in manifest.files:
            raise ManifestError(f"{version_dir / MANIFEST}: no sha256 for {name}")
    for name, digest in manifest.files.items():
        path = version_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        actual = sha256_file(path)
        if actual != digest:
            raise ArtifactError(f"{path}: sha256 {actual[:12]}… does not match manifest {digest[:12]}…")


def load_version(store: Path, version: str) -> ModelManifest:
    """Read and verify one version of the model store."""
    version_dir = Path(store) / check_tag(version)
    manifest = read_manifest(version_dir)
    verify_files(version_dir, manifest)
    return manifest


def list_versions(store: Path) -> list[str]:
    """Version tags present in the store (complete ones only: temp dirs start with '.'), sorted."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(
        p.name
        for p in store.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
    )


STALE_TMP_S = 3600.0


def remove_stale_tmp(store: Path, max_age_s: float = STALE_TMP_S) -> list[str]:
    """Remove the temporary directories of writers killed mid-way (train, import): hidden
    `.<tag>.*` siblings untouched for `max_age_s`. A live writer finishes in seconds to minutes
    (export and import write at the very end), so an hour-old one is dead; returns what went."""
    removed: list[str] = []
    cutoff = time.time() - max_age_s
    for p in Path(store).iterdir():
        if p.name.startswith(".") and p.is_dir():
            try:
                if p.stat().st_mtime < cutoff:
                    shutil.rmtree(p)
                    removed.append(p.name)
            except OSError:  # gone already, or not ours to remove: never fail a write for it
                continue
    return removed


def write_version(
    store: Path,
    version: str,
    write_files: Callable[[Path], None],
    make_manifest: Callable[[Mapping[str, str]], ModelManifest],
) -> Path:
    """Write a new immutable version atomically.

    `write_files(tmp_dir)` puts the tower files in place; `make_manifest(sha256s)` returns the
    manifest given their digests. On any failure nothing is left in the store.
    """
    store = Path(store)
    check_tag(version)
    final = store / version
    if final.exists():
        raise VersionExists(f"model version {version!r} already exists in {store}; versions are immutable")
    store.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(store)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=store))
    try:
        write_files(tmp)
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = make_manifest(digests)
        if manifest.version != version:
            raise ManifestError(f"manifest version {manifest.version!r} != {version!r}")
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # lost a race with another writer of the same tag
            raise VersionExists(f"model version {version!r} already exists in {store}")
        os.rename(tmp, final)
        fsync_dir(store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
