"""The hot routes' own path (app/api/hot.py) answers exactly as the framework's routes do.

One app serves each body twice: through the hot path, and with it switched off (`app.hot = None`,
every request through FastAPI's routes). Status, body and content type must be the same, for
valid requests and for every kind of bad input; the hot path must also count what it serves in
/metrics and take the body limit."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import TwoTowerAPI, create_app
from app.settings import Settings
from tests.app.conftest import make_settings

SURROGATE = "\ud800"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, built_index: Path, data_dir: Path
) -> Iterator[tuple[TwoTowerAPI, TestClient]]:
    import shutil

    root = tmp_path_factory.mktemp("hot") / "index"
    shutil.copytree(built_index, root)
    app = create_app(make_settings(model_store, root, data_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client


def both(
    served: tuple[TwoTowerAPI, TestClient], route: str, content: bytes, ctype: str | None
) -> tuple[Any, Any]:
    app, client = served
    headers = {"content-type": ctype} if ctype else {}
    hot = client.post(route, content=content, headers=headers)
    kept, app.hot = app.hot, None
    try:
        framework = client.post(route, content=content, headers=headers)
    finally:
        app.hot = kept
    return hot, framework


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


# (route, raw body, content type): valid requests, then every way a client can get a 4xx
CASES: list[tuple[str, bytes, str | None]] = [
    ("/recall", _j({"user_id": "1", "k": 5}), "application/json"),
    ("/recall", _j({"user_id": "1", "k": 5}), None),  # no content type: JSON, as FastAPI reads it
    ("/recall", _j({"user_id": "1", "k": 5}), "application/json; charset=utf-8"),
    ("/recall", _j({"user_id": "nobody", "k": 3, "exclude_history": False}), "application/json"),
    ("/recall", _j({"features": {"age": 30}, "k": 2}), "application/json"),
    ("/similar", _j({"item_id": "1", "k": 4}), "application/json"),
    ("/score", _j({"user_id": "1", "items": [{"item_id": "1"}, {"item_id": "nope"}]}), "application/json"),
    ("/recall", _j({"user_id": "1", "k": 5}), "text/plain"),
    ("/recall", _j({"user_id": "1", "k": 5}), "application/vnd.api+json"),
    ("/recall", b"", "application/json"),
    ("/recall", b"not json", "application/json"),
    ("/recall", b"[1, 2]", "application/json"),
    ("/recall", b"null", "application/json"),
    ("/recall", b'\xff\xfe{"k', "application/json"),
    ("/recall", b"[" * 100_000, "application/json"),
    ("/recall", _j({"k": 0}), "application/json"),
    ("/recall", _j({"k": 10**30}), "application/json"),
    ("/recall", _j({"k": True}), "application/json"),
    ("/recall", b'{"k": NaN}', "application/json"),
    ("/recall", b'{"features": {"age": NaN}}', "application/json"),
    ("/recall", _j({"features": {"age": 10**400}}), "application/json"),
    ("/recall", _j({"features": {SURROGATE: 1}}), "application/json"),
    ("/recall", _j({"user_id": SURROGATE}), "application/json"),
    ("/recall", _j({"surprise": 1}), "application/json"),
    ("/recall", _j({"user_id": "u" * 300}), "application/json"),
    ("/recall", _j({"model_version": "v-nope"}), "application/json"),
    ("/recall", _j({"exclude_item_ids": ["x"] * 10_001}), "application/json"),
    ("/recall", _j({"filter": {"genres": {"gt": 3}}}), "application/json"),
    ("/similar", _j({"item_id": "not-indexed"}), "application/json"),
    ("/similar", _j({"k": 3}), "application/json"),
    ("/score", _j({"items": []}), "application/json"),
    ("/score", _j({"items": [{"item_id": str(i)} for i in range(1001)]}), "application/json"),
    ("/score", _j({"items": [{"item_id": "1", "features": {"colour": "red"}}]}), "application/json"),
    ("/score", b"", None),
]


@pytest.mark.parametrize(("route", "content", "ctype"), CASES)
def test_hot_path_answers_as_the_framework(
    served: tuple[TwoTowerAPI, TestClient], route: str, content: bytes, ctype: str | None
) -> None:
    hot, framework = both(served, route, content, ctype)
    assert hot.status_code == framework.status_code, (hot.text[:300], framework.text[:300])
    assert hot.status_code < 500, hot.text[:300]
    assert hot.headers["content-type"] == framework.headers["content-type"]
    assert hot.json() == framework.json()


def test_hot_path_serves_and_counts(served: tuple[TwoTowerAPI, TestClient]) -> None:
    app, client = served
    assert app.hot is not None

    def count(route: str, status: int) -> float:
        text = client.get("/metrics").text
        pattern = rf'twotower_requests_total\{{method="POST",route="{route}",status="{status}"\}} (\S+)'
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0

    before = {s: count("/recall", s) for s in (200, 404, 422)}
    assert client.post("/recall", json={"user_id": "1", "k": 5}).status_code == 200
    assert client.post("/recall", json={"model_version": "v-nope"}).status_code == 404
    assert client.post("/recall", json={"k": 0}).status_code == 422  # raised by the route's own check
    assert client.post("/recall", json={"k": "x"}).status_code == 422  # the framework's validation
    assert count("/recall", 200) == before[200] + 1
    assert count("/recall", 404) == before[404] + 1
    assert count("/recall", 422) == before[422] + 2


def test_hot_path_takes_the_body_limit(model_store: Path, index_root: Path, data_dir: Path) -> None:
    s: Settings = make_settings(model_store, index_root, data_dir, limits={"max_body_bytes": 4096})
    big = json.dumps({"k": 5, "exclude_item_ids": ["x" * 100] * 100}).encode()
    with TestClient(create_app(s)) as c:

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        for path in ("/recall", "/similar", "/score"):
            r = c.post(path, content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.headers["connection"] == "close"
            assert (
                c.post(path, content=chunks(), headers={"content-type": "application/json"}).status_code
                == 413
            )
        assert c.post("/recall", json={"k": 5}).status_code == 200
