"""App fixtures: a copy of the demo model store, a small dataset in the project's format drawn from
the demo vocabularies, and one real index build shared by the session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from app.settings import Settings
from models.manifest import ModelManifest
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
