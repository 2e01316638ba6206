"""Hostile client input that used to reach a 500, id limits on every id a client sends, and the one
exclusion budget shared by `exclude_item_ids` and the history (issue 11, cases 3, 8 and 11)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import make_settings

SURROGATE = "\ud800"  # a lone surrogate: valid in JSON text ("\ud800"), not encodable as UTF-8


@pytest.fixture
def c(settings: Settings) -> Iterator[TestClient]:
    # A 500 comes back as a response (not an exception in the test), as a real client would see it.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _post(client: TestClient, route: str, body: dict[str, Any]) -> Any:
    """JSON with ASCII escapes, so a lone surrogate travels as the text `\\ud800` (httpx would not
    encode it)."""
    return client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})


def _loc(r: Any) -> list[list[str]]:
    return [[str(p) for p in e["loc"]] for e in r.json()["detail"]]


# --- case 3: inputs that crashed the service ------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "loc"),
    [
        ("/recall", {"features": {"age": 10**400}}, ["body", "features", "age"]),
        ("/recall", {"features": {"age": -(10**309)}}, ["body", "features", "age"]),
        (
            "/score",
            {"items": [{"item_id": "1", "features": {"release_year": 10**400}}]},
            ["body", "items", "0", "features", "release_year"],
        ),
    ],
)
def test_huge_integer_feature_is_422(c: TestClient, route: str, body: dict[str, Any], loc: list[str]) -> None:
    r = _post(c, route, body)
    assert r.status_code == 422, r.text
    assert loc in _loc(r)


def test_big_but_representable_integer_is_served(c: TestClient) -> None:
    r = c.post("/recall", json={"features": {"age": 10**30}, "k": 3})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/recall", {"features": {"gender": SURROGATE}, "k": 3}),
        ("/recall", {"features": {"zip": SURROGATE + "12"}, "k": 3}),
        ("/recall", {"features": {"occupation": "a" + SURROGATE}, "k": 3}),
        ("/score", {"items": [{"item_id": "new", "features": {"title": "x" + SURROGATE + " y"}}]}),
        ("/recall", {"features": {"history": [SURROGATE, "1"]}, "k": 3}),
    ],
)
def test_lone_surrogate_in_a_string_feature_is_served(
    c: TestClient, route: str, body: dict[str, Any]
) -> None:
    """An unknown value, like any other: the out-of-vocabulary bucket or a stable hash, not a 500."""
    r = _post(c, route, body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("route", "body", "loc"),
    [
        ("/recall", {"features": {SURROGATE: 1}}, ["body", "features", "\\ud800"]),
        ("/recall", {"features": {"a" + SURROGATE + "b": "x"}}, ["body", "features", "a\\ud800b"]),
        (
            "/score",
            {"items": [{"item_id": "1", "features": {SURROGATE: "x"}}]},
            ["body", "items", "0", "features", "\\ud800"],
        ),
        ("/recall", {SURROGATE: 1}, ["body"]),  # pydantic's own 422 for a key it cannot read
        ("/recall", {"k": SURROGATE}, ["body", "k"]),
        ("/recall", {"user_id": SURROGATE}, ["body", "user_id"]),
        ("/recall", {"exclude_item_ids": ["1", SURROGATE]}, ["body", "exclude_item_ids", "1"]),
        ("/score", {"items": [{"item_id": SURROGATE}]}, ["body", "items", "0", "item_id"]),
        ("/recall", {"model_version": SURROGATE}, ["body", "model_version"]),
    ],
)
def test_lone_surrogate_in_a_name_or_id_is_422(
    c: TestClient, route: str, body: dict[str, Any], loc: list[str]
) -> None:
    """The 422 body escapes what UTF-8 cannot carry (as the text `\\ud800`), so it can be sent."""
    r = _post(c, route, body)
    assert r.status_code == 422, r.text
    r.content.decode("utf-8")  # strict: the body is valid UTF-8
    assert loc in _loc(r), r.text


# --- case 11: max_id_length on every id a client sends --------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "loc"),
    [
        ("/score", {"user_id": "u" * 257, "items": [{"item_id": "1"}]}, ["body", "user_id"]),
        ("/score", {"items": [{"item_id": "1"}, {"item_id": "i" * 257}]}, ["body", "items", "1", "item_id"]),
        ("/recall", {"exclude_item_ids": ["1", "2", "x" * 257]}, ["body", "exclude_item_ids", "2"]),
        ("/recall", {"features": {"history": ["1", "h" * 257]}}, ["body", "features", "history", "1"]),
        (
            "/score",
            {"features": {"history": ["h" * 300]}, "items": [{"item_id": "1"}]},
            ["body", "features", "history", "0"],
        ),
    ],
)
def test_every_client_id_has_the_length_limit(
    c: TestClient, route: str, body: dict[str, Any], loc: list[str]
) -> None:
    r = _post(c, route, body)
    assert r.status_code == 422, r.text
    assert loc in _loc(r), r.text
    assert "256" in r.text


def test_ids_at_the_limit_are_served(c: TestClient) -> None:
    at = "i" * 256
    assert c.post("/score", json={"user_id": at, "items": [{"item_id": at}]}).status_code == 200
    body = {"k": 3, "exclude_item_ids": [at], "features": {"history": [at]}}
    assert c.post("/recall", json=body).status_code == 200


# --- case 8: one exclusion budget for ids and history together ------------------------------------


def _recalled(client: TestClient, **body: Any) -> list[str]:
    r = client.post("/recall", json={"k": 400, **body})
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


def test_history_and_exclusions_share_one_budget(model_store: Path, index_root: Path, data_dir: Path) -> None:
    s = make_settings(model_store, index_root, data_dir, limits={"max_exclude": 3})
    with TestClient(create_app(s)) as client:
        every = _recalled(client, exclude_history=False)
        history = every[:5]  # oldest first, as the store keeps it
        # Only the most recent `max_exclude` history entries are excluded; older ones may come back.
        got = _recalled(client, features={"history": history})
        assert not set(history[-3:]) & set(got)
        assert set(history[:2]) <= set(got)
        # Explicit exclusions come first; the history gets what is left of the budget.
        got = _recalled(client, features={"history": history}, exclude_item_ids=[every[10], every[11]])
        assert not {every[10], every[11], history[-1]} & set(got)
        assert set(history[:-1]) <= set(got)
        # An explicit list beyond the budget is the client's error.
        r = client.post("/recall", json={"k": 5, "exclude_item_ids": ["a", "b", "c", "d"]})
        assert r.status_code == 422 and ["body", "exclude_item_ids"] in _loc(r)


def test_long_history_is_served_on_its_recent_part(c: TestClient) -> None:
    """A history far beyond the budget: still 200, the tower sees its most recent entries."""
    r = c.post("/recall", json={"k": 5, "features": {"history": [str(i) for i in range(30_000)]}})
    assert r.status_code == 200, r.text
