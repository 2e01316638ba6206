"""The feature encoder: OOV, missing and padding map to 0; bad client input names the field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import FeatureError
from models.features import FeatureSchema, TowerEncoder, default_schema

VOCABS = {
    "user_id": ["1", "2", "3"],
    "item_id": ["10", "11", "12"],
    "gender": ["F", "M"],
    "occupation": ["student", "writer"],
    "genre": ["Comedy", "Drama"],
}


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return default_schema(VOCABS, history_len=3, title_hash_size=50, title_words=4)


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
