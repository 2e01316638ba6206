"""The schema file: every kind and parameter loads; every mistake is a SchemaError naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.errors import SchemaError
from models.features import KINDS, FeatureSchema
from models.layout import DataLayout
from models.manifest import list_versions, load_version
from models.schema import COMMON, PARAMS, load_schema
from models.transform import TowerEncoder
from tests.conftest import DEMO_STORE

ROOT = Path(__file__).resolve().parents[2]
MOVIELENS = ROOT / "examples" / "movielens" / "schema.toml"

# Every kind, every parameter, a vocabulary file, defaults, a filterable field, other column names.
FULL = """
format = 1

[data]
users = "customers"
items = "catalog"
interactions = "orders"

[interactions]
user = "customer"
item = "sku"
timestamp = "ts"

[user]
id = "customer_id"

[[user.fields]]
name = "customer_id"
kind = "categorical"

[[user.fields]]
name = "segment"
kind = "categorical"
vocab_file = "vocab/segment.txt"
default = "retail"

[[user.fields]]
name = "country"
kind = "hashed"
hash_size = 100
prefix = 2

[[user.fields]]
name = "age"
kind = "bucket"
boundaries = [18, 30, 50]
default = 40

[[user.fields]]
name = "recent"
kind = "sequence"
vocab = "item_id"
max_len = 5
from_interactions = true

[item]
id = "item_id"

[[item.fields]]
name = "item_id"
kind = "categorical"

[[item.fields]]
name = "price"
source = "price_eur"
kind = "numeric"
log = true
filterable = true
default = 10.0

[[item.fields]]
name = "weight"
kind = "numeric"
mean = 2.0
std = 0.5

[[item.fields]]
name = "emb"
kind = "vector"
dim = 4
default = [0.0, 0.0, 0.0, 1.0]

[[item.fields]]
name = "tags"
kind = "multi_hot"
vocab = "tag"
filterable = true

[[item.fields]]
name = "title"
kind = "hashed_words"
hash_size = 50
max_len = 3
"""

USERS = [
    {"customer_id": "c2", "segment": "pro", "country": "DE", "age": 33, "recent": ["i1"]},
    {"customer_id": "c1", "country": "FR", "recent": []},
]
ITEMS = [
    {
        "item_id": "i2",
        "price_eur": 99.0,
        "weight": 1.0,
        "emb": [1, 2, 3, 4],
        "tags": ["b", "a"],
        "title": "X",
    },
    {"item_id": "i1", "price_eur": 9.0, "tags": ["c"]},
]


def write(tmp_path: Path, text: str, vocab: bool = True) -> Path:
    if vocab:
        (tmp_path / "vocab").mkdir(exist_ok=True)
        (tmp_path / "vocab" / "segment.txt").write_text("retail\npro\n\n")
    path = tmp_path / "schema.toml"
    path.write_text(text)
    return path


def test_every_kind_and_parameter_loads(tmp_path: Path) -> None:
    sf = load_schema(write(tmp_path, FULL))
    assert sf.layout == DataLayout(
        users="customers",
        items="catalog",
        interactions="orders",
        user_id="customer_id",
        item_id="item_id",
        inter_user="customer",
        inter_item="sku",
        timestamp="ts",
        history=("recent",),
    )
    kinds = {f.name: f.kind for _, f in sf.fields}
    assert set(kinds.values()) == {
        "categorical",
        "hashed",
        "bucket",
        "numeric",
        "vector",
        "multi_hot",
        "sequence",
        "hashed_words",
    }
    assert sf.vocab_files == {"segment": ("retail", "pro")}
    assert sf.learned_vocabularies == ("customer_id", "item_id", "tag")
    price = sf.item.field("price")
    assert (price.source, price.log, price.filterable, price.default, price.mean) == (
        "price_eur",
        True,
        True,
        10.0,
        None,
    )
    assert [f.name for f in sf.item.filterable] == ["price", "tags"]
    assert sf.user.field("recent").from_interactions and sf.item.field("emb").default == (0.0, 0.0, 0.0, 1.0)
    assert sf.user.field("country").prefix == 2 and sf.user.field("age").boundaries == (18.0, 30.0, 50.0)


def test_learn_fills_vocabularies_and_statistics(tmp_path: Path) -> None:
    schema = load_schema(write(tmp_path, FULL)).learn(USERS, ITEMS)
    assert schema.vocabularies == {
        "customer_id": ("c1", "c2"),
        "item_id": ("i1", "i2"),
        "segment": ("retail", "pro"),  # file order, not sorted
        "tag": ("a", "b", "c"),
    }
    price = schema.item.field("price")
    logs = np.log1p([99.0, 9.0])
    assert price.mean == pytest.approx(logs.mean()) and price.std == pytest.approx(logs.std())
    weight = schema.item.field("weight")
    assert (weight.mean, weight.std) == (2.0, 0.5)  # given: not learned


def test_resolved_schema_round_trips_through_the_manifest_form(tmp_path: Path) -> None:
    schema = load_schema(write(tmp_path, FULL)).learn(USERS, ITEMS)
    again = FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema
    rows = [*ITEMS, {"item_id": "new"}]
    a, b = TowerEncoder(schema, "item").encode(rows), TowerEncoder(again, "item").encode(rows)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resolve_without_data_needs_vocab_files(tmp_path: Path) -> None:
    sf = load_schema(write(tmp_path, FULL))
    with pytest.raises(SchemaError, match=r"schema.toml: user.fields.customer_id: vocabulary 'customer_id'"):
        sf.resolve()
    schema = sf.resolve({"customer_id": ["c1"], "item_id": ["i1"], "tag": ["a"]})
    price = schema.item.field("price")
    assert (price.mean, price.std) == (0.0, 1.0)  # nothing learned: passed through


def test_movielens_schema_is_the_demo_feature_set() -> None:
    versions = list_versions(DEMO_STORE)
    assert versions, "no demo version"
    demo = load_version(DEMO_STORE, versions[-1]).features
    ours = load_schema(MOVIELENS).resolve(demo.vocabularies)
    assert ours == demo  # the demo was trained from this file: fields, vocabularies, layout
    assert ours.layout == DataLayout()  # the project's own file names and columns


BAD = [
    ('name = "price"\nsource = "price_eur"\nkind = "numeric"', 'name = "price"\nkind = "float"',
     "item.fields.price: unknown kind 'float'"),
    ("mean = 2.0\nstd = 0.5", "mean_ = 2.0", "item.fields.weight: unknown parameter 'mean_'"),
    ("mean = 2.0\nstd = 0.5", "mean = 2.0", "item.fields.weight: give both 'mean' and 'std'"),
    ("mean = 2.0\nstd = 0.5", "mean = 2.0\nstd = 0", "item.fields.weight: 'std' must be a finite number > 0"),
    ('vocab_file = "vocab/segment.txt"', 'vocab_file = "vocab/nope.txt"',
     "user.fields.segment: vocab_file '"),
    ("boundaries = [18, 30, 50]\ndefault = 40", "boundaries = [18, 30, 50]\ndefault = 40\nfilterable = true",
     "user.fields.age: 'filterable' is for item fields only"),
    ('default = "retail"', "default = 3", "user.fields.segment.default: expected a string, got int"),
    ("default = [0.0, 0.0, 0.0, 1.0]", "default = [0.0, 1.0]",
     "item.fields.emb.default: expected 4 numbers, got 2"),
    ("boundaries = [18, 30, 50]", "boundaries = [18, 50, 30]",
     "user.fields.age: 'boundaries' must be strictly"),
    ("boundaries = [18, 30, 50]", "boundaries = []",
     "user.fields.age: 'boundaries' must be a non-empty list"),
    ("hash_size = 100\nprefix = 2", "prefix = 2", "user.fields.country: missing parameter 'hash_size'"),
    ("hash_size = 100", "hash_size = 1", "user.fields.country: 'hash_size' must be an integer >= 2"),
    ("dim = 4", "dim = 0", "item.fields.emb: 'dim' must be an integer >= 1"),
    ("dim = 4", 'dim = "4"', "item.fields.emb: 'dim' must be an integer >= 1"),
    ("max_len = 5\n", "", "user.fields.recent: missing parameter 'max_len'"),
    ('name = "weight"', 'name = "price"', "item.fields.price: duplicate field name"),
    ("format = 1", "format = 9", "format: unsupported format 9"),
    ("format = 1", "format = true", "format: unsupported format True"),
    ("[data]", "[datas]", "datas: unknown table or key"),
    ('users = "customers"', 'user = "customers"', "data: unknown parameter 'user'"),
    ('id = "item_id"', "", "item.id: missing"),
    ("log = true", 'log = "yes"', "item.fields.price: 'log' must be true or false"),
    ('name = "title"\nkind = "hashed_words"\nhash_size = 50\nmax_len = 3',
     'name = "title"\nkind = "hashed_words"\nhash_size = 50\nmax_len = 3\nfrom_interactions = true',
     "item.fields.title: unknown parameter 'from_interactions' for kind 'hashed_words'"),
    ('name = "customer_id"\nkind = "categorical"', 'name = ""\nkind = "categorical"',
     "user.fields[0]: 'name' must be a non-empty string"),
    ("default = 10.0", "default = -1e400", "item.fields.price.default: must be a finite number"),
    ("default = 10.0", "default = -2", "item.fields.price.default: must be greater than -1"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "message"), BAD, ids=[m.split(":")[0] + ":" + m.split(":")[1] for *_, m in BAD]
)
def test_each_mistake_names_file_field_and_problem(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in FULL
    path = write(tmp_path, FULL.replace(old, new, 1))
    with pytest.raises(SchemaError) as exc:
        load_schema(path)
    assert str(exc.value).startswith(f"{path}: "), str(exc.value)
    assert message in str(exc.value), str(exc.value)


def test_missing_tower_file_and_bad_toml(tmp_path: Path) -> None:
    no_item = FULL[: FULL.index("[item]")]
    with pytest.raises(SchemaError, match=r"schema.toml: item: missing table \[item\]"):
        load_schema(write(tmp_path, no_item))
    with pytest.raises(SchemaError, match=r"schema.toml: not valid TOML"):
        load_schema(write(tmp_path, FULL + "\n[[user.fields]\n"))
    with pytest.raises(SchemaError, match=r"nope.toml: not found"):
        load_schema(tmp_path / "nope.toml")
    write(tmp_path, FULL)
    (tmp_path / "vocab" / "segment.txt").write_text("retail\nretail\n")
    with pytest.raises(SchemaError, match=r"user.fields.segment: vocab_file .* value 'retail' repeated"):
        load_schema(tmp_path / "schema.toml")


def test_the_documented_example_loads_and_names_every_kind_and_parameter(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "MODEL.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    sf = load_schema(write(tmp_path, example))  # write() provides vocab/segment.txt
    assert {f.kind for _, f in sf.fields} == set(KINDS)
    reference = doc[doc.index("### Kinds and parameters") : doc.index("### Values at serving time")]
    for kind, params in PARAMS.items():
        assert f"| `{kind}` |" in reference, kind
        for p in params:
            assert f"`{p}`" in reference, (kind, p)
    for p in COMMON:
        assert f"`{p}`" in reference, p


def test_history_fields_sharing_a_source_read_one_history(tmp_path: Path) -> None:
    extra = '\n[[user.fields]]\nname = "recent_short"\nsource = "recent"\nkind = "sequence"\n'
    extra += 'vocab = "item_id"\nmax_len = 2\nfrom_interactions = true\n'
    text = FULL.replace("[item]\n", extra + "\n[item]\n", 1)
    sf = load_schema(write(tmp_path, text))
    assert sf.layout.history == ("recent",)
    out = TowerEncoder(sf.learn(USERS, ITEMS), "user").encode([{"recent": ["i1", "i2", "i1"]}])
    assert out["recent"].shape == (1, 3) and out["recent_short"].tolist() == [[2, 1]]
