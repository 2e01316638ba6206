"""`twotower import`'s checks, one ONNX graph per rule (built with onnx.helper: exact dtypes and shapes),
and the store left untouched by every refusal, a full disk included."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.cli import main
from models.errors import ManifestError, SchemaError, TowerRefused, VersionExists
from models.features import FeatureSchema
from models.importer import import_version, load_import_schema
from models.manifest import list_versions, load_version, sha256_file
from models.samples import UNKNOWN, read_sample_rows, sample_rows
from models.tower_checks import TowerFile, check_towers
from models.transform import TowerEncoder

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DIM = 4
F, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32

SCHEMA = """
[user]
id = "user_id"

[[user.fields]]
name = "user_id"
kind = "categorical"
vocab_file = "users.txt"

[[user.fields]]
name = "age"
kind = "numeric"
mean = 40.0
std = 10.0

[[user.fields]]
name = "history"
kind = "sequence"
vocab = "item_id"
max_len = 3
from_interactions = true

[item]
id = "item_id"

[[item.fields]]
name = "item_id"
kind = "categorical"
vocab_file = "items.txt"

[[item.fields]]
name = "tags"
kind = "multi_hot"
vocab_file = "tags.txt"

[[item.fields]]
name = "title"
kind = "hashed_words"
hash_size = 50
max_len = 4

[[item.fields]]
name = "emb"
kind = "vector"
dim = 3

[[item.fields]]
name = "zone"
kind = "hashed"
hash_size = 10

[[item.fields]]
name = "year"
kind = "bucket"
boundaries = [1990, 2000]
"""

# name -> (elem type, shape) of the inputs a correct tower declares
USER = {"user_id": (I64, ["batch"]), "age": (F, ["batch"]), "history": (I64, ["batch", "len"])}
ITEM = {
    "item_id": (I64, ["batch"]),
    "tags": (F, ["batch", 4]),
    "title": (I64, ["batch", "words"]),
    "emb": (F, ["batch", 3]),
    "zone": (I64, ["batch"]),
    "year": (I64, ["batch"]),
}


def tower(
    inputs: dict[str, tuple[int, list[Any]]],
    dim: int = DIM,
    body: str = "ok",
    out_type: int = F,
    seed: int = 0,
) -> bytes:
    """A tower graph: [B, dim] = (float(first input) + 1) * W, with variants that break one rule.

    body: ok | nan (0/0) | batch (minus the batch mean: rows see each other) | gather (a 3-row
    table indexed by the id: fails past index 2) | rank1 (output [B])
    """
    first = next(iter(inputs))
    w = np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", [first], ["f"], to=F),
        helper.make_node("Unsqueeze", ["f", "axis1"], ["f2"]),
        helper.make_node("Add", ["f2", "one"], ["g"]),
        helper.make_node("Mul", ["g", "w"], ["y"]),
    ]
    inits = [
        helper.make_tensor("axis1", I64, [1], [1]),
        helper.make_tensor("axis0", I64, [1], [0]),
        helper.make_tensor("one", F, [], [1.0]),
        helper.make_tensor("w", F, [1, dim], w.ravel().tolist()),
        helper.make_tensor("table", F, [3, dim], np.ones(3 * dim, dtype=np.float32).tolist()),
    ]
    out_shape: list[Any] = ["batch", dim]
    if body == "ok":
        nodes.append(helper.make_node("Identity", ["y"], ["out"]))
    elif body == "nan":
        nodes += [helper.make_node("Sub", ["y", "y"], ["z"]), helper.make_node("Div", ["z", "z"], ["out"])]
    elif body == "batch":
        nodes += [
            helper.make_node("ReduceMean", ["y", "axis0"], ["m"], keepdims=1),
            helper.make_node("Sub", ["y", "m"], ["out"]),
        ]
    elif body == "gather":
        nodes += [
            helper.make_node("Gather", ["table", first], ["e"]),
            helper.make_node("Add", ["y", "e"], ["out"]),
        ]
    elif body == "rank1":
        nodes.append(helper.make_node("ReduceSum", ["y", "axis1"], ["out"], keepdims=0))
        out_shape = ["batch"]
    if out_type != F:
        nodes[-1].output[0] = "out_f"
        nodes.append(helper.make_node("Cast", ["out_f"], ["out"], to=out_type))
    graph = helper.make_graph(
        nodes,
        "tower",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info("out", out_type, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture
def schema_path(tmp_path: Path) -> Path:
    (tmp_path / "users.txt").write_text("u1\nu2\nu3\n")
    (tmp_path / "items.txt").write_text("\n".join(f"i{n}" for n in range(1, 11)) + "\n")
    (tmp_path / "tags.txt").write_text("a\nb\nc\nd\n")
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA)
    return path


@pytest.fixture
def schema(schema_path: Path) -> FeatureSchema:
    return load_import_schema(schema_path)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --- a good pair ---------------------------------------------------------------------------------


def test_good_towers_become_an_immutable_version(tmp_path: Path, schema: FeatureSchema) -> None:
    user = write(tmp_path, "u.onnx", tower(USER))
    item = write(tmp_path, "i.onnx", tower(ITEM, seed=1))
    store = tmp_path / "store"
    imported = import_version(store, schema, user, item, version="ext-1", similarity="dot")
    m = load_version(store, "ext-1")
    assert (m.source, m.similarity, m.dim) == ("import", "dot", DIM)
    assert m.files["user_tower.onnx"] == sha256_file(user)
    assert m.files["item_tower.onnx"] == sha256_file(item)
    assert m.features.vocabularies["tags"] == ("a", "b", "c", "d")
    assert m.features.user.field("age").mean == 40.0
    assert m.outputs == {"user": "out", "item": "out"}
    assert [i["name"] for i in m.inputs["item"]] == list(ITEM)
    assert {c.rows_checked for c in imported.checks.values()} == {9}
    raw = json.loads((store / "ext-1" / "manifest.json").read_text())
    assert raw["source"] == "import" and raw["training"]["imported_from"]["user"]["file"] == str(user)
    with pytest.raises(VersionExists):  # before any check: the missing file is never read
        import_version(store, schema, user, tmp_path / "missing.onnx", version="ext-1")
    with pytest.raises(ManifestError, match="invalid version tag"):
        import_version(store, schema, user, tmp_path / "missing.onnx", version="no spaces")
    assert list_versions(store) == ["ext-1"]


def test_sample_rows_cover_missing_unknown_and_overlong(schema: FeatureSchema) -> None:
    rows = sample_rows(schema, "item")
    assert rows[0] == {}  # everything missing
    assert any(r.get("item_id") == UNKNOWN for r in rows)
    assert any(r.get("item_id") == "i1" for r in rows) and any(r.get("item_id") == "i10" for r in rows)
    assert any(r.get("tags") == [] for r in rows) and any(UNKNOWN in r.get("tags", []) for r in rows)
    assert any(len(str(r.get("title", "")).split()) > 4 for r in rows)
    assert any(r.get("emb") == [0.0, 0.0, 0.0] for r in rows)
    arrays = TowerEncoder(schema, "item").encode(rows)
    assert arrays["item_id"][0] == 0 and arrays["title"].shape[1] == 4  # truncated to max_len
    users = sample_rows(schema, "user")
    assert any(len(r.get("history", [])) > 3 for r in users)
    assert TowerEncoder(schema, "user").encode(users)["history"].shape[1] == 3


# --- refusals ------------------------------------------------------------------------------------


def _with(base: dict[str, tuple[int, list[Any]]], **changes: Any) -> dict[str, tuple[int, list[Any]]]:
    out = dict(base)
    for name, value in changes.items():
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


STATIC: dict[str, tuple[str, Callable[[], bytes], tuple[str, ...]]] = {
    "unknown input": (
        "item",
        lambda: tower({**ITEM, "colour": (I64, ["batch"])}),
        ("input 'colour' is not a field of the schema's item tower",),
    ),
    "int32": (
        "user",
        lambda: tower(_with(USER, user_id=(I32, ["batch"]))),
        ("'user_id'", "is int32", "int64"),
    ),
    "float64": (
        "user",
        lambda: tower(_with(USER, age=(TensorProto.DOUBLE, ["batch"]))),
        ("'age'", "is float64"),
    ),
    "rank 2 for rank 1": (
        "user",
        lambda: tower(_with(USER, age=(F, ["batch", 1]))),
        ("'age'", "has rank 2", "rank 1"),
    ),
    "rank 1 for rank 2": (
        "user",
        lambda: tower(_with(USER, history=(I64, ["batch"]))),
        ("'history'", "has rank 1", "rank 2"),
    ),
    "fixed batch": ("user", lambda: tower(_with(USER, age=(F, [1]))), ("'age'", "fixed batch axis of 1")),
    "fixed length": (
        "user",
        lambda: tower(_with(USER, history=(I64, ["batch", 3]))),
        ("'history'", "fixed length of 3", "dynamic"),
    ),
    "multi_hot width": (
        "item",
        lambda: tower(_with(ITEM, tags=(F, ["batch", 5]))),
        ("'tags'", "width 5", "4"),
    ),
    "vector width": ("item", lambda: tower(_with(ITEM, emb=(F, ["batch", 8]))), ("'emb'", "width 8", "3")),
    "missing input": (
        "item",
        lambda: tower(_with(ITEM, zone=None)),
        ("no input for schema field(s) 'zone'",),
    ),
    "int output": ("item", lambda: tower(ITEM, out_type=I64), ("output 'out' is int64",)),
    "rank 1 output": ("item", lambda: tower(ITEM, body="rank1"), ("output 'out' has shape ['batch']",)),
}


@pytest.mark.parametrize("case", sorted(STATIC))
def test_mismatch_is_refused_naming_file_and_input(case: str, tmp_path: Path, schema: FeatureSchema) -> None:
    side, make, needles = STATIC[case]
    good = {"user": tower(USER), "item": tower(ITEM, seed=1)}
    good[side] = make()
    user = write(tmp_path, "u.onnx", good["user"])
    item = write(tmp_path, "i.onnx", good["item"])
    store = tmp_path / "store"
    with pytest.raises(TowerRefused) as info:
        import_version(store, schema, user, item, version="v1")
    msg = str(info.value)
    assert f"{user if side == 'user' else item} ({side} tower)" in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert not store.exists()


def test_every_static_problem_is_listed_at_once(tmp_path: Path, schema: FeatureSchema) -> None:
    user = write(tmp_path, "u.onnx", tower(_with(USER, user_id=(I32, ["batch"]), age=(F, ["batch", 1]))))
    item = write(tmp_path, "i.onnx", tower(_with(ITEM, zone=None), seed=1))
    with pytest.raises(TowerRefused) as info:
        check_towers(schema, TowerFile.read("user", user), TowerFile.read("item", item))
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "'user_id'" in lines[0] and "'age'" in lines[1] and "'zone'" in lines[2]


def test_unused_field_allowed_on_request(tmp_path: Path, schema: FeatureSchema) -> None:
    user = write(tmp_path, "u.onnx", tower(USER))
    item = write(tmp_path, "i.onnx", tower(_with(ITEM, zone=None), seed=1))
    imported = import_version(tmp_path / "s", schema, user, item, version="v1", allow_unused=True)
    assert imported.checks["item"].unused == ("zone",)
    assert "'zone' is not an input of i.onnx" in imported.checks["item"].notes[0]


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("nan", ("sample row 0 {} gives a vector with NaN",)),
        ("gather", ("fails on sample row", "'user_id': 'u3'", "indices")),
        ("batch", ("gives another vector alone than in a batch", "eval mode")),
    ],
)
def test_graph_refused_on_sample_rows(
    body: str, needles: tuple[str, ...], tmp_path: Path, schema: FeatureSchema
) -> None:
    user = write(tmp_path, "u.onnx", tower(USER, body=body))
    item = write(tmp_path, "i.onnx", tower(ITEM, seed=1))
    with pytest.raises(TowerRefused) as info:
        import_version(tmp_path / "store", schema, user, item)
    assert str(info.value).startswith(f"{user} (user tower): ")
    for needle in needles:
        assert needle in str(info.value)
    assert not (tmp_path / "store").exists()


def test_output_dims_must_agree(tmp_path: Path, schema: FeatureSchema) -> None:
    user = write(tmp_path, "u.onnx", tower(USER, dim=4))
    item = write(tmp_path, "i.onnx", tower(ITEM, dim=6))
    with pytest.raises(TowerRefused, match=r"gives \[batch, 4\] .* gives \[batch, 6\]: both towers"):
        import_version(tmp_path / "store", schema, user, item)


def test_not_onnx_and_missing_file(tmp_path: Path, schema: FeatureSchema) -> None:
    user = write(tmp_path, "u.onnx", b"not a model")
    item = write(tmp_path, "i.onnx", tower(ITEM))
    with pytest.raises(TowerRefused, match=r"u\.onnx: not a loadable ONNX model"):
        import_version(tmp_path / "store", schema, user, item)
    with pytest.raises(TowerRefused, match=r"nope\.onnx: cannot read the item tower"):
        import_version(tmp_path / "store", schema, user, tmp_path / "nope.onnx")


def test_external_weights_are_refused_with_the_fix(tmp_path: Path, schema: FeatureSchema) -> None:
    model = onnx.load_from_string(tower(USER))
    for t in model.graph.initializer:  # raw_data, which is what goes to an external file
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
    onnx.save_model(model, str(tmp_path / "u.onnx"), save_as_external_data=True, size_threshold=0)
    item = write(tmp_path, "i.onnx", tower(ITEM))
    with pytest.raises(TowerRefused, match=r"external data file.*external_data=False"):
        import_version(tmp_path / "store", schema, tmp_path / "u.onnx", item)


# --- the schema must give what training would have learned ---------------------------------------


def test_vocabulary_without_file_is_refused(schema_path: Path) -> None:
    schema_path.write_text(SCHEMA.replace('vocab_file = "tags.txt"\n', ""))
    with pytest.raises(
        SchemaError, match=r"schema\.toml: item\.fields\.tags: vocabulary 'tags' has no vocab_file"
    ):
        load_import_schema(schema_path)


def test_numeric_without_statistics_is_refused(schema_path: Path) -> None:
    schema_path.write_text(SCHEMA.replace("mean = 40.0\nstd = 10.0\n", ""))
    with pytest.raises(SchemaError, match=r"user\.fields\.age: numeric field has no mean/std"):
        load_import_schema(schema_path)


def test_sample_data_rows_run_too(tmp_path: Path, schema: FeatureSchema) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "users.jsonl").write_text('{"user_id": "u2", "age": 33}\n')
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu2,i1,1\nu2,i4,2\n")
    (data / "items.jsonl").write_text(
        "".join(
            json.dumps(
                {"item_id": i, "tags": ["a"], "emb": [1, 2, 3], "year": 1995, "title": "Red", "zone": "z"}
            )
            + "\n"
            for i in ("i8", "i9")
        )
    )
    user = write(tmp_path, "u.onnx", tower(USER, body="gather"))  # a 3-row table: u3 (index 3) fails
    item = write(tmp_path, "i.onnx", tower(ITEM))
    extra = read_sample_rows(schema, data)
    assert extra["user"] == [{"user_id": "u2", "age": 33.0, "history": ["i1", "i4"]}]
    checks = check_towers(
        schema,
        TowerFile.read("user", write(tmp_path, "ok.onnx", tower(USER))),
        TowerFile.read("item", item),
        extra_rows=extra,
    )
    assert (checks["user"].rows_checked, checks["item"].rows_checked) == (10, 11)
    with pytest.raises(TowerRefused, match="fails on sample row"):
        check_towers(schema, TowerFile.read("user", user), TowerFile.read("item", item), extra_rows=extra)


# --- the CLI: exit codes, no traceback, nothing half-written -------------------------------------


def _cli(args: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_cli_writes_into_the_configured_store(tmp_path: Path, schema_path: Path) -> None:
    user = write(tmp_path, "u.onnx", tower(USER))
    item = write(tmp_path, "i.onnx", tower(ITEM))
    store = tmp_path / "configured"
    args = ["import", "--schema", str(schema_path), "--user-tower", str(user), "--item-tower", str(item)]
    out = _cli([*args, "--version", "v1", "--similarity", "dot"], {"TWOTOWER_MODEL_STORE": str(store)})
    assert out.returncode == 0, out.stderr
    assert "wrote model version v1 (dot, dim 4)" in out.stdout
    assert list_versions(store) == ["v1"]
    out = _cli([*args, "--version", "v1"], {"TWOTOWER_MODEL_STORE": str(store)})
    assert out.returncode == 2 and "already exists" in out.stderr and "Traceback" not in out.stderr


def test_cli_refuses_the_packaged_demo_store(
    tmp_path: Path, schema_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TWOTOWER_MODEL_STORE", raising=False)
    monkeypatch.delenv("TWOTOWER_CONFIG_JSON", raising=False)
    user = write(tmp_path, "u.onnx", tower(USER))
    item = write(tmp_path, "i.onnx", tower(ITEM))
    before = tree(ROOT / "models" / "demo")
    code = main(
        ["import", "--schema", str(schema_path), "--user-tower", str(user), "--item-tower", str(item)]
    )
    assert code == 2
    assert "demo model store inside the package" in capsys.readouterr().err
    assert tree(ROOT / "models" / "demo") == before


def _limit_file_size() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_disk_full_mid_write_leaves_nothing(tmp_path: Path, schema_path: Path) -> None:
    """A real fault half-way through the write: the towers pass every check, then copying a 400 KB
    tower into the version's temporary directory fails with EFBIG (RLIMIT_FSIZE)."""
    user = write(tmp_path, "u.onnx", tower(USER, dim=25_000))  # ~100k floats of weights
    item = write(tmp_path, "i.onnx", tower(ITEM, dim=25_000))
    assert user.stat().st_size > 64 * 1024
    store = tmp_path / "store"
    (store / "old").mkdir(parents=True)
    before = tree(store)
    args = ["import", "--schema", str(schema_path), "--user-tower", str(user), "--item-tower", str(item)]
    out = _cli([*args, "--model-store", str(store), "--version", "v1"], preexec_fn=_limit_file_size)
    assert out.returncode == 2, out.stdout
    assert "cannot write to" in out.stderr and "Traceback" not in out.stderr
    assert tree(store) == before  # not even the temporary directory is left
    ok = _cli([*args, "--model-store", str(store), "--version", "v1"])  # the same tag works afterwards
    assert ok.returncode == 0, ok.stderr


def test_import_runs_without_torch_or_onnx(tmp_path: Path, schema_path: Path) -> None:
    """The serving image has neither: the whole import, checks and write, runs with both blocked."""
    user = write(tmp_path, "u.onnx", tower(USER))
    item = write(tmp_path, "i.onnx", tower(ITEM))
    args = ["import", "--schema", str(schema_path), "--user-tower", str(user), "--item-tower", str(item)]
    args += ["--model-store", str(tmp_path / "store"), "--version", "v1"]
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "sys.modules['onnx'] = None\n"
        "from app.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert list_versions(tmp_path / "store") == ["v1"]
