"""Which names the feature store reads the data files with: the served versions' (their manifests),
the default alias's when they disagree, the default layout when there is no version."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.catalog import data_schema
from app.main import create_app
from app.state import make_store
from app.state.local import LocalStore
from models.layout import DataLayout
from models.manifest import MANIFEST, list_versions
from tests.app.conftest import make_settings
from tests.conftest import DEMO_STORE
from tests.data import build_index


def add_version(store: Path, tag: str, **layout: Any) -> None:
    """The demo version under `tag` with its manifest's data layout changed (the towers and their
    digests stay as they are: only names in the manifest differ)."""
    src = DEMO_STORE / list_versions(DEMO_STORE)[-1]
    shutil.copytree(src, store / tag)
    raw = json.loads((store / tag / MANIFEST).read_text())
    raw["version"] = tag
    raw["features"]["layout"].update(layout)
    (store / tag / MANIFEST).write_text(json.dumps(raw))


def test_no_version_means_the_default_layout(tmp_path: Path, data_dir: Path) -> None:
    settings = make_settings(tmp_path / "empty", tmp_path / "index", data_dir)
    assert data_schema(settings) is None
    store = make_store(settings)
    assert isinstance(store, LocalStore) and store.users  # users.*, user_id, history as before


def test_versions_that_agree_share_one_reading(tmp_path: Path, data_dir: Path) -> None:
    """Same files, different history keys: each user's history under both keys."""
    store = tmp_path / "models"
    add_version(store, "a")
    add_version(store, "b", history=["recent"])
    settings = make_settings(store, tmp_path / "index", data_dir)
    schema = data_schema(settings)
    assert schema is not None and schema.layout.history == ("recent", "history")  # newest first
    local = make_store(settings)
    assert isinstance(local, LocalStore)
    row = local.users["1"]
    assert row["history"] and row["recent"] == row["history"]


def test_versions_that_disagree_read_as_the_default_alias_says(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "models"
    add_version(store, "a")
    add_version(store, "b", data={"users": "people", "items": "catalogue", "interactions": "orders"})
    settings = make_settings(store, tmp_path / "index", data_dir)
    with caplog.at_level(logging.WARNING, logger="app.catalog"):
        chosen = data_schema(settings, {"default": "a"})
    assert chosen is not None and chosen.layout.users == "users"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "disagree" in warning and "version a" in warning and "b (users 'people'" in warning
    # No alias yet: the newest version, the one the service makes the default.
    fallback = data_schema(settings, {})
    assert fallback is not None and fallback.layout.users == "people"
    # The in-process store reads what the alias record names.
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "aliases.json").write_text(json.dumps({"default": "a"}))
    local = make_store(settings)
    assert isinstance(local, LocalStore) and "1" in local.users


def test_a_version_added_later_gets_its_history_key(
    tmp_path: Path, model_store: Path, version: str, data_dir: Path
) -> None:
    """A version copied in while the service runs that reads the history under another key
    ("recent"): the in-process store, which read the files before it existed, puts each user's
    history under that key too, so the stored user gets the same answer from both versions."""
    store, index = tmp_path / "models", tmp_path / "index"
    shutil.copytree(model_store, store)
    build_index(index, store, version, data_dir)
    settings = make_settings(store, index, data_dir, model_poll_s=0.1)
    with TestClient(create_app(settings)) as c:
        before = c.post("/recall", json={"user_id": "1", "k": 10}).json()
        tmp = tmp_path / "copy"
        shutil.copytree(store / version, tmp)
        raw = json.loads((tmp / MANIFEST).read_text())
        raw["version"] = "recent-1"
        raw["features"]["layout"]["history"] = ["recent"]
        for f in raw["features"]["user"]["fields"]:
            if f.get("from_interactions"):
                f["source"] = "recent"
        (tmp / MANIFEST).write_text(json.dumps(raw))
        tmp.rename(store / "recent-1")
        deadline = time.monotonic() + 60
        while (
            r := c.post("/recall", json={"user_id": "1", "k": 10, "model_version": "recent-1"})
        ).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.1)
    assert r.json()["cold_start"] is False
    assert [i["item_id"] for i in r.json()["items"]] == [i["item_id"] for i in before["items"]]


def test_a_version_added_later_reading_other_files_is_named(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "models"
    add_version(store, "a")
    local = make_store(make_settings(store, tmp_path / "index", data_dir))
    assert isinstance(local, LocalStore)
    with caplog.at_level(logging.WARNING, logger="app.state.local"):
        local.version_added("b", DataLayout(users="people", user_id="customer"))
    assert "model version b reads the data files otherwise (users 'people' by 'customer'" in caplog.text
    assert "recent" not in local.users["1"]
