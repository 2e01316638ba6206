"""The model store: round trip, missing fields, immutable tags, nothing left behind on failure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from models.errors import ArtifactError, ManifestError, VersionExists
from models.manifest import (
    ITEM_TOWER,
    MANIFEST,
    USER_TOWER,
    ModelManifest,
    list_versions,
    load_version,
    write_version,
)
from models.schema import load_schema

SCHEMA = load_schema(Path(__file__).resolve().parents[2] / "examples" / "movielens" / "schema.toml").resolve(
    {"user_id": ["1"], "item_id": ["10"], "gender": ["F"], "occupation": ["x"], "genre": ["Drama"]}
)


def _files(tmp: Path) -> None:
    (tmp / USER_TOWER).write_bytes(b"user")
    (tmp / ITEM_TOWER).write_bytes(b"item")


def _manifest(version: str) -> object:
    def make(digests: Mapping[str, str]) -> ModelManifest:
        return ModelManifest(
            version=version, dim=8, similarity="cosine", features=SCHEMA, files=digests, metrics={"r": 1.0}
        )

    return make


def test_round_trip(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    m = load_version(tmp_path, "v1")
    assert (m.version, m.dim, m.similarity, dict(m.metrics)) == ("v1", 8, "cosine", {"r": 1.0})
    assert m.features == SCHEMA
    assert set(m.files) == {USER_TOWER, ITEM_TOWER}
    assert list_versions(tmp_path) == ["v1"]


def test_missing_field_is_named(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    path = tmp_path / "v1" / MANIFEST
    raw = json.loads(path.read_text())
    del raw["dim"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="missing field.*dim"):
        load_version(tmp_path, "v1")


def test_tampered_file_fails_checksum(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    (tmp_path / "v1" / ITEM_TOWER).write_bytes(b"other")
    with pytest.raises(ArtifactError, match="sha256"):
        load_version(tmp_path, "v1")


def test_existing_version_is_refused(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    with pytest.raises(VersionExists):
        write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]


def test_nothing_left_on_failure(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / USER_TOWER).write_bytes(b"half")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError):
        write_version(tmp_path, "v2", broken, _manifest("v2"))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    assert list_versions(tmp_path) == []


def test_format_1_manifests_are_still_read_and_others_refused(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    path = tmp_path / "v1" / MANIFEST
    raw = json.loads(path.read_text())
    assert raw["format"] == 2 and raw["features"]["layout"]["history"] == ["history"]
    # what a format-1 manifest held: no layout, no filterable / from_interactions flags
    del raw["features"]["layout"]
    for tower in ("user", "item"):
        for f in raw["features"][tower]["fields"]:
            f.pop("filterable", None)
            f.pop("from_interactions", None)
    path.write_text(json.dumps({**raw, "format": 1}))
    old = load_version(tmp_path, "v1")
    assert [f.name for f in old.features.user.fields] == [f.name for f in SCHEMA.user.fields]
    assert old.features.layout == SCHEMA.layout  # the defaults: what format 1 meant
    path.write_text(json.dumps({**raw, "format": 3}))
    with pytest.raises(ManifestError, match="unsupported format 3"):
        load_version(tmp_path, "v1")


def test_a_killed_writers_tmp_dir_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A train or import killed mid-way leaves `.<tag>.*`: the next write removes it once it is
    an hour old, and leaves a fresh one (a writer still at work) alone."""
    import os
    import time

    dead = tmp_path / ".v0.abc123"
    dead.mkdir()
    (dead / USER_TOWER).write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(dead, (old, old))
    live = tmp_path / ".v9.def456"
    live.mkdir()
    write_version(tmp_path, "v1", _files, _manifest("v1"))  # type: ignore[arg-type]
    assert not dead.exists() and live.exists()
    assert list_versions(tmp_path) == ["v1"]
