"""The feature encoder: OOV, missing and padding map to 0; bad client input names the field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from models.errors import FeatureError
from models.features import FeatureSchema, FieldSpec, TowerSchema
from models.schema import load_schema
from models.transform import TowerEncoder, hash_token, word_tokens
from tests.models.test_schema import MOVIELENS

VOCABS = {
    "user_id": ["1", "2", "3"],
    "item_id": ["10", "11", "12"],
    "gender": ["F", "M"],
    "occupation": ["student", "writer"],
    "genre": ["Comedy", "Drama"],
}


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    ml = load_schema(MOVIELENS).resolve(VOCABS)
    small = {"history": {"max_len": 3}, "title": {"hash_size": 50, "max_len": 4}}

    def shrink(tower: TowerSchema) -> TowerSchema:
        fields = tuple(dataclasses.replace(f, **small.get(f.name, {})) for f in tower.fields)
        return dataclasses.replace(tower, fields=fields)

    return dataclasses.replace(ml, user=shrink(ml.user), item=shrink(ml.item))


def test_known_values_map_to_their_index(schema: FeatureSchema) -> None:
    out = TowerEncoder(schema, "user").encode(
        [
            {
                "user_id": "2",
                "age": 30,
                "gender": "M",
                "occupation": "writer",
                "zip": "55105",
                "history": ["11"],
            }
        ]
    )
    assert out["user_id"].tolist() == [2]
    assert out["gender"].tolist() == [2]
    assert out["occupation"].tolist() == [2]
    assert out["age"].tolist() == [3]  # <18 -> 1, [18, 25) -> 2, [25, 35) -> 3; 0 is missing
    assert out["history"].tolist() == [[2]]
    assert out["zip"][0] > 0


def test_oov_and_missing_map_to_zero(schema: FeatureSchema) -> None:
    out = TowerEncoder(schema, "user").encode([{"user_id": "999", "occupation": "astronaut"}, {}])
    for name in ("user_id", "age", "gender", "occupation", "zip"):
        assert out[name].tolist() == [0, 0], name
    assert out["history"].tolist() == [[0], [0]]  # never a 0-length axis


def test_history_keeps_last_max_len_and_pads(schema: FeatureSchema) -> None:
    out = TowerEncoder(schema, "user").encode(
        [{"history": ["10", "11", "12", "10", "nope"]}, {"history": ["12"]}, {"history": []}]
    )
    assert out["history"].dtype == np.int64
    assert out["history"].tolist() == [[3, 1, 0], [3, 0, 0], [0, 0, 0]]


def test_item_inputs_dtypes_and_shapes(schema: FeatureSchema) -> None:
    out = TowerEncoder(schema, "item").encode(
        [
            {"item_id": "10", "title": "Kolya (1996)", "genres": ["Comedy", "Western"], "release_year": 1996},
            {"item_id": "new"},
        ]
    )
    assert out["genres"].dtype == np.float32
    assert out["genres"].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert out["item_id"].tolist() == [1, 0]
    assert out["release_year"][1] == 0
    assert out["title"].shape == (2, 2) and out["title"][1].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({"age": "old"}, "features.age"),
        ({"age": True}, "features.age"),
        ({"age": math.nan}, "features.age"),
        ({"age": math.inf}, "features.age"),
        ({"gender": 1}, "features.gender"),
        ({"gender": False}, "features.gender"),
        ({"history": "242"}, "features.history"),
        ({"history": [242]}, "features.history"),
        ({"favourite_colour": "red"}, "features.favourite_colour"),
    ],
)
def test_validate_rejects_and_names_the_field(
    schema: FeatureSchema, features: dict[str, object], field: str
) -> None:
    with pytest.raises(FeatureError) as info:
        TowerEncoder(schema, "user").validate(features)
    assert info.value.field == field
    assert field in str(info.value)


def test_validate_drops_none_and_accepts_unknown_values(schema: FeatureSchema) -> None:
    got = TowerEncoder(schema, "user").validate({"age": None, "occupation": "astronaut", "history": ["x"]})
    assert got == {"occupation": "astronaut", "history": ["x"]}


def test_encode_ignores_nan_and_bool_as_missing(schema: FeatureSchema) -> None:
    out = TowerEncoder(schema, "user").encode([{"age": math.nan}, {"age": True}, {"age": math.inf}])
    assert out["age"].tolist() == [0, 0, 0]


def test_schema_round_trips(schema: FeatureSchema) -> None:
    assert FeatureSchema.from_dict(schema.to_dict()) == schema


# --- numeric, vector, defaults, hostile values --------------------------------------------------

ITEM = TowerSchema(
    side="item",
    id_field="item_id",
    fields=(
        FieldSpec("item_id", "categorical", "item_id", vocab="item_id", default="10"),
        FieldSpec("price", "numeric", "price", mean=2.0, std=4.0, default=6.0),
        FieldSpec("pop", "numeric", "pop", log=True, mean=0.0, std=1.0),
        FieldSpec("emb", "vector", "emb", dim=3),
        FieldSpec("emb_d", "vector", "emb_d", dim=2, default=(1.0, -1.0)),
        FieldSpec("brand", "hashed", "brand", hash_size=97),
        FieldSpec("words", "hashed_words", "words", hash_size=97, max_len=4),
        FieldSpec("year", "bucket", "year", boundaries=(1990.0, 2000.0)),
    ),
)
KINDS_SCHEMA = FeatureSchema(
    user=TowerSchema(
        side="user", id_field="user_id", fields=(FieldSpec("user_id", "categorical", "user_id", vocab="u"),)
    ),
    item=ITEM,
    vocabularies={"item_id": ("10", "11"), "u": ("1",)},
)


def test_numeric_and_vector_encode_with_defaults() -> None:
    enc = TowerEncoder(KINDS_SCHEMA, "item")
    out = enc.encode(
        [
            {"item_id": "11", "price": 10.0, "pop": math.e - 1, "emb": [1, 2, 3], "emb_d": [0.5, 0.5]},
            {},  # every field missing: defaults where given, else the missing encoding
            {"price": "12", "pop": -5, "emb": [1, 2], "emb_d": [math.nan, 1.0]},  # unusable -> as missing
        ]
    )
    assert out["price"].dtype == np.float32 and out["price"].shape == (3,)
    assert out["price"].tolist() == [2.0, 1.0, 1.0]  # (10-2)/4; default 6 -> (6-2)/4
    assert out["pop"].tolist() == pytest.approx([1.0, 0.0, 0.0])  # log1p(e-1) = 1; missing -> mean
    assert out["emb"].dtype == np.float32 and out["emb"].tolist() == [[1, 2, 3], [0, 0, 0], [0, 0, 0]]
    assert out["emb_d"].tolist() == [[0.5, 0.5], [1.0, -1.0], [1.0, -1.0]]
    assert out["item_id"].tolist() == [2, 1, 1]  # default "10"


HOSTILE = [
    ({"price": 10**400}, "features.price", "must be a finite number"),
    ({"year": 10**400}, "features.year", "must be a finite number"),
    ({"year": -(10**400)}, "features.year", "must be a finite number"),
    ({"price": 1e308 * 10}, "features.price", "must be a finite number"),
    ({"price": 1e300}, "features.price", "out of range"),  # finite, but not as a float32
    ({"pop": -1}, "features.pop", "greater than -1"),
    ({"price": True}, "features.price", "expected a number"),
    ({"emb": [1.0, 2.0]}, "features.emb", "expected 3 numbers, got 2"),
    ({"emb": [1.0, math.nan, 2.0]}, "features.emb", "every number must be finite"),
    ({"emb": [1.0, 10**400, 2.0]}, "features.emb", "every number must be finite"),
    ({"emb": [1.0, "2", 3.0]}, "features.emb", "expected a list of 3 numbers"),
    ({"emb": "1,2,3"}, "features.emb", "expected a list of 3 numbers"),
    ({"brand": ["x"]}, "features.brand", "expected a string"),
]


@pytest.mark.parametrize(("features", "field", "message"), HOSTILE)
def test_hostile_values_are_feature_errors_naming_the_field(
    features: dict[str, object], field: str, message: str
) -> None:
    enc = TowerEncoder(KINDS_SCHEMA, "item")
    with pytest.raises(FeatureError) as info:
        enc.validate(features)
    assert info.value.field == field and message in info.value.message
    # encode never raises on the same values: they count as missing
    out = enc.encode([features])
    assert all(np.isfinite(a).all() for a in out.values() if a.dtype == np.float32)


def test_lone_surrogates_hash_instead_of_failing() -> None:
    enc = TowerEncoder(KINDS_SCHEMA, "item")
    row = {"item_id": "\ud800", "brand": "\udfff-x", "words": "a \ud800 b"}
    assert enc.validate({k: v for k, v in row.items() if k != "item_id"}) == {
        "brand": "\udfff-x",
        "words": "a \ud800 b",
    }
    out = enc.encode([row])
    assert out["item_id"].tolist() == [0]
    assert out["brand"].tolist() == [hash_token("\udfff-x", 97)] and 0 < out["brand"][0] < 97
    # "\ud800" hashes like any other string (surrogatepass), so it differs from the empty string
    assert hash_token("\ud800", 97) != hash_token("", 97)


def test_integer_tokens_count_as_their_text() -> None:
    # a Parquet column of integers must find the same vocabulary entries and hashes as strings
    enc = TowerEncoder(KINDS_SCHEMA, "item")
    a, b = enc.encode([{"item_id": 11, "brand": 7}]), enc.encode([{"item_id": "11", "brand": "7"}])
    assert (
        a["item_id"].tolist() == b["item_id"].tolist() == [2] and a["brand"].tolist() == b["brand"].tolist()
    )


# --- batches of plain values (array operations) encode as the per-value path does

PLAIN_ITEMS: list[dict[str, Any]] = [
    {
        "item_id": "10",
        "genres": ["Comedy", "Drama", "Comedy"],
        "release_year": 1995,
        "title": "Toy Story (1995)",
    },
    {"item_id": "nope", "genres": ("Drama",), "release_year": 1999.5, "title": "A b C d E f G"},
    {"item_id": None, "genres": [], "release_year": float("nan"), "title": ""},
    {"genres": ["Western"], "release_year": float("inf"), "title": "ÄÖÜ İstanbul \u212aelvin 7th-heaven!"},
    {"item_id": "12", "genres": None, "release_year": 2**70, "title": None},
    {"item_id": "11", "release_year": -(2**60), "title": "\ud800 lone  surrogate\tand\nnewlines"},
]
ODD_ITEM: dict[str, Any] = {"item_id": 11, "genres": ["Comedy", 5, True], "release_year": True, "title": 42}


def test_plain_batches_encode_as_the_per_value_path(schema: FeatureSchema) -> None:
    enc = TowerEncoder(schema, "item")
    rows = PLAIN_ITEMS * 3
    fast = enc.encode(rows)
    per_value = enc.encode([*rows, ODD_ITEM])  # the odd row sends every field down the per-value path
    title = schema.item.field("title")
    for name, arr in fast.items():
        ref = per_value[name][: len(rows)]
        width = arr.shape[1] if arr.ndim == 2 else None
        assert arr.dtype == ref.dtype, name
        assert np.array_equal(arr, ref[:, :width] if width is not None else ref), name
        if width is not None:  # the padding is all the per-value path has beyond it
            assert not ref[:, width:].any(), name
    for i, row in enumerate(rows):  # and the words are hash_token of the first max_len words
        text = row.get("title")
        words = word_tokens(text)[: title.max_len] if isinstance(text, str) else []
        expected = [hash_token(w, title.hash_size) for w in words]
        assert fast["title"][i].tolist() == expected + [0] * (fast["title"].shape[1] - len(expected))
    assert enc.encode_columns({}, 2)["item_id"].tolist() == [0, 0]  # absent columns: missing
