"""App fixtures: a copy of the demo model store, a small dataset in the project's format drawn from
the demo vocabularies, and one real index build shared by the session."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from app.settings import Settings
from models.manifest import MANIFEST, ModelManifest
from tests.data import build_index, write_dataset

TOKEN = "test-admin-token-0123456789"
N_ITEMS = 400
N_USERS = 40


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, manifest: ModelManifest) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_dataset(out, manifest, N_USERS, N_ITEMS)
    return out


@pytest.fixture(scope="session")
def built_index(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, version: str, data_dir: Path
) -> Path:
    """One real build, copied by each test that needs its own index store."""
    root = tmp_path_factory.mktemp("index")
    build_index(root, model_store, version, data_dir)
    return root


def make_settings(model_store: Path, index_root: Path, data_dir: Path, **over: object) -> Settings:
    base: dict[str, object] = {
        "model_store": model_store,
        "index_store": index_root,
        "data_dir": data_dir,
        "admin_token": SecretStr(TOKEN),
        "reindex_on_start": False,
        "poll_interval_s": 0.2,
        "shutdown_drain_s": 0,
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def index_root(tmp_path: Path, built_index: Path) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(built_index, dst)
    return dst


@pytest.fixture
def settings(model_store: Path, index_root: Path, data_dir: Path) -> Settings:
    return make_settings(model_store, index_root, data_dir)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def copy_version(src: Path, dst: Path, tag: str) -> None:
    """A complete copy of version `src` re-tagged `tag` (same towers), written beside `dst` first
    and renamed in, as a deployment that copies a version into the model store would."""
    tmp = dst.parent / f".copy-{tag}"
    shutil.copytree(src, tmp)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest["version"] = tag
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    tmp.rename(dst)


def until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check` every 50 ms; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
