"""The shop example, run as examples/shop/README.md writes it: generate, `twotower train`,
`twotower reindex`, then the service answers /recall and /score on the shop's own features."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from models.manifest import load_version
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.train]
pytest.importorskip("torch")

SHOP = ROOT / "examples" / "shop"
VERSION = "shop-1"


def run(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [*args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


class Shop(NamedTuple):
    client: TestClient
    data: Path
    models: Path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("shop")
    data, models, index = tmp / "data", tmp / "models", tmp / "index"
    twotower = str(Path(sys.executable).parent / "twotower")
    run(sys.executable, str(SHOP / "generate.py"), "--out", str(data), "--users", "150", "--items", "90")
    assert sorted(p.name for p in data.iterdir()) == ["customers.csv", "products.parquet", "purchases.jsonl"]
    run(
        twotower, "train", "--schema", str(SHOP / "schema.toml"), "--data", str(data),
        "--model-store", str(models), "--version", VERSION,
        "--epochs", "2", "--dim", "16", "--field-dim", "8", "--hidden", "32",
    )  # fmt: skip
    env = {
        **os.environ,
        "TWOTOWER_MODEL_STORE": str(models),
        "TWOTOWER_INDEX_STORE": str(index),
        "TWOTOWER_DATA_DIR": str(data),
    }
    assert f"{VERSION}: build" in run(twotower, "reindex", env=env)
    settings = Settings(
        model_store=models, index_store=index, data_dir=data, reindex_on_start=False, shutdown_drain_s=0
    )
    with TestClient(create_app(settings)) as client:
        yield Shop(client, data, models)


def item_rows(data: Path) -> dict[str, dict[str, object]]:
    return {r["sku"]: r for r in pq.read_table(data / "products.parquet").to_pylist()}


def test_the_manifest_carries_the_resolved_shop_schema(shop: Shop) -> None:
    m = load_version(shop.models, VERSION)
    price = m.features.item.field("price")
    assert price.kind == "numeric" and price.log and price.std is not None and price.std > 0
    assert m.features.user.field("age").mean is not None
    assert [f.name for f in m.features.item.filterable] == ["brand", "price", "tags"]
    assert {i["name"]: i["shape"] for i in m.inputs["item"]}["text_emb"] == ["batch", 16]


def test_recall_and_score_agree_on_stored_and_sent_features(shop: Shop) -> None:
    r = shop.client.post("/recall", json={"user_id": "u00003", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == VERSION and not body["cold_start"] and len(body["items"]) == 10
    recalled = {it["item_id"]: it["score"] for it in body["items"]}

    # stored vectors, and the item tower on the item's own shop features: the same scores
    rows = item_rows(shop.data)
    sent = [{"item_id": i, "features": {k: v for k, v in rows[i].items() if k != "sku"}} for i in recalled]
    for items in ([{"item_id": i} for i in recalled], sent):
        s = shop.client.post("/score", json={"user_id": "u00003", "items": items})
        assert s.status_code == 200, s.text
        for got in s.json()["scores"]:
            assert got["score"] == pytest.approx(recalled[got["item_id"]], abs=1e-4)


def test_cold_user_on_shop_features(shop: Shop) -> None:
    feats = {"country": "DE", "age": 31, "bought": ["sku-00001", "sku-00007"]}
    r = shop.client.post("/recall", json={"features": feats, "k": 5})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 5
    new_item = {"brand": "out-brand-1", "price": 55.0, "text_emb": [0.1] * 16, "tags": ["outdoor-eco"]}
    s = shop.client.post(
        "/score", json={"features": feats, "items": [{"item_id": "new-1", "features": new_item}]}
    )
    assert s.status_code == 200 and s.json()["scores"][0]["score"] is not None
    # a lone surrogate (legal as a JSON escape) in a hashed field is hashed, not a 500
    odd = shop.client.post(
        "/recall",
        content=b'{"features": {"country": "\\ud800", "bought": ["\\udfff"]}, "k": 3}',
        headers={"content-type": "application/json"},
    )
    assert odd.status_code == 200, odd.text


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            {"items": [{"item_id": "x", "features": {"text_emb": [0.1] * 15}}]},
            ["body", "items", "0", "features", "text_emb"],
            "expected 16 numbers, got 15",
        ),
        (
            {"items": [{"item_id": "x", "features": {"price": 10**400}}]},
            ["body", "items", "0", "features", "price"],
            "must be a finite number",
        ),
        (
            {"features": {"age": 10**400}, "items": [{"item_id": "x"}]},
            ["body", "features", "age"],
            "must be a finite number",
        ),
        (
            {"items": [{"item_id": "x", "features": {"price": -3}}]},
            ["body", "items", "0", "features", "price"],
            "greater than -1",
        ),
    ],
)
def test_bad_shop_features_are_422_naming_the_field(
    shop: Shop, body: dict[str, object], loc: list[str], message: str
) -> None:
    r = shop.client.post("/score", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == loc and message in detail["msg"]
