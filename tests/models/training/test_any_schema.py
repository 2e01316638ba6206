"""The trainer on a schema that is not MovieLens (the shop example): every kind becomes a tower
input, the resolved schema lands in the manifest, and nothing in models/ names a MovieLens field."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from models.manifest import ModelManifest, load_version
from models.runtime import TowerRunner
from tests.conftest import ROOT

pytestmark = pytest.mark.train
pytest.importorskip("torch")

from models.training.train import TrainConfig, train_and_export  # noqa: E402

SHOP = ROOT / "examples" / "shop"
TINY = TrainConfig(epochs=1, batch_size=64, dim=8, field_dim=4, hidden=(16,))


@pytest.fixture(scope="module")
def shop_version(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelManifest]:
    tmp = tmp_path_factory.mktemp("shop")
    generate = runpy.run_path(str(SHOP / "generate.py"))["generate"]
    generate(tmp / "data", n_users=60, n_items=40, seed=1)
    path = train_and_export(SHOP / "schema.toml", tmp / "data", tmp / "models", "shop-tiny", TINY)
    return path, load_version(path.parent, path.name)


def test_every_kind_is_a_tower_input(shop_version: tuple[Path, ModelManifest]) -> None:
    _, m = shop_version
    inputs = {
        side: {i["name"]: (i["dtype"], i["shape"]) for i in m.inputs[side]} for side in ("user", "item")
    }
    assert inputs["user"] == {
        "customer": ("int64", ["batch"]),
        "country": ("int64", ["batch"]),
        "age": ("float32", ["batch"]),
        "bought": ("int64", ["batch", "bought_len"]),
    }
    tags = len(m.features.vocabularies["tag"])
    assert inputs["item"] == {
        "sku": ("int64", ["batch"]),
        "brand": ("int64", ["batch"]),
        "price": ("float32", ["batch"]),
        "text_emb": ("float32", ["batch", 16]),
        "tags": ("float32", ["batch", tags]),
        "title": ("int64", ["batch", "title_len"]),
    }
    age = m.features.user.field("age")
    assert age.mean is not None and 16 <= age.mean <= 80 and age.std is not None and age.std > 1
    brands = m.features.vocabularies["brand"]
    assert list(brands) == sorted(brands) and "unbranded" in brands  # learned, with the default
    assert all(v < 1e-5 for v in m.training["parity_max_abs_diff"].values())
    assert m.metrics["split"] == "temporal leave-last-out (timestamp), test"


def test_onnx_towers_use_the_vector_and_numeric_inputs(shop_version: tuple[Path, ModelManifest]) -> None:
    path, m = shop_version
    items = TowerRunner(path, m, "item").load()
    base = {"sku": "sku-00001", "brand": "out-brand-1", "price": 50.0, "text_emb": [0.0] * 16}
    out = items.embed([base, {**base, "text_emb": [1.0] * 16}, {**base, "price": 500.0}, {"sku": "new"}])
    assert np.isfinite(out).all()
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], out[2])
    users = TowerRunner(path, m, "user").load()
    u = users.embed([{"customer": "u00001", "age": 30}, {"customer": "u00001", "age": 70}, {}])
    assert np.isfinite(u).all() and not np.allclose(u[0], u[1])


def test_nothing_in_models_names_a_movielens_field() -> None:
    pattern = re.compile(r"genre|occupation|release_year|gender|\"age\"|\"zip\"|\"title\"")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted((ROOT / "models").rglob("*.py"))
        if p.name != "ml100k.py"  # the fetcher writes MovieLens' own columns
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
