"""MovieLens-100k: RecBole conversion, checksums, an atomic fetch whose files the schema reads."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from models import ml100k as data_mod
from models.data import load_dataset
from models.errors import DataError
from models.ml100k import INTERACTIONS, convert_recbole, read_recbole_wheel, write_project_format
from models.schema import load_schema
from tests.models.conftest import MOVIELENS

RAW = {
    "user": b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    b"1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n",
    "item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    b"1\tToy Story\t1995\tAnimation Children's Comedy\n"
    b"267\tunkonwn\tunkonwn\tunknown\n"
    b"1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's\n",
    "inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    b"2\t1\t3\t20\n1\t267\t4\t10\n1\t1\t5\t20\n",
}


def test_convert_recbole_restores_titles_years_and_order() -> None:
    users, items, inter = convert_recbole(RAW)
    assert users[1] == {"user_id": "2", "age": 53, "gender": "F", "occupation": "other", "zip": "T8H1N"}
    by_id = {i["item_id"]: i for i in items}
    assert by_id["1"] == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "genres": ["Animation", "Children's", "Comedy"],
        "release_year": 1995,
    }
    assert by_id["267"]["release_year"] is None and by_id["267"]["title"] == "unknown"
    assert by_id["1412"]["release_year"] == 1995
    assert [(r.user_id, r.item_id, r.timestamp) for r in inter] == [
        ("1", "267", 10),
        ("1", "1", 20),
        ("2", "1", 20),
    ]


def test_write_project_format_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    write_project_format(out, RAW, source={"package": "test"})
    ds = load_dataset(out, load_schema(MOVIELENS))
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (2, 3, 3)
    assert ds.items["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert (out / INTERACTIONS).read_text().splitlines()[:2] == [
        "user_id,item_id,rating,timestamp",
        "1,267,4,10",
    ]
    assert json.loads((out / "SOURCE.json").read_text())["package"] == "test"
    assert [p.name for p in tmp_path.iterdir()] == ["ml"]  # no temp dir left


def test_write_project_format_leaves_nothing_on_failure(tmp_path: Path) -> None:
    bad = {**RAW, "inter": RAW["inter"] + b"1\t1\tnot-a-number\t30\n"}
    with pytest.raises(ValueError):
        write_project_format(tmp_path / "ml", bad, source={})
    assert list(tmp_path.iterdir()) == []


def test_wheel_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "recbole-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for ext, body in RAW.items():
            zf.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{ext}", body)
    with pytest.raises(DataError, match="sha256"):
        read_recbole_wheel(wheel)


def test_wheel_checksums_accept_matching_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "recbole-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for ext, body in RAW.items():
            zf.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{ext}", body)
    monkeypatch.setattr(data_mod, "ML100K_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in RAW.items()})
    assert read_recbole_wheel(wheel) == RAW


def test_fetch_refuses_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        data_mod.fetch_ml100k(tmp_path)
