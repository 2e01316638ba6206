"""ONNX export: parity with PyTorch, declared inputs, dynamic axes, refusal on mismatch (tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.manifest import ITEM_TOWER, USER_TOWER, list_versions, load_version
from models.transform import TowerEncoder

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from models.data import load_dataset  # noqa: E402
from models.errors import ArtifactError, VersionExists  # noqa: E402
from models.schema import load_schema  # noqa: E402
from models.training import export as export_mod  # noqa: E402
from models.training.prepare import prepare  # noqa: E402
from models.training.train import TrainConfig, real_rows, train_and_export, train_model  # noqa: E402
from tests.models.conftest import MOVIELENS  # noqa: E402

TINY = TrainConfig(epochs=1, batch_size=64, dim=16, field_dim=8, hidden=(32,))
SCHEMA = load_schema(MOVIELENS)


@pytest.fixture(scope="module")
def trained(tiny_data: Path) -> tuple[object, object]:
    prep = prepare(load_dataset(tiny_data, SCHEMA), SCHEMA)
    model, _ = train_model(prep, TINY)
    return prep, model


def _session(path: Path) -> object:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_version_loads_and_declares_its_inputs(tiny_version: tuple[Path, str]) -> None:
    store, version = tiny_version
    m = load_version(store, version)
    assert m.dim == 16 and m.similarity == "cosine"
    assert set(m.files) == {USER_TOWER, ITEM_TOWER}
    assert m.metrics["two_tower"]["recall@50"] >= 0.0 and "most_popular" in m.metrics
    for side, fname in (("user", USER_TOWER), ("item", ITEM_TOWER)):
        sess = _session(store / version / fname)
        got = [(i.name, i.type) for i in sess.get_inputs()]
        want = [(d["name"], f"tensor({d['dtype'].replace('float32', 'float')})") for d in m.inputs[side]]
        assert got == want
        assert [o.name for o in sess.get_outputs()] == ["embedding"]


@pytest.mark.parametrize("side", ["user", "item"])
def test_onnx_matches_pytorch_on_real_cold_and_random_batches(
    tiny_version: tuple[Path, str], tiny_data: Path, side: str
) -> None:
    store, version = tiny_version
    m = load_version(store, version)
    ds = load_dataset(tiny_data, SCHEMA)
    enc = TowerEncoder(m.features, side)  # type: ignore[arg-type]
    if side == "user":
        rows = [{**u, "history": ["1", "2", "3"]} for u in ds.users.values()]
        rows += [{"user_id": "cold"}, {"user_id": "cold2", "age": 30, "history": ["unknown-item"]}]
    else:
        rows = list(ds.items.values()) + [{"item_id": "new", "genres": ["Western"], "title": "Brand New"}]
    sess = _session(store / version / (USER_TOWER if side == "user" else ITEM_TOWER))
    for batch in (
        enc.encode(rows),
        enc.encode(rows[:1]),
        export_mod.random_batch(m.features, side, 33, seed=5),
    ):  # type: ignore[arg-type]
        out = sess.run(["embedding"], batch)[0]
        assert out.shape == (len(next(iter(batch.values()))), m.dim)
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # parity itself is checked against the model in memory below; here: cold rows embed finitely
    assert np.isfinite(out).all()


def test_parity_with_the_model_in_memory(trained: tuple[object, object], tmp_path: Path) -> None:
    prep, model = trained
    rows = real_rows(prep, n=8)  # type: ignore[arg-type]
    for side in ("user", "item"):
        path = tmp_path / f"{side}.onnx"
        tower = model.tower(side)  # type: ignore[attr-defined]
        export_mod.export_tower(tower, prep.schema, side, path)  # type: ignore[attr-defined]
        real = TowerEncoder(prep.schema, side).encode(rows[side])  # type: ignore[attr-defined]
        random = export_mod.random_batch(prep.schema, side, batch=17, seed=3)  # type: ignore[attr-defined]
        assert export_mod.parity(tower, path, [random, real]) < 1e-5


def test_export_refuses_on_parity_failure(
    trained: tuple[object, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prep, model = trained
    monkeypatch.setattr(export_mod, "parity", lambda *a, **k: 0.5)
    with pytest.raises(ArtifactError, match="differs from PyTorch"):
        export_mod.export_version(model, prep.schema, tmp_path, "bad", real_rows(prep, n=4))  # type: ignore[arg-type, attr-defined]
    assert list(tmp_path.iterdir()) == []


def test_existing_version_is_refused_before_training(tiny_version: tuple[Path, str], tiny_data: Path) -> None:
    store, version = tiny_version
    with pytest.raises(VersionExists):
        train_and_export(MOVIELENS, tiny_data, store, version, TINY)
    assert list_versions(store) == [version]


def test_mns_and_no_senet_train(tiny_data: Path) -> None:
    cfg = TrainConfig(**{**TINY.to_dict(), "hidden": (16,), "mns": True, "senet": False, "mns_uniform": 32})
    prep = prepare(load_dataset(tiny_data, SCHEMA), SCHEMA)
    model, info = train_model(prep, cfg)
    assert model.user.senet is None and info["epochs_run"] == 1
    assert 0.0 <= info["best_val_recall@50"] <= 1.0


@pytest.mark.parametrize(
    "options",
    [
        {"dat": True, "pooling": "attention"},
        {"hard_negatives": True, "hard_lo": 2, "hard_hi": 10, "epochs": 2},
    ],
    ids=["dat-attention", "hard-negatives"],
)
def test_options_train_and_export_with_the_same_contract(
    tiny_data: Path, tmp_path: Path, options: dict[str, object]
) -> None:
    """DAT's augmented vectors and attention pooling live inside the towers: the exported graphs take
    exactly the schema's inputs and give [B, dim], match PyTorch, and embed cold rows finitely."""
    cfg = TrainConfig(**{**TINY.to_dict(), "hidden": (16,), **options})
    prep = prepare(load_dataset(tiny_data, SCHEMA), SCHEMA)
    model, info = train_model(prep, cfg)
    assert info["epochs_run"] == cfg.epochs
    if cfg.dat:
        assert model.user.aug_field == "user_id" and model.item.aug_field == "item_id"
    path = export_mod.export_version(model, prep.schema, tmp_path, "opt-1", real_rows(prep, n=8))
    m = load_version(tmp_path, "opt-1")
    for side, fname in (("user", USER_TOWER), ("item", ITEM_TOWER)):
        sess = _session(path / fname)
        assert [i.name for i in sess.get_inputs()] == [f.name for f in prep.schema.tower(side).fields]
        batch = export_mod.random_batch(m.features, side, 9, seed=1)
        out = sess.run(["embedding"], batch)[0]
        assert out.shape == (9, 16) and np.isfinite(out).all()


def test_attention_pooling_weights_recent_items_by_position(tiny_data: Path) -> None:
    """The pooled history depends on the order of the items (mean pooling does not)."""
    from models.training.towers import FieldEmbedding

    spec = SCHEMA.user.field("history")
    emb = FieldEmbedding(spec, 10, 4, pooling="attention")
    with torch.no_grad():
        emb.positions.weight[0].fill_(3.0)  # the most recent item gets a large key
        emb.query.fill_(1.0)
    x = torch.tensor([[1, 2, 0], [2, 1, 0]])
    out = emb(x)
    assert not torch.allclose(out[0], out[1])
    mean = FieldEmbedding(spec, 10, 4, pooling="mean")
    assert torch.allclose(mean(x)[0], mean(x)[1])
    empty = emb(torch.tensor([[0, 0]]))
    assert torch.equal(empty, torch.zeros(1, 4))
