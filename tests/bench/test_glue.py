"""bench/glue.py: the glue peer must do the same work as twotower, or the side-by-side ratio means
nothing. It once read the build's `params` (nlist) instead of its tuned `search_params` and searched
at Faiss's default nprobe=1: ~20x less search than twotower at the recall floor."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from app.catalog import read_users
from bench.catalog import write_data_dir
from bench.reindex import finish, run_child
from bench.server import GlueProcess, ServiceProcess
from models.manifest import ModelManifest
from tests.conftest import DEMO_STORE


def test_glue_searches_like_twotower(tmp_path: Path, manifest: ModelManifest) -> None:
    version = manifest.version
    data, index = tmp_path / "data", tmp_path / "index"
    write_data_dir(data, manifest, 20_000, 200, seed=0)
    # IVF200 at 20k items: the tuned nprobe is well above 1, so nprobe=1 gives other answers.
    proc = run_child(DEMO_STORE, version, index, data, "ivf", tmp_path / "build.log", factory="IVF200,Flat")
    built = finish(proc, tmp_path / "build.log")
    assert built["index"]["search_params"]["nprobe"] > 1
    env = {
        "TWOTOWER_MODEL_STORE": str(DEMO_STORE),
        "TWOTOWER_INDEX_STORE": str(index),
        "TWOTOWER_DATA_DIR": str(data),
        "TWOTOWER_MODEL_VERSIONS": json.dumps([version]),
    }
    glue = GlueProcess(DEMO_STORE / version, index / version, data, tmp_path / "glue.log")
    with ServiceProcess(env, tmp_path / "tt.log") as tt, glue, httpx.Client(timeout=30) as client:
        users = list(read_users(data))[:40]
        same = 0
        for user in users:
            body = {"user_id": user, "k": 50}
            ours = client.post(f"{tt.url}/recall", json=body).json()
            peer = client.post(f"{glue.url}/recall", json=body)
            assert peer.status_code == 200, peer.text
            theirs = peer.json()
            assert theirs["index_build"] == ours["index_build"]
            same += [i["item_id"] for i in theirs["items"]] == [i["item_id"] for i in ours["items"]]
        # Scores can differ in the last float bits (ONNX batch vs single rows), never the lists.
        assert same == len(users)
