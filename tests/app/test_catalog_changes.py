"""PUT /admin/items and DELETE /admin/items/{id} over HTTP with the in-process store: upserts are
recalled, found by /similar and filtered; deletes are never returned; a bad call changes nothing;
a restart replays the log; a rebuild folds the changes in."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings

USER = "1"


def catalog(data_dir: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()]
    return {str(r["item_id"]): r for r in rows}


def features(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "item_id"}


def recalled(c: TestClient, k: int = 1000, **body: Any) -> list[str]:
    r = c.post("/recall", json={"user_id": USER, "k": k, "exclude_history": False, **body})
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


def scores(c: TestClient, ids: list[str]) -> list[float | None]:
    r = c.post("/score", json={"user_id": USER, "items": [{"item_id": i} for i in ids]})
    assert r.status_code == 200, r.text
    return [s["score"] for s in r.json()["scores"]]


def test_upsert_is_recalled_similar_and_filtered(
    client: TestClient, data_dir: Path, admin: dict[str, str]
) -> None:
    items = catalog(data_dir)
    top = recalled(client, k=1)[0]
    feats = features(items[top])
    assert scores(client, ["new-1"]) == [None]
    # what the item tower makes of it, before it exists (/score on features)
    r = client.post("/score", json={"user_id": USER, "items": [{"item_id": "new-1", "features": feats}]})
    expected = r.json()["scores"][0]["score"]
    r = client.put("/admin/items", headers=admin, json={"items": [{"item_id": "new-1", "features": feats}]})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    assert scores(client, ["new-1"])[0] == pytest.approx(expected, abs=1e-5)
    r = client.post("/recall", json={"user_id": USER, "k": 1000, "exclude_history": False})
    got = r.json()["items"]
    assert len(got) == len({it["item_id"] for it in got}) == len(items) + 1
    assert [it["score"] for it in got] == sorted((it["score"] for it in got), reverse=True)
    rank = [it["item_id"] for it in got].index("new-1")
    assert got[rank]["score"] == pytest.approx(expected, abs=1e-5)
    assert recalled(client, k=rank + 1)[-1] == "new-1"  # a short k finds it in its place too
    # /similar: its stored vector is the item tower's output on its features; never itself
    stored = client.post("/similar", json={"item_id": "new-1", "k": 1000}).json()["items"]
    on_features = client.post("/similar", json={"item_id": "new-1", "k": 1000, "features": feats}).json()[
        "items"
    ]
    assert [it["item_id"] for it in stored] == [it["item_id"] for it in on_features]
    assert len(stored) == len(items) and "new-1" not in {it["item_id"] for it in stored}
    twin = client.post("/similar", json={"item_id": top, "k": 1000}).json()["items"]
    assert "new-1" in {it["item_id"] for it in twin}
    # filters apply to it like to any built item
    genres = items[top]["genres"]
    assert "new-1" not in recalled(client, filter={"genres": {"none": genres}})
    assert "new-1" in recalled(client, filter={"genres": {"all": genres}})
    year = items[top]["release_year"]
    assert "new-1" in recalled(client, filter={"release_year": {"gte": year, "lte": year}})
    assert "new-1" not in recalled(client, filter={"release_year": {"gt": year}})
    near = client.post("/similar", json={"item_id": top, "k": 1000, "filter": {"genres": {"all": genres}}})
    assert "new-1" in {it["item_id"] for it in near.json()["items"]}
    # an upsert of an existing id replaces its vector: no duplicate, the new score
    other = next(i for i in items if i != top)
    r = client.post("/score", json={"user_id": USER, "items": [{"item_id": other, "features": feats}]})
    replaced = r.json()["scores"][0]["score"]
    assert scores(client, [other])[0] != pytest.approx(replaced, abs=1e-5)
    r = client.put("/admin/items", headers=admin, json={"items": [{"item_id": other, "features": feats}]})
    assert r.status_code == 202
    assert scores(client, [other])[0] == pytest.approx(replaced, abs=1e-5)
    again = recalled(client)
    assert again.count(other) == 1 and len(again) == len(items) + 1
    assert 'twotower_delta_items{version="' in client.get("/metrics").text
    assert "} 2.0" in client.get("/metrics").text


def test_delete_is_never_returned(client: TestClient, data_dir: Path, admin: dict[str, str]) -> None:
    items = catalog(data_dir)
    top = recalled(client, k=1)[0]
    twin = "twin-of-top"
    client.put(
        "/admin/items", headers=admin, json={"items": [{"item_id": twin, "features": features(items[top])}]}
    )
    for gone in (top, twin):
        assert client.delete(f"/admin/items/{gone}", headers=admin).status_code == 202
    everything = recalled(client)
    assert top not in everything and twin not in everything and len(everything) == len(items) - 1
    assert scores(client, [top, twin]) == [None, None]
    assert client.post("/similar", json={"item_id": top, "k": 5}).status_code == 404
    some = next(i for i in items if i != top)
    assert top not in [
        it["item_id"] for it in client.post("/similar", json={"item_id": some, "k": 1000}).json()["items"]
    ]
    # unknown ids: idempotent
    assert client.delete("/admin/items/never-existed", headers=admin).status_code == 202
    assert client.delete(f"/admin/items/{top}", headers=admin).status_code == 202
    # an upsert after the delete brings it back
    client.put(
        "/admin/items", headers=admin, json={"items": [{"item_id": top, "features": features(items[top])}]}
    )
    assert top in recalled(client, k=2)


def test_bad_upsert_applies_nothing(
    model_store: Path, index_root: Path, data_dir: Path, admin: dict[str, str]
) -> None:
    settings: Settings = make_settings(model_store, index_root, data_dir, limits={"max_upsert_items": 3})
    items = catalog(data_dir)
    good = features(next(iter(items.values())))
    with TestClient(create_app(settings)) as c:
        body = {
            "items": [
                {"item_id": "ok-0", "features": good},
                {"item_id": "ok-1", "features": good},
                {"item_id": "bad-2", "features": {**good, "release_year": "nineteen"}},
            ]
        }
        r = c.put("/admin/items", headers=admin, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "items", "2", "features", "release_year"]
        unknown = {"items": [{"item_id": "ok-0", "features": {**good, "colour": "red"}}]}
        r = c.put("/admin/items", headers=admin, json=unknown)
        assert r.status_code == 422 and "colour" in r.text
        too_many = {"items": [{"item_id": f"ok-{i}", "features": good} for i in range(4)]}
        r = c.put("/admin/items", headers=admin, json=too_many)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items"]
        assert c.put("/admin/items", headers=admin, json={"items": []}).status_code == 422
        long_id = {"items": [{"item_id": "x" * 300, "features": good}]}
        r = c.put("/admin/items", headers=admin, json=long_id)
        assert r.status_code == 422 and "item_id" in r.text
        assert c.delete("/admin/items/" + "x" * 300, headers=admin).status_code == 422
        assert c.put("/admin/items", json={"items": [{"item_id": "a", "features": good}]}).status_code == 401
        assert scores(c, ["ok-0", "ok-1", "bad-2"]) == [None, None, None]
        assert len(recalled(c)) == len(items)
    assert not (index_root / "changes.jsonl").exists()  # nothing was recorded either


def test_restart_replays_the_log(settings: Settings, data_dir: Path, admin: dict[str, str]) -> None:
    items = catalog(data_dir)
    with TestClient(create_app(settings)) as c:
        top = recalled(c, k=1)[0]
        c.put(
            "/admin/items",
            headers=admin,
            json={"items": [{"item_id": "kept", "features": features(items[top])}]},
        )
        c.delete(f"/admin/items/{top}", headers=admin)
        before = scores(c, ["kept", top])
    with TestClient(create_app(settings)) as c:
        assert scores(c, ["kept", top]) == before and before[1] is None and before[0] is not None
        everything = recalled(c)
        assert "kept" in everything and top not in everything


def _wait_build(c: TestClient, admin: dict[str, str], old: str) -> str:
    job = c.post("/admin/reindex", headers=admin).json()["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = c.get(f"/admin/reindex/{job}", headers=admin).json()["status"]
        build = c.post("/recall", json={"k": 1}).json()["index_build"]
        if status == "failed":
            raise AssertionError(c.get(f"/admin/reindex/{job}", headers=admin).text)
        if build != old:
            return str(build)
        time.sleep(0.2)
    raise AssertionError("no new build within 120 s")


def test_rebuild_folds_the_changes_in(
    settings: Settings, data_dir: Path, index_root: Path, admin: dict[str, str], version: str
) -> None:
    items = catalog(data_dir)
    with TestClient(create_app(settings)) as c:
        old = c.post("/recall", json={"k": 1}).json()["index_build"]
        top = recalled(c, k=1)[0]
        c.put(
            "/admin/items",
            headers=admin,
            json={"items": [{"item_id": "folded", "features": features(items[top])}]},
        )
        c.delete(f"/admin/items/{top}", headers=admin)
        build = _wait_build(c, admin, old)
        manifest = json.loads((index_root / version / build / "manifest.json").read_text())
        assert manifest["changes_seq"] == 2 and manifest["item_count"] == len(items)
        assert 'twotower_delta_items{version="' + version + '"} 0.0' in c.get("/metrics").text
        for _ in range(20):  # the next poll forgets what every served build now holds
            if c.app.state.service.delta.held == 0:  # type: ignore[attr-defined]
                break
            time.sleep(0.1)
        assert c.app.state.service.delta.held == 0  # type: ignore[attr-defined]
        everything = recalled(c)
        assert "folded" in everything and top not in everything and len(everything) == len(items)


def test_delta_view_grows_as_a_rebuild_would(
    client: TestClient, data_dir: Path, admin: dict[str, str], version: str
) -> None:
    """Calls of new items grow the delta's view by their rows (no pass over every pending row);
    replacements and deletes rebuild it. Either way the view equals one built from scratch, and
    filters over it answer as over the build's own columns."""
    from app.delta import _view
    from index_store.filters import filter_mask

    items = catalog(data_dir)
    rows = list(items.values())
    service = client.app.state.service  # type: ignore[attr-defined]
    served = service.versions[version]
    n = 0

    def put(ids: list[str]) -> None:
        nonlocal n
        body = []
        for i in ids:
            row = rows[n % len(rows)]
            n += 1
            body.append({"item_id": i, "features": {**features(row), "release_year": 3000 + n}})
        assert client.put("/admin/items", headers=admin, json={"items": body}).status_code == 202

    filters = [
        {"release_year": {"gte": 3005}},
        {"genres": {"any": ["Drama", "Comedy"]}},
        {"genres": {"none": ["Drama"]}, "release_year": {"lt": 3010}},
        {"genres": {"all": ["Action", "Thriller"]}},
    ]
    steps = [["a1", "a2", "a3"], ["a4"], ["a5", "a6"], ["a2"], ["a7"], ["del:a4"], ["a8", "a9"]]
    for step in steps:
        if step[0].startswith("del:"):
            assert client.delete(f"/admin/items/{step[0][4:]}", headers=admin).status_code == 202
        else:
            put(step)
        grown = service.delta.view(version)
        full = _view(service.delta._versions[version], served)
        assert grown.shadow == full.shadow
        assert sorted(grown.row_of) == sorted(full.row_of)
        for i, r in full.row_of.items():
            assert np.array_equal(grown.vectors[grown.row_of[i]], full.vectors[r])
        item = served.manifest.features.item
        for flt in filters:
            got = filter_mask(flt, item, grown.attributes)
            want = filter_mask(flt, item, full.attributes)
            assert got is not None and want is not None
            assert {i for i, r in grown.row_of.items() if got[r]} == {
                i for i, r in full.row_of.items() if want[r]
            }
    fresh = recalled(client, filter={"release_year": {"gte": 3000}})
    assert sorted(fresh) == ["a1", "a2", "a3", "a5", "a6", "a7", "a8", "a9"]
