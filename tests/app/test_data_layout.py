"""Which names the feature store reads the data files with: the served versions' (their manifests),
the default alias's when they disagree, the default layout when there is no version."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.catalog import data_schema
from app.state import make_store
from app.state.local import LocalStore
from models.manifest import MANIFEST, list_versions
from tests.app.conftest import make_settings
from tests.conftest import DEMO_STORE


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
