"""The glue peer: the /recall a team would write in an afternoon, on the same files as twotower.

FastAPI + ONNX Runtime + Faiss and nothing else on the request path: a pydantic request model, the
user tower's ONNX session run on inputs encoded once at start (no feature lookup per request), the
build's Faiss index read with `faiss.read_index` and searched with the build manifest's own search
parameters (nprobe / efSearch), history excluded by over-fetching k + len(history) and dropping
those ids, a pydantic response model. Same thread settings as the service's defaults: ONNX Runtime
1 intra-op thread without spin-waiting, Faiss 1 OpenMP thread (`OMP_NUM_THREADS=1`).

What it leaves out, on purpose, is what twotower does per request beyond that compute: feature
lookups and validation, model versions and aliases, swaps, filters, catalog deltas, metrics, limits.

    GLUE_MODEL_DIR=<store>/<version> GLUE_INDEX_DIR=<index store>/<version> GLUE_DATA_DIR=<data> \
    OMP_NUM_THREADS=1 python -m uvicorn bench.glue:app --workers 2 --port 8100 --no-access-log

`GLUE_SYNC=1` declares the route `def` (FastAPI runs it in its thread pool) instead of `async def`
(inline on the event loop); the bench uses the faster of the two (see bench/README.md).
Only the bench imports this module; the project's own code is used once at start, to encode users
exactly as the service's encoder does, and to read the data directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field


class RecallRequest(BaseModel):
    user_id: str
    k: int = Field(100, ge=1, le=1000)


class Item(BaseModel):
    item_id: str
    score: float


class RecallResponse(BaseModel):
    model_version: str
    index_build: str
    items: list[Item]


class Glue:
    """Everything loaded once per process."""

    def __init__(self, model_dir: Path, index_dir: Path, data_dir: Path) -> None:
        from app.catalog import read_users
        from models.manifest import load_version
        from models.transform import TowerEncoder

        manifest = load_version(model_dir.parent, model_dir.name)
        self.version = manifest.version
        self.cosine = manifest.similarity == "cosine"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_dir / "user_tower.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        pointer = json.loads((index_dir / "CURRENT").read_text())
        self.build = str(pointer["build_id"])
        bdir = index_dir / self.build
        # The tuned search parameters (`search_params`); `params` holds the build's (nlist, ...).
        # Reading `params` here once left the peer at Faiss's default nprobe=1: ~20x less search work.
        index_meta = json.loads((bdir / "manifest.json").read_text())["index"]
        params = {**index_meta.get("params", {}), **index_meta.get("search_params", {})}
        self.index = faiss.read_index(str(bdir / "index.faiss"))
        self.params: Any = None
        if "nprobe" in params:
            self.params = faiss.SearchParametersIVF()
            self.params.nprobe = int(params["nprobe"])
        elif "efSearch" in params:
            self.params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            self.params.efSearch = int(params["efSearch"])
        self.ids: list[str] = np.load(bdir / "ids.npy").tolist()
        # User inputs encoded once, kept in memory: a request costs no lookup and no encoding.
        encoder = TowerEncoder(manifest.features, "user")
        users = read_users(data_dir)
        id_field = encoder.tower.id_field
        history_keys = manifest.features.layout.history
        self.inputs: dict[str, dict[str, np.ndarray]] = {}
        self.history: dict[str, set[str]] = {}
        limit = int(os.environ.get("GLUE_USERS", "0")) or len(users)
        for uid, row in list(users.items())[:limit]:
            arrays = encoder.encode([{**row, id_field: uid}])
            self.inputs[uid] = {k: v for k, v in arrays.items() if k in names}
            self.history[uid] = {x for key in history_keys for x in row.get(key) or () if isinstance(x, str)}

    def recall(self, user_id: str, k: int) -> dict[str, Any]:
        feed = self.inputs.get(user_id)
        if feed is None:
            raise HTTPException(404, f"unknown user {user_id!r}")
        q = self.session.run(None, feed)[0].astype(np.float32)
        if self.cosine:
            q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        seen = self.history[user_id]
        scores, rows = self.index.search(q, k + len(seen), params=self.params)
        items = []
        for s, r in zip(scores[0].tolist(), rows[0].tolist(), strict=True):
            if r < 0:
                continue
            item_id = self.ids[r]
            if item_id in seen:
                continue
            items.append({"item_id": item_id, "score": s})
            if len(items) == k:
                break
        return {"model_version": self.version, "index_build": self.build, "items": items}


state: dict[str, Glue] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    env = os.environ
    state["glue"] = Glue(Path(env["GLUE_MODEL_DIR"]), Path(env["GLUE_INDEX_DIR"]), Path(env["GLUE_DATA_DIR"]))
    yield


app = FastAPI(title="glue peer", lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}


if os.environ.get("GLUE_SYNC") == "1":

    @app.post("/recall", response_model=RecallResponse)
    def recall_sync(body: RecallRequest) -> dict[str, Any]:
        return state["glue"].recall(body.user_id, body.k)

else:

    @app.post("/recall", response_model=RecallResponse)
    async def recall(body: RecallRequest) -> dict[str, Any]:
        return state["glue"].recall(body.user_id, body.k)
