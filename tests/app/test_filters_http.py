"""`filter` on /recall and POST /similar over HTTP (in-process store, the demo model, 400 items, an
exact index): exact answers checked against /score and the catalog, and the errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.manifest import list_versions
from tests.app.conftest import make_settings

USER = "1"


def catalog(data_dir: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()]
    return {str(r["item_id"]): r for r in rows}


def passes(row: dict[str, Any], flt: dict[str, dict[str, Any]]) -> bool:
    for name, ops in flt.items():
        value = row.get(name)
        for op, arg in ops.items():
            have = set(value) if isinstance(value, list) else set()
            if op == "any" and not have & set(arg):
                return False
            if op == "all" and not set(arg) <= have:
                return False
            if op == "none" and have & set(arg):
                return False
            cmp = {"gt": float.__gt__, "gte": float.__ge__, "lt": float.__lt__, "lte": float.__le__}
            if op in cmp and (value is None or not cmp[op](float(value), float(arg))):
                return False
            if op == "eq" and value != arg:
                return False
    return True


FILTERS: list[dict[str, dict[str, Any]]] = [
    {"genres": {"any": ["Comedy", "Drama"]}},
    {"genres": {"all": ["Comedy", "Drama"]}},
    {"genres": {"none": ["Comedy", "Drama", "Action"]}},
    {"release_year": {"gte": 1990, "lt": 2000}},
    {"release_year": {"gt": 1995, "lte": 1997}},
    {"release_year": {"eq": 1960}},
    {"genres": {"any": ["Horror"]}, "release_year": {"lt": 1980}},
]


def all_scores(client: TestClient, ids: list[str]) -> dict[str, float]:
    r = client.post("/score", json={"user_id": USER, "items": [{"item_id": i} for i in ids]})
    assert r.status_code == 200, r.text
    return {s["item_id"]: s["score"] for s in r.json()["scores"]}


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: json.dumps(f, sort_keys=True))
def test_recall_filter_is_exact(client: TestClient, data_dir: Path, flt: dict[str, Any]) -> None:
    items = catalog(data_dir)
    scores = all_scores(client, list(items))
    eligible = [i for i, row in items.items() if passes(row, flt)]
    excluded = eligible[:2]
    for k in (5, 50, 400):
        r = client.post(
            "/recall",
            json={
                "user_id": USER,
                "k": k,
                "filter": flt,
                "exclude_item_ids": excluded,
                "exclude_history": False,
            },
        )
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        keep = [i for i in eligible if i not in excluded]
        assert len(got) == min(k, len(keep))  # exactly min(k, eligible)
        assert {it["item_id"] for it in got} <= set(keep)
        # exact: the top scores of the eligible items, as /score gives them
        truth = sorted((scores[i] for i in keep), reverse=True)[: len(got)]
        assert [it["score"] for it in got] == pytest.approx(truth, abs=1e-4)


def test_recall_filter_with_history_excluded(client: TestClient, data_dir: Path) -> None:
    flt = {"genres": {"any": ["Drama"]}}
    plain = client.post("/recall", json={"user_id": USER, "k": 400, "filter": flt, "exclude_history": False})
    fewer = client.post("/recall", json={"user_id": USER, "k": 400, "filter": flt})
    hist = {it["item_id"] for it in plain.json()["items"]} - {it["item_id"] for it in fewer.json()["items"]}
    assert len(fewer.json()["items"]) == len(plain.json()["items"]) - len(hist)
    assert all("Drama" in catalog(data_dir)[i]["genres"] for i in hist)


def test_similar(client: TestClient, data_dir: Path, version: str) -> None:
    items = catalog(data_dir)
    ids = list(items)
    r = client.post("/similar", json={"item_id": ids[0], "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == version and body["index_build"]
    got = body["items"]
    assert len(got) == 10 and ids[0] not in {it["item_id"] for it in got}
    scores = [it["score"] for it in got]
    assert scores == sorted(scores, reverse=True)
    # cosine is symmetric: the neighbour's answer scores the item the same
    other = got[0]["item_id"]
    back = client.post("/similar", json={"item_id": other, "k": 399}).json()["items"]
    assert dict((it["item_id"], it["score"]) for it in back)[ids[0]] == pytest.approx(
        got[0]["score"], abs=1e-5
    )
    # every other item, once, when k covers the catalog: never the item itself
    everything = client.post("/similar", json={"item_id": ids[0], "k": 1000}).json()["items"]
    assert sorted(it["item_id"] for it in everything) == sorted(ids[1:])


def test_similar_with_filter_and_exclusions(client: TestClient, data_dir: Path) -> None:
    items = catalog(data_dir)
    ids = list(items)
    flt = {"genres": {"any": ["Comedy"]}, "release_year": {"gte": 1985}}
    eligible = [i for i in ids if passes(items[i], flt)]
    query = eligible[0]  # the item passes the filter itself, and still never comes back
    excluded = eligible[1:4]
    full = client.post("/similar", json={"item_id": query, "k": 1000}).json()["items"]
    r = client.post(
        "/similar", json={"item_id": query, "k": 1000, "filter": flt, "exclude_item_ids": excluded}
    )
    assert r.status_code == 200, r.text
    got = [it["item_id"] for it in r.json()["items"]]
    keep = [i for i in eligible if i != query and i not in excluded]
    assert sorted(got) == sorted(keep)
    assert got == [it["item_id"] for it in full if it["item_id"] in set(keep)]  # same order, exact
    few = client.post("/similar", json={"item_id": query, "k": 3, "filter": flt}).json()["items"]
    assert [it["item_id"] for it in few] == [i for i in [it["item_id"] for it in full] if i in eligible][:3]


def test_similar_on_features(client: TestClient, data_dir: Path) -> None:
    items = catalog(data_dir)
    first_id, first = next(iter(items.items()))
    feats = {k: v for k, v in first.items() if k != "item_id"}
    stored = client.post("/similar", json={"item_id": first_id, "k": 5}).json()["items"]
    # the item tower on the item's own features gives its stored vector: the same neighbours
    r = client.post("/similar", json={"item_id": first_id, "features": feats, "k": 5})
    assert r.status_code == 200, r.text
    assert [it["item_id"] for it in r.json()["items"]] == [it["item_id"] for it in stored]
    # an item not in the index, described by its features
    new = client.post("/similar", json={"item_id": "brand-new", "features": {"genres": ["Comedy"]}, "k": 5})
    assert new.status_code == 200, new.text
    assert len(new.json()["items"]) == 5


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"item_id": "no-such-item", "k": 5}, 404, None),
        ({"item_id": "1", "model_version": "nope"}, 404, None),
        ({"item_id": "1", "k": 0}, 422, ["body", "k"]),
        ({"item_id": "1", "k": 5, "filter": {"colour": {"any": ["red"]}}}, 422, ["body", "filter", "colour"]),
        ({"item_id": "1", "filter": {"title": {"any": ["x"]}}}, 422, ["body", "filter", "title"]),
        ({"item_id": "1", "filter": {"genres": {"gt": 3}}}, 422, ["body", "filter", "genres", "gt"]),
        ({"item_id": "1", "filter": {"genres": {"any": "Comedy"}}}, 422, ["body", "filter", "genres", "any"]),
        (
            {"item_id": "1", "filter": {"release_year": {"gte": "1990"}}},
            422,
            ["body", "filter", "release_year", "gte"],
        ),
        (
            {"item_id": "1", "filter": {"release_year": {"eq": True}}},
            422,
            ["body", "filter", "release_year", "eq"],
        ),
        ({"item_id": "1", "filter": {"genres": ["Comedy"]}}, 422, ["body", "filter", "genres"]),
        ({"item_id": "1", "features": {"colour": "red"}}, 422, ["body", "features", "colour"]),
        ({"item_id": "x" * 300}, 422, ["body", "item_id"]),
        ({"item_id": "1", "extra": 1}, 422, ["body", "extra"]),
        ({"k": 5}, 422, ["body", "item_id"]),
    ],
)
def test_bad_similar_requests(
    client: TestClient, body: dict[str, Any], status: int, where: list[str] | None
) -> None:
    r = client.post("/similar", json=body)
    assert r.status_code == status, r.text
    if where is not None:
        assert any(e["loc"][: len(where)] == where for e in r.json()["detail"]), r.json()


def test_bad_recall_filter_names_the_field(client: TestClient) -> None:
    r = client.post("/recall", json={"user_id": USER, "filter": {"genres": {"some": ["Comedy"]}}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "filter", "genres", "some"]
    r = client.post("/recall", json={"user_id": USER, "filter": {"genres": {"any": ["Comedy", 1]}}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "filter", "genres", "any", "1"]


def test_similar_before_the_first_build(model_store: Path, data_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(model_store, tmp_path / "empty-index", data_dir)
    with TestClient(create_app(settings)) as c:
        r = c.post("/similar", json={"item_id": "1", "model_version": list_versions(model_store)[-1]})
        assert r.status_code == 503
        assert r.headers["retry-after"]


def test_filter_on_a_build_from_before_filters(settings: Any, index_root: Path, version: str) -> None:
    """A build without attribute columns still serves; a filter on it is a 422 that says reindex."""
    (build,) = [p for p in (index_root / version).iterdir() if p.is_dir() and not p.name.startswith(".")]
    manifest = json.loads((build / "manifest.json").read_text())
    del manifest["attributes"]
    del manifest["files"]["attributes.npz"]
    data = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (build / "manifest.json").write_text(data)
    pointer = index_root / version / "CURRENT"
    ptr = json.loads(pointer.read_text())
    ptr["manifest_sha256"] = hashlib.sha256(data.encode()).hexdigest()
    pointer.write_text(json.dumps(ptr))
    with TestClient(create_app(settings)) as c:
        assert c.post("/similar", json={"item_id": "1", "k": 3}).status_code == 200
        r = c.post("/similar", json={"item_id": "1", "filter": {"genres": {"any": ["Comedy"]}}})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "filter", "genres"]
        assert "reindex" in r.json()["detail"][0]["msg"]
