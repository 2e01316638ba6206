"""Two model versions side by side: each user vector is searched only in its own version's index;
aliases move, roll back, and refuse a version without a ready index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.manifest import MANIFEST, list_versions
from tests.app.conftest import make_settings
from tests.data import build_index

V2 = "99990101T000000Z"  # sorts after the demo tag: the "newer" version


@pytest.fixture
def two_versions(tmp_path: Path, model_store: Path, version: str, data_dir: Path) -> tuple[Path, Path]:
    """The demo version plus a copy re-tagged V2 (same towers, so scores must agree across them)."""
    store = tmp_path / "models"
    shutil.copytree(model_store, store)
    shutil.copytree(store / version, store / V2)
    manifest = json.loads((store / V2 / MANIFEST).read_text())
    manifest["version"] = V2
    (store / V2 / MANIFEST).write_text(json.dumps(manifest))
    assert list_versions(store) == [version, V2]
    index = tmp_path / "index"
    build_index(index, store, version, data_dir)  # only the demo version gets an index up front
    return store, index


def test_alias_move_and_rollback(
    two_versions: tuple[Path, Path], data_dir: Path, version: str, admin: dict[str, str]
) -> None:
    store, index = two_versions
    with TestClient(create_app(make_settings(store, index, data_dir))) as c:
        # first boot: default is the newest version *with a ready index*, not the newest version
        assert c.post("/recall", json={"k": 3}).json()["model_version"] == version
        versions = {v["model_version"]: v for v in c.get("/admin/versions", headers=admin).json()["versions"]}
        assert versions[V2]["state"] == "no_index" and versions[version]["state"] == "ready"
        # V2 has no index: pinning it is a 503, moving an alias to it a 409
        r = c.post("/recall", json={"k": 3, "model_version": V2})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert c.put("/admin/aliases/default", headers=admin, json={"model_version": V2}).status_code == 409
        # build V2, then move default to it
        job = c.post("/admin/reindex", headers=admin, json={"model_version": V2}).json()
        assert [j["model_version"] for j in job["jobs"]] == [V2]
        _wait_ready(c, V2)
        assert c.put("/admin/aliases/default", headers=admin, json={"model_version": V2}).status_code == 200
        moved = c.post("/recall", json={"user_id": "1", "k": 10}).json()
        assert moved["model_version"] == V2
        pinned = c.post("/recall", json={"user_id": "1", "k": 10, "model_version": version}).json()
        assert pinned["model_version"] == version and pinned["index_build"] != moved["index_build"]
        # same towers and catalog in both versions: the same items and scores, each from its own index
        assert [i["item_id"] for i in moved["items"]] == [i["item_id"] for i in pinned["items"]]
        # roll back
        back = c.put("/admin/aliases/default", headers=admin, json={"model_version": version})
        assert back.status_code == 200
        assert c.post("/recall", json={"k": 3}).json()["model_version"] == version
        assert c.get("/admin/versions", headers=admin).json()["aliases"]["default"] == version
    # the alias survives a restart
    with TestClient(create_app(make_settings(store, index, data_dir))) as c:
        assert c.post("/recall", json={"k": 3}).json()["model_version"] == version


def test_reindex_without_version_builds_every_served_version(
    two_versions: tuple[Path, Path], data_dir: Path, version: str, admin: dict[str, str]
) -> None:
    store, index = two_versions
    with TestClient(create_app(make_settings(store, index, data_dir))) as c:
        r = c.post("/admin/reindex", headers=admin)
        assert r.status_code == 202
        assert sorted(j["model_version"] for j in r.json()["jobs"]) == [version, V2]
        _wait_ready(c, V2)


def test_configured_version_list(two_versions: tuple[Path, Path], data_dir: Path, version: str) -> None:
    store, index = two_versions
    with TestClient(create_app(make_settings(store, index, data_dir, model_versions=[version]))) as c:
        assert c.post("/recall", json={"k": 3, "model_version": V2}).status_code == 404


def _wait_ready(c: TestClient, tag: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while c.post("/recall", json={"k": 1, "model_version": tag}).status_code != 200:
        assert time.monotonic() < deadline, f"{tag} never got an index"
        time.sleep(0.1)
