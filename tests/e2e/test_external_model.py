"""Towers trained elsewhere: a small PyTorch two-tower written here without twotower's trainer,
exported by this test, imported with the real CLI, indexed, served and scored.

The towers take the encoded inputs of the schema below (categorical, numeric, vector, multi_hot,
sequence). It comes twice: with its own names for the ids ("customer", "sku") and the history
("purchases"), and with the default names the service's data readers use.
The item tower scales each item's vector by a learned per-item factor, so norms differ by ~20x and
a dot ranking differs from a cosine one: the dot run proves nothing normalises on the way.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
from fastapi.testclient import TestClient  # noqa: E402
from torch import nn  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from models.manifest import list_versions, load_version  # noqa: E402
from models.transform import TowerEncoder  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
N_USERS, N_ITEMS, TAGS = 12, 150, ["new", "sale", "eco", "kids", "pro"]
EMB = 8

# Where the data files of the own-names schema are, and their columns: none of the default names.
OWN_FILES = """
[data]
users = "people"
items = "catalogue"
interactions = "orders"

[interactions]
user = "who"
item = "what"
timestamp = "when"
"""

TOWERS_OWN = """
[user]
id = "customer"

[[user.fields]]
name = "customer"
kind = "categorical"
vocab_file = "vocab/customers.txt"

[[user.fields]]
name = "age"
kind = "numeric"
mean = 40.0
std = 12.0

[[user.fields]]
name = "purchases"
kind = "sequence"
vocab = "sku"
max_len = 6
from_interactions = true

[item]
id = "sku"

[[item.fields]]
name = "sku"
kind = "categorical"
vocab_file = "vocab/skus.txt"

[[item.fields]]
name = "price"
kind = "numeric"
mean = 20.0
std = 10.0
filterable = true

[[item.fields]]
name = "text_emb"
kind = "vector"
dim = 8

[[item.fields]]
name = "tags"
kind = "multi_hot"
vocab_file = "vocab/tags.txt"
"""

SCHEMA_OWN = "format = 1\n" + OWN_FILES + TOWERS_OWN

# The same towers under the default names, with the default data files (users, items,
# interactions; user_id, item_id, timestamp).
RENAME = {"customer": "user_id", "sku": "item_id", "purchases": "history"}
SCHEMA = 'format = 1\n\n[interactions]\ntimestamp = "timestamp"\n' + TOWERS_OWN.replace(
    "customers.txt", "user_id.txt"
).replace("skus.txt", "item_id.txt")
for _own, _default in RENAME.items():
    SCHEMA = SCHEMA.replace(f'"{_own}"', f'"{_default}"')


def default_names(inputs: dict[str, Any]) -> dict[str, Any]:
    return {RENAME.get(k, k): v for k, v in inputs.items()}


# --- the towers: plain nn.Modules over the encoded inputs ----------------------------------------


class UserTower(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.user = nn.Embedding(N_USERS + 1, dim)
        self.age = nn.Linear(1, dim)
        self.history = nn.Embedding(N_ITEMS + 1, dim, padding_idx=0)  # padding adds nothing to the sum

    def forward(self, customer: Any, age: Any, purchases: Any) -> Any:
        return self.user(customer) + self.age(age.unsqueeze(1)) + self.history(purchases).sum(1)


class ItemTower(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.item = nn.Embedding(N_ITEMS + 1, dim)
        self.price = nn.Linear(1, dim)
        self.text = nn.Linear(EMB, dim)
        self.tags = nn.Linear(len(TAGS), dim, bias=False)
        self.scale = nn.Embedding(N_ITEMS + 1, 1)  # log-norm per item: norms differ, dot != cosine
        nn.init.normal_(self.scale.weight, std=1.0)

    def forward(self, sku: Any, price: Any, text_emb: Any, tags: Any) -> Any:
        x = self.item(sku) + self.price(price.unsqueeze(1)) + self.text(text_emb) + self.tags(tags)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return x * self.scale(sku).exp()


# Mismatched towers: each breaks one rule of the import contract.


class UserInt32(UserTower):
    def forward(self, customer: Any, age: Any, purchases: Any) -> Any:
        return super().forward(customer.long(), age, purchases)


class UserNaN(UserTower):
    def forward(self, customer: Any, age: Any, purchases: Any) -> Any:
        out = super().forward(customer, age, purchases)
        return out * 0.0 / (age - age).unsqueeze(1)  # 0/0: NaN for every row


class ItemWrongName(ItemTower):
    def forward(self, sku: Any, cost: Any, text_emb: Any, tags: Any) -> Any:
        return super().forward(sku, cost, text_emb, tags)


class ItemRank2(ItemTower):
    def forward(self, sku: Any, price: Any, text_emb: Any, tags: Any) -> Any:
        return super().forward(sku, price[:, 0], text_emb, tags)


class ItemNoTags(ItemTower):
    def forward(self, sku: Any, price: Any, text_emb: Any) -> Any:
        return super().forward(sku, price, text_emb, torch.zeros(sku.shape[0], len(TAGS)))


def export(module: nn.Module, path: Path, inputs: dict[str, Any], lists: tuple[str, ...] = ()) -> Path:
    """torch.onnx.export with the dynamo exporter: a dynamic batch axis, dynamic lengths for lists."""
    batch = torch.export.Dim("batch")
    # Positional: the ONNX input names come from `inputs`, whatever forward() calls its parameters.
    shapes = tuple(
        {0: batch, 1: torch.export.Dim(f"{name}_len")} if name in lists else {0: batch} for name in inputs
    )
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=["vector"],  # not "embedding": the exporter names nn.Embedding lookups so
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,  # one self-contained file per tower
            verbose=False,
        )
    return path


def user_inputs(n: int = 3, id_dtype: Any = None, own: bool = False) -> dict[str, Any]:
    inputs = {
        "customer": torch.arange(1, n + 1, dtype=id_dtype or torch.int64),
        "age": torch.linspace(-1, 1, n),
        "purchases": torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6]][:n]),
    }
    return inputs if own else default_names(inputs)


def item_inputs(n: int = 3, own: bool = False) -> dict[str, Any]:
    inputs = {
        "sku": torch.arange(1, n + 1),
        "price": torch.linspace(-1, 1, n),
        "text_emb": torch.randn(n, EMB),
        "tags": torch.zeros(n, len(TAGS)),
    }
    return inputs if own else default_names(inputs)


# --- files: the schema with its vocabularies, a catalog, users ----------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("external")
    (root / "vocab").mkdir()
    (root / "schema.toml").write_text(SCHEMA)
    (root / "schema_own.toml").write_text(SCHEMA_OWN)
    users = [f"u{i}" for i in range(1, N_USERS + 1)]
    items = [f"i{i}" for i in range(1, N_ITEMS + 1)]
    for name in ("customers.txt", "user_id.txt"):
        (root / "vocab" / name).write_text("\n".join(users) + "\n")
    for name in ("skus.txt", "item_id.txt"):
        (root / "vocab" / name).write_text("\n".join(items) + "\n")
    (root / "vocab" / "tags.txt").write_text("\n".join(TAGS) + "\n")
    rng = random.Random(0)
    data = root / "data"
    data.mkdir()
    with open(data / "items.jsonl", "w") as f:
        for item in items:
            row = {
                "item_id": item,
                "price": round(rng.uniform(1, 60), 2),
                "text_emb": [round(rng.gauss(0, 1), 4) for _ in range(EMB)],
                "tags": rng.sample(TAGS, rng.randint(0, 2)),
            }
            f.write(json.dumps(row) + "\n")
    with open(data / "users.jsonl", "w") as f:
        for user in users:
            f.write(json.dumps({"user_id": user, "age": rng.randint(18, 70)}) + "\n")
    with open(data / "interactions.csv", "w") as f:
        f.write("user_id,item_id,timestamp\n")
        for n, user in enumerate(users):
            for k, item in enumerate(rng.sample(items, 4)):
                f.write(f"{user},{item},{1000 * n + k}\n")
    return root


@pytest.fixture(scope="module")
def towers(work: Path) -> dict[str, Any]:
    """The good pair, exported once (random init: the contract does not care how well they learned)."""
    torch.manual_seed(0)
    user, item = UserTower(), ItemTower()
    out = work / "onnx"
    out.mkdir()
    export(user, out / "user.onnx", user_inputs(), lists=("history",))
    export(item, out / "item.onnx", item_inputs())
    # The same towers under the schema's own names (schema_own.toml).
    export(user, out / "user_own.onnx", user_inputs(own=True), lists=("purchases",))
    export(item, out / "item_own.onnx", item_inputs(own=True))
    return {"user": user, "item": item, "user_path": out / "user.onnx", "item_path": out / "item.onnx"}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def import_cmd(
    work: Path, store: Path, user: Path, item: Path, *extra: str, schema: str = "schema.toml"
) -> list[str]:
    return [
        "import",
        "--schema",
        str(work / schema),
        "--user-tower",
        str(user),
        "--item-tower",
        str(item),
        "--model-store",
        str(store),
        *extra,
    ]


def torch_vectors(module: nn.Module, encoder: TowerEncoder, rows: list[dict[str, Any]]) -> np.ndarray:
    """The tower's own answer, from PyTorch: the reference the served scores are held to."""
    arrays = encoder.encode(rows)
    names = [f.name for f in encoder.tower.fields]  # schema order = forward()'s parameter order
    with torch.no_grad():
        out = module(*(torch.from_numpy(arrays[n]) for n in names))
    return np.asarray(out.numpy(), dtype=np.float64)


# --- the good pair, end to end -------------------------------------------------------------------


@pytest.mark.parametrize(("similarity", "kind"), [("dot", "exact"), ("dot", "ivf"), ("cosine", "exact")])
def test_import_reindex_serve(
    similarity: str, kind: str, work: Path, towers: dict[str, Any], tmp_path: Path
) -> None:
    store, index = tmp_path / "models", tmp_path / "index"
    tag = f"ext-{similarity}-{kind}"
    out = cli(
        *import_cmd(work, store, towers["user_path"], towers["item_path"]),
        "--version",
        tag,
        "--similarity",
        similarity,
    )
    assert out.returncode == 0, out.stderr
    assert f"wrote model version {tag} ({similarity}, dim {DIM})" in out.stdout
    manifest = load_version(store, tag)
    assert (manifest.source, manifest.similarity, manifest.dim) == ("import", similarity, DIM)
    assert manifest.features.item.field("price").mean == 20.0  # the resolved schema travels

    env = {
        "TWOTOWER_MODEL_STORE": str(store),
        "TWOTOWER_INDEX_STORE": str(index),
        "TWOTOWER_DATA_DIR": str(work / "data"),
        "TWOTOWER_INDEX__EXACT_THRESHOLD": "0" if kind == "ivf" else "1000",
    }
    out = cli("reindex", "--model-version", tag, env=env)
    assert out.returncode == 0, out.stderr
    build = json.loads(
        (
            index / tag / json.loads((index / tag / "CURRENT").read_text())["build_id"] / "manifest.json"
        ).read_text()
    )
    assert (build["index"]["kind"], build["similarity"]) == (kind, similarity)
    if kind == "ivf":
        assert build["recall"]["met"] and set(build["recall"]["mips_variants"]) == {"raw", "mips_augmented"}

    settings = Settings(
        model_store=store,
        index_store=index,
        data_dir=work / "data",
        reindex_on_start=False,
        worker=False,
        shutdown_drain_s=0,
    )
    bought = ["i4", "i9", "i17"]
    user_row = {"user_id": "u3", "age": 29, "history": bought}
    features = {"age": 29, "history": bought}
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/recall",
            json={
                "user_id": "u3",
                "features": features,
                "k": 20,
                "model_version": tag,
                "exclude_history": False,
            },
        )
        assert r.status_code == 200, r.text
        recalled = [(it["item_id"], it["score"]) for it in r.json()["items"]]
        r = client.post(
            "/score",
            json={
                "user_id": "u3",
                "features": features,
                "model_version": tag,
                "items": [{"item_id": i} for i, _ in recalled],
            },
        )
        assert r.status_code == 200, r.text
        scored = [s["score"] for s in r.json()["scores"]]
        # The stored user (features and purchases from the data files, under the schema's names):
        # the same vector as the one sent, and the purchases are not recalled by default.
        r = client.post("/recall", json={"user_id": "u3", "k": 20, "model_version": tag})
        stored = [it["item_id"] for it in r.json()["items"]]
    assert len(recalled) == 20
    for (item, recall_score), score in zip(recalled, scored, strict=True):
        assert score == pytest.approx(recall_score, abs=1e-4), item

    # The reference: PyTorch's vectors for the whole catalog, ranked by the model's similarity.
    catalog = [json.loads(line) for line in (work / "data" / "items.jsonl").read_text().splitlines()]
    items = torch_vectors(towers["item"], TowerEncoder(manifest.features, "item"), catalog)
    user = torch_vectors(towers["user"], TowerEncoder(manifest.features, "user"), [user_row])[0]
    norms = np.linalg.norm(items, axis=1)
    dot = items @ user
    cosine = dot / norms / np.linalg.norm(user)
    want = dot if similarity == "dot" else cosine
    top = np.argsort(-want, kind="stable")[:20]
    row = {it["item_id"]: j for j, it in enumerate(catalog)}
    got = [row[i] for i, _ in recalled]
    np.testing.assert_allclose([s for _, s in recalled], want[got], rtol=1e-4, atol=1e-4)
    if kind == "exact":
        assert got == top.tolist()
        users = [json.loads(line) for line in (work / "data" / "users.jsonl").read_text().splitlines()]
        events = (work / "data" / "interactions.csv").read_text().splitlines()[1:]
        history = [line.split(",")[1] for line in events if line.startswith("u3,")]
        stored_row = {**next(u for u in users if u["user_id"] == "u3"), "history": history}
        u3 = torch_vectors(towers["user"], TowerEncoder(manifest.features, "user"), [stored_row])[0]
        s3 = items @ u3 if similarity == "dot" else items @ u3 / norms  # |u3| does not change the order
        ranked = [catalog[j]["item_id"] for j in np.argsort(-s3, kind="stable")]
        assert stored == [i for i in ranked if i not in history][:20]
    else:  # an IVF index over the MIPS-augmented vectors, tuned to the 0.95 floor
        assert len(set(got) & set(top.tolist())) >= 18
    # The test can fail: item norms differ ~20x, so the two rankings share few of their top 20.
    assert norms.max() / norms.min() > 10
    assert len(set(np.argsort(-dot)[:20]) & set(np.argsort(-cosine)[:20])) < 15
    if similarity == "cosine":
        assert max(s for _, s in recalled) <= 1.0 + 1e-5


# --- the schema's own names in the data files too: people, catalogue, orders ---------------------

OWN_COLUMNS = {
    "people": {"user_id": "customer"},
    "catalogue": {"item_id": "sku"},
    "orders": {"user_id": "who", "item_id": "what", "timestamp": "when"},
}
DEFAULT_FILES = {"people": "users.jsonl", "catalogue": "items.jsonl", "orders": "interactions.csv"}


def default_rows(work: Path, table: str) -> list[dict[str, Any]]:
    path = work / "data" / DEFAULT_FILES[table]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    header, *lines = path.read_text().splitlines()
    return [
        {
            k: int(v) if k == "timestamp" else v
            for k, v in zip(header.split(","), line.split(","), strict=True)
        }
        for line in lines
    ]


def write_own_data(work: Path, dest: Path, formats: dict[str, str], drop: tuple[str, str] = ("", "")) -> Path:
    """The external dataset under the own schema's names, each table in the format given
    ("parquet", "csv" or "jsonl"); `drop` = (table, column) leaves one column out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    for table, fmt in formats.items():
        rename = OWN_COLUMNS[table]
        rows = [
            {rename.get(k, k): v for k, v in r.items() if (table, rename.get(k, k)) != drop}
            for r in default_rows(work, table)
        ]
        path = dest / f"{table}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:  # CSV: a list is JSON in its cell
            cols = list(rows[0])
            cell = {c: (json.dumps if isinstance(rows[0][c], list) else str) for c in cols}
            lines = [",".join(cols)] + [",".join(_csv_cell(cell[c](r[c])) for c in cols) for r in rows]
            path.write_text("\n".join(lines) + "\n")
    return dest


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


@pytest.fixture(scope="module")
def own_version(work: Path, towers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding the own-names towers (imported once, dot similarity)."""
    store = tmp_path_factory.mktemp("own") / "models"
    out_dir = work / "onnx"
    out = cli(
        *import_cmd(
            work, store, out_dir / "user_own.onnx", out_dir / "item_own.onnx", schema="schema_own.toml"
        ),
        "--version",
        "own-dot",
        "--similarity",
        "dot",
    )
    assert out.returncode == 0, out.stderr
    return store


def own_reference(work: Path, towers: dict[str, Any], store: Path, user: str) -> tuple[list[str], list[str]]:
    """PyTorch's ranking of the catalogue for `user` as the data files hold them (age from people,
    purchases from orders in time order), and the purchases."""
    manifest = load_version(store, "own-dot")
    catalog = [{"sku": r.pop("item_id"), **r} for r in default_rows(work, "catalogue")]
    person = next(r for r in default_rows(work, "people") if r["user_id"] == user)
    orders = sorted(
        (r for r in default_rows(work, "orders") if r["user_id"] == user), key=lambda r: r["timestamp"]
    )
    bought = [r["item_id"] for r in orders]
    row = {"customer": user, "age": person["age"], "purchases": bought}
    items = torch_vectors(towers["item"], TowerEncoder(manifest.features, "item"), catalog)
    u = torch_vectors(towers["user"], TowerEncoder(manifest.features, "user"), [row])[0]
    return [catalog[j]["sku"] for j in np.argsort(-(items @ u), kind="stable")], bought


def check_stored_user(client: TestClient, ranked: list[str], bought: list[str]) -> None:
    """A user by id only: features and purchases from the store, not cold; the purchases are not
    recalled; /score of the recalled items by id gives the recalled scores."""
    r = client.post("/recall", json={"user_id": "u3", "k": 10, "model_version": "own-dot"})
    assert r.status_code == 200, r.text
    assert r.json()["cold_start"] is False
    recalled = [(it["item_id"], it["score"]) for it in r.json()["items"]]
    assert [i for i, _ in recalled] == [i for i in ranked if i not in bought][:10]
    r = client.post(
        "/score",
        json={"user_id": "u3", "model_version": "own-dot", "items": [{"item_id": i} for i, _ in recalled]},
    )
    assert r.status_code == 200, r.text
    for (item, recall_score), s in zip(recalled, r.json()["scores"], strict=True):
        assert s["score"] == pytest.approx(recall_score, rel=1e-4, abs=1e-4), item


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_own_names_are_served(
    fmt: str, work: Path, towers: dict[str, Any], own_version: Path, tmp_path: Path
) -> None:
    """Ids, history, tables and interactions columns under the schema's own names ("customer",
    "sku", "purchases"; people, catalogue, orders with who/what/when): `twotower reindex` builds
    from the files, the in-process store serves the stored user, /recall excludes the purchases
    and /score (by id, and with an item's features) gives the score the index holds."""
    store, index = own_version, tmp_path / "index"
    data = write_own_data(work, tmp_path / "data", dict.fromkeys(OWN_COLUMNS, fmt))
    env = {
        "TWOTOWER_MODEL_STORE": str(store),
        "TWOTOWER_INDEX_STORE": str(index),
        "TWOTOWER_DATA_DIR": str(data),
    }
    out = cli("reindex", "--model-version", "own-dot", env=env)
    assert out.returncode == 0, out.stderr
    ranked, bought = own_reference(work, towers, store, "u3")
    settings = Settings(
        model_store=store,
        index_store=index,
        data_dir=data,
        reindex_on_start=False,
        worker=False,
        shutdown_drain_s=0,
    )
    catalog = {r["item_id"]: r for r in default_rows(work, "catalogue")}
    with TestClient(create_app(settings)) as client:
        check_stored_user(client, ranked, bought)
        # Features sent with the request (the history under its own name too) override the stored
        # ones; an item sent with its features scores as the index holds it.
        sent = ["i4", "i9", "i17"]
        features = {"age": 29, "purchases": sent}
        r = client.post(
            "/recall", json={"user_id": "u3", "features": features, "k": 10, "model_version": "own-dot"}
        )
        recalled = [(it["item_id"], it["score"]) for it in r.json()["items"]]
        assert not set(sent) & {i for i, _ in recalled}
        items = [
            {"item_id": i, "features": {k: v for k, v in catalog[i].items() if k != "item_id"}}
            for i, _ in recalled
        ]
        r = client.post(
            "/score", json={"user_id": "u3", "features": features, "model_version": "own-dot", "items": items}
        )
        assert r.status_code == 200, r.text
        for (item, recall_score), s in zip(recalled, r.json()["scores"], strict=True):
            assert s["score"] == pytest.approx(recall_score, rel=1e-4, abs=1e-4), item


def test_own_names_load_into_redis(
    work: Path, towers: dict[str, Any], own_version: Path, tmp_path: Path, redis_url: str
) -> None:
    """`twotower load` reads the own-names files (one table per format) with the served version's
    names into Redis; `twotower reindex` builds from Redis's catalog; a replica without data files
    serves the user by id from Redis."""
    store, index = own_version, tmp_path / "index"
    data = write_own_data(
        work, tmp_path / "data", {"people": "parquet", "catalogue": "csv", "orders": "jsonl"}
    )
    env = {
        "TWOTOWER_MODEL_STORE": str(store),
        "TWOTOWER_INDEX_STORE": str(index),
        "TWOTOWER_REDIS_URL": redis_url,
    }
    # The default-named files loaded with the default-named schema: a build of the own-names
    # version cannot use that catalog, and says so.
    out = cli("load", "--data", str(work / "data"), "--schema", str(work / "schema.toml"), env=env)
    assert out.returncode == 0 and "(schema " in out.stdout, out.stderr
    out = cli("reindex", "--model-version", "own-dot", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "the catalog in Redis has no column 'sku'" in out.stderr, out.stderr
    # The own-names files, read with the served version's names (no option needed).
    out = cli("load", "--data", str(data), env=env)
    assert out.returncode == 0, out.stderr
    assert "loaded 12 users and 150 items" in out.stdout and "served model versions" in out.stdout
    ranked, bought = own_reference(work, towers, store, "u3")
    r = redis.Redis.from_url(redis_url)
    stored = json.loads(r.get("tt:user:u3") or b"{}")
    assert stored == {"age": stored["age"], "purchases": bought}  # the raw id is the key, not a feature
    assert json.loads(r.hget("tt:items", "i7") or b"{}")["sku"] == "i7"
    r.close()
    out = cli("reindex", "--model-version", "own-dot", env=env)
    assert out.returncode == 0, out.stderr
    settings = Settings(
        model_store=store,
        index_store=index,
        data_dir=None,
        redis_url=redis_url,
        reindex_on_start=False,
        worker=False,
        shutdown_drain_s=0,
    )
    with TestClient(create_app(settings)) as client:
        check_stored_user(client, ranked, bought)


@pytest.mark.parametrize(
    ("table", "column", "fmt", "command", "what"),
    [
        ("orders", "when", "csv", "load", "the interactions' timestamp column"),
        ("people", "customer", "parquet", "load", "the id column"),
        ("catalogue", "price", "jsonl", "reindex", "field 'price'"),
        ("catalogue", "sku", "parquet", "reindex", "the id column"),
    ],
)
def test_own_names_missing_column(
    table: str,
    column: str,
    fmt: str,
    command: str,
    what: str,
    work: Path,
    own_version: Path,
    tmp_path: Path,
    redis_url: str,
) -> None:
    """A column the schema names and the data lacks: exit 2, the file and the column named, no
    traceback, nothing loaded."""
    data = write_own_data(work, tmp_path / "data", dict.fromkeys(OWN_COLUMNS, fmt), drop=(table, column))
    env = {
        "TWOTOWER_MODEL_STORE": str(own_version),
        "TWOTOWER_INDEX_STORE": str(tmp_path / "index"),
        "TWOTOWER_DATA_DIR": str(data),
    }
    if command == "load":
        which = ["--model-version", "own-dot"] if table == "orders" else []  # named, or the served one
        out = cli("load", "--data", str(data), *which, env={**env, "TWOTOWER_REDIS_URL": redis_url})
    else:
        out = cli("reindex", "--model-version", "own-dot", env=env)
    assert out.returncode == 2, out.stdout
    assert "Traceback" not in out.stderr
    assert f"{data / f'{table}.{fmt}'}: no column {column!r} ({what})" in out.stderr, out.stderr
    r = redis.Redis.from_url(redis_url)
    assert r.dbsize() == 0
    r.close()
    assert not (tmp_path / "index" / "own-dot" / "CURRENT").exists()


# --- mismatched towers: refused, named, nothing written ------------------------------------------


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


BAD: dict[str, tuple[str, Callable[[Path], Path], tuple[str, ...]]] = {
    # case: (which tower is bad, how to export it, what the message must name)
    "wrong input name": (
        "item",
        lambda d: export(
            ItemWrongName(),
            d / "item_cost.onnx",
            {("cost" if k == "price" else k): v for k, v in item_inputs().items()},
        ),
        ("item_cost.onnx", "input 'cost'", "not a field"),
    ),
    "int32 dtype": (
        "user",
        lambda d: export(UserInt32(), d / "user_int32.onnx", user_inputs(id_dtype=torch.int32), ("history",)),
        ("user_int32.onnx", "input 'user_id'", "is int32, the schema encodes int64"),
    ),
    "rank 2 where rank 1": (
        "item",
        lambda d: export(
            ItemRank2(), d / "item_rank2.onnx", {**item_inputs(), "price": item_inputs()["price"][:, None]}
        ),
        ("item_rank2.onnx", "input 'price'", "has rank 2"),
    ),
    "output dims differ": (
        "item",
        lambda d: export(ItemTower(dim=DIM // 2), d / "item_dim8.onnx", item_inputs()),
        ("item_dim8.onnx", f"[batch, {DIM // 2}]", f"[batch, {DIM}]", "same dim"),
    ),
    "NaN output": (
        "user",
        lambda d: export(UserNaN(), d / "user_nan.onnx", user_inputs(), ("history",)),
        ("user_nan.onnx", "gives a vector with NaN", "sample row 0"),
    ),
    "missing input": (
        "item",
        lambda d: export(
            ItemNoTags(), d / "item_notags.onnx", {k: v for k, v in item_inputs().items() if k != "tags"}
        ),
        ("item_notags.onnx", "no input for schema field(s) 'tags'", "--allow-unused-fields"),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_mismatched_tower_is_refused(case: str, work: Path, towers: dict[str, Any], tmp_path: Path) -> None:
    side, make, needles = BAD[case]
    bad = make(tmp_path)
    store = tmp_path / "models"
    store.mkdir()
    (store / "keep").mkdir()  # something already there must stay as it was
    before = _tree(store)
    user = bad if side == "user" else towers["user_path"]
    item = bad if side == "item" else towers["item_path"]
    out = cli(*import_cmd(work, store, user, item), "--version", "bad")
    assert out.returncode == 2, out.stdout
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, f"{case}: {needle!r} not in {out.stderr!r}"
    assert _tree(store) == before
    assert list_versions(store) == []


def test_unused_field_is_accepted_when_allowed(work: Path, towers: dict[str, Any], tmp_path: Path) -> None:
    item = export(
        ItemNoTags(), tmp_path / "item_notags.onnx", {k: v for k, v in item_inputs().items() if k != "tags"}
    )
    store = tmp_path / "models"
    out = cli(*import_cmd(work, store, towers["user_path"], item), "--version", "v1", "--allow-unused-fields")
    assert out.returncode == 0, out.stderr
    assert "schema field 'tags' is not an input of item_notags.onnx" in out.stdout
    manifest = load_version(store, "v1")
    assert manifest.training["imported_from"]["item"]["unused_fields"] == ["tags"]
