"""A version that appears in the model store while the service runs is loaded, gets its index built
once and becomes servable, with no restart; a half-copied or broken one is ignored with a log line
until it is complete (issue 10, "new versions without restarts")."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.manifest import MANIFEST, USER_TOWER
from tests.app.conftest import copy_version, make_settings, until
from tests.data import build_index

V2 = "99990101T000000Z"
V3 = "99990202T000000Z"


WAIT_S = 60


def test_a_version_copied_in_is_served_without_restart(
    tmp_path: Path,
    model_store: Path,
    version: str,
    data_dir: Path,
    admin: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, index = tmp_path / "models", tmp_path / "index"
    shutil.copytree(model_store, store)
    build_index(index, store, version, data_dir)
    settings = make_settings(store, index, data_dir, model_poll_s=0.1)
    caplog.set_level(logging.INFO)
    with TestClient(create_app(settings)) as c:
        assert c.post("/recall", json={"k": 3, "model_version": V2}).status_code == 404

        # A copy in progress: the manifest is there, a tower file only half written.
        half = store / V2
        copy_version(store / version, tmp_path / "full", V2)
        half.mkdir()
        shutil.copy(tmp_path / "full" / MANIFEST, half / MANIFEST)
        data = (tmp_path / "full" / USER_TOWER).read_bytes()
        (half / USER_TOWER).write_bytes(data[: len(data) // 2])
        until(
            "the half copy to be refused with a log line",
            lambda: f"model version {V2}" in caplog.text,
            timeout=WAIT_S,
        )
        assert c.post("/recall", json={"k": 3, "model_version": V2}).status_code == 404
        assert c.get("/readyz").status_code == 200

        # A broken one beside it (a manifest that is not JSON): refused, nothing else stops.
        (store / "broken-1").mkdir()
        (store / "broken-1" / MANIFEST).write_text("{not json")

        # The copy completes: loaded, built once, servable, and an alias can move to it.
        for f in (tmp_path / "full").iterdir():
            shutil.copy(f, half / f.name)
        until(
            f"{V2} to serve",
            lambda: c.post("/recall", json={"k": 3, "model_version": V2}).status_code == 200,
            timeout=WAIT_S,
        )
        r = c.put("/admin/aliases/default", headers=admin, json={"model_version": V2})
        assert r.status_code == 200, r.text
        assert c.post("/recall", json={"k": 3}).json()["model_version"] == V2
        builds = [p for p in (index / V2).iterdir() if not p.name.startswith(".") and p.is_dir()]
        assert len(builds) == 1, builds

        # A third version, and the removal of the second: the loop keeps going; V2 keeps serving
        # from memory (its towers are loaded) until the operator moves the alias away.
        copy_version(store / version, store / V3, V3)
        shutil.rmtree(store / V2)
        until(
            f"{V3} to serve",
            lambda: c.post("/recall", json={"k": 3, "model_version": V3}).status_code == 200,
            timeout=WAIT_S,
        )
        assert c.post("/recall", json={"k": 3}).json()["model_version"] == V2
    assert "broken-1" in caplog.text
