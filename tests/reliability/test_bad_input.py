"""Bad input over real HTTP against one real server: schemathesis on the live OpenAPI schema, then
hand-picked bodies (limits, types, encodings, huge bodies). Each gets its 4xx, never a 5xx, the
server stays up and its memory flat."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import ROOT, TOKEN, Server, clean_env, mib, raw_request, read_response

pytestmark = pytest.mark.slow

MAX_BODY = 2_000_000  # the default limit
HOOKS = "tests.reliability.schemathesis_hooks"
SCHEMATHESIS_SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261126"))


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, good_index: GoodIndex, rel_data: Path, model_store: Path
) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(good_index.root, d / "index")
    env = clean_env(
        model_store=model_store,
        index_store=d / "index",
        data_dir=rel_data,
        admin_token=TOKEN,
        shutdown_drain_s=0,
        reindex_on_start="false",
    )
    srv = Server(env, d / "api.log")  # no worker: admin reindex only queues
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_schemathesis_on_the_live_schema(
    api: Server, tmp_path: Path, report: Callable[[str, str, str], None]
) -> None:
    exe = Path(sys.executable).parent / "schemathesis"
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
    )
    checks = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
    cmd += [
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        checks,
        "--header",
        f"Authorization: Bearer {TOKEN}",  # so the admin operations are explored past the 401
        "--max-examples",
        "60",
        "--seed",
        str(SCHEMATHESIS_SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    # Hostile bodies for the free-form `features` and the ids (tests/reliability/schemathesis_hooks.py).
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - t0
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    assert api.alive() and api.get("/readyz").status_code == 200
    generated = next((line.strip() for line in text.splitlines() if "generated" in line), "?")
    assert TOKEN not in api.text()

    report(
        "schemathesis against the live OpenAPI schema of a running server (all 11 operations, admin "
        "with the token; coverage + fuzzing phases, up to 60 examples per operation, positive and negative; "
        "hooks mix hostile /recall and /score bodies in: huge integers, lone surrogates in feature names, "
        "values and ids, deep lists, ids past max_id_length)",
        "zero 5xx; every response matches its schema (status code, content type, body)",
        f"{generated} in {elapsed:.0f} s, seed {SCHEMATHESIS_SEED}: no failure "
        f"(checks {checks.replace(',', ', ')}); the server stayed up",
    )


def _body(obj: object) -> bytes:
    return json.dumps(obj).encode()


# (name, route, raw body, content type, expected status, a word the error detail must contain)
CASES: list[tuple[str, str, bytes, str, int, str]] = [
    ("k = 0", "/recall", _body({"k": 0}), "application/json", 422, "k"),
    ("k negative", "/recall", _body({"k": -5}), "application/json", 422, "k"),
    ("k huge", "/recall", _body({"k": 10**9}), "application/json", 422, "k"),
    ("k past int64", "/recall", _body({"k": 10**30}), "application/json", 422, "k"),
    ("k = 1e308", "/recall", b'{"k": 1e308}', "application/json", 422, "k"),
    ("k = true", "/recall", _body({"k": True}), "application/json", 422, "k"),
    ("k a string", "/recall", _body({"k": "10"}), "application/json", 422, "k"),
    ("k NaN", "/recall", b'{"k": NaN}', "application/json", 422, "k"),
    ("k 1e400 (Infinity)", "/recall", b'{"k": 1e400}', "application/json", 422, "k"),
    ("unknown field = NaN", "/recall", b'{"surprise": NaN}', "application/json", 422, "surprise"),
    ("body NaN", "/score", b"NaN", "application/json", 422, "body"),
    ("feature NaN", "/recall", b'{"features": {"age": NaN}}', "application/json", 422, "age"),
    ("feature -Infinity", "/recall", b'{"features": {"age": -Infinity}}', "application/json", 422, "age"),
    (
        "item feature Infinity",
        "/score",
        b'{"items": [{"item_id": "1", "features": {"release_year": Infinity}}]}',
        "application/json",
        422,
        "release_year",
    ),
    ("user_id a number", "/recall", _body({"user_id": 196}), "application/json", 422, "user_id"),
    ("features a list", "/recall", _body({"features": ["age"]}), "application/json", 422, "features"),
    (
        "history a string",
        "/recall",
        _body({"features": {"history": "1"}}),
        "application/json",
        422,
        "history",
    ),
    (
        "exclude_item_ids a string",
        "/recall",
        _body({"exclude_item_ids": "50"}),
        "application/json",
        422,
        "exclude_item_ids",
    ),
    (
        "exclude_history 0",
        "/recall",
        _body({"exclude_history": 0}),
        "application/json",
        422,
        "exclude_history",
    ),
    ("items an object", "/score", _body({"items": {"item_id": "1"}}), "application/json", 422, "items"),
    ("items empty", "/score", _body({"items": []}), "application/json", 422, "items"),
    ("body a list", "/recall", b"[1, 2]", "application/json", 422, "body"),
    ("body null", "/recall", b"null", "application/json", 422, "body"),
    ("unknown top-level field", "/recall", _body({"surprise": 1}), "application/json", 422, "surprise"),
    ("non-JSON body", "/recall", b"k=5&user_id=1", "application/json", 422, "json"),
    ("form content type", "/recall", b"k=5", "application/x-www-form-urlencoded", 422, "body"),
    ("empty body", "/recall", b"", "application/json", 422, "body"),
    ("empty body, no content type", "/score", b"", "", 422, "body"),
    ("body not UTF-8", "/recall", b'\xff\xfe{"k', "application/json", 400, "parsing"),
    ("JSON nested 100k deep", "/recall", b"[" * 100_000, "application/json", 400, "parsing"),
    (
        "features nested 500 deep",
        "/recall",
        b'{"features": {"history": ' + b"[" * 500 + b"]" * 500 + b"}}",
        "application/json",
        422,
        "history",
    ),
    (
        "unknown model version",
        "/recall",
        _body({"model_version": "v-nope"}),
        "application/json",
        404,
        "v-nope",
    ),
    (
        "unknown model version (score)",
        "/score",
        _body({"model_version": "v-nope", "items": [{"item_id": "1"}]}),
        "application/json",
        404,
        "v-nope",
    ),
    (
        "unknown user feature",
        "/recall",
        _body({"features": {"shoe_size": 44}}),
        "application/json",
        422,
        "shoe_size",
    ),
    (
        "unknown item feature",
        "/score",
        _body({"items": [{"item_id": "1", "features": {"colour": "red"}}]}),
        "application/json",
        422,
        "colour",
    ),
    ("user_id 300 chars", "/recall", _body({"user_id": "u" * 300}), "application/json", 422, "user_id"),
    ("user_id 5000 chars", "/recall", _body({"user_id": "u" * 5000}), "application/json", 422, "user_id"),
    (
        "item_id 5000 chars",
        "/score",
        _body({"items": [{"item_id": "i" * 5000}]}),
        "application/json",
        422,
        "item_id",
    ),
    (
        "10,000 candidates",
        "/score",
        _body({"items": [{"item_id": str(i)} for i in range(10_000)]}),
        "application/json",
        422,
        "items",
    ),
    (
        "100,000-id exclusion list",
        "/recall",
        _body({"k": 5, "exclude_item_ids": [f"x{i}" for i in range(100_000)]}),
        "application/json",
        422,
        "exclude_item_ids",
    ),
]

_LONG = "x" * 257  # one past max_id_length
_HUGE = b"1" + b"0" * 400  # a JSON integer past the float range
CASES += [
    (
        "numeric feature 10**400",
        "/recall",
        b'{"features": {"age": ' + _HUGE + b"}}",
        "application/json",
        422,
        "age",
    ),
    (
        "item numeric feature -10**400",
        "/score",
        b'{"items": [{"item_id": "1", "features": {"release_year": -' + _HUGE + b"}}]}",
        "application/json",
        422,
        "release_year",
    ),
    (
        "lone surrogate as a feature name",
        "/recall",
        b'{"features": {"\\ud800": 1}}',
        "application/json",
        422,
        "ud800",
    ),
    (
        "lone surrogate as an item feature name",
        "/score",
        b'{"items": [{"item_id": "1", "features": {"a\\udfffb": "x"}}]}',
        "application/json",
        422,
        "udfff",
    ),
    ("lone surrogate in user_id", "/recall", b'{"user_id": "\\ud800"}', "application/json", 422, "user_id"),
    (
        "lone surrogate in model_version",
        "/score",
        b'{"model_version": "\\udc00", "items": [{"item_id": "1"}]}',
        "application/json",
        422,
        "model_version",
    ),
    (
        "/score user_id 257 chars",
        "/score",
        _body({"user_id": _LONG, "items": [{"item_id": "1"}]}),
        "application/json",
        422,
        "user_id",
    ),
    (
        "/score item_id 257 chars",
        "/score",
        _body({"items": [{"item_id": "1"}, {"item_id": _LONG}]}),
        "application/json",
        422,
        "item_id",
    ),
    (
        "exclusion id 257 chars",
        "/recall",
        _body({"exclude_item_ids": ["1", _LONG]}),
        "application/json",
        422,
        "exclude_item_ids",
    ),
    (
        "history entry 257 chars",
        "/recall",
        _body({"features": {"history": ["1", _LONG]}}),
        "application/json",
        422,
        "history",
    ),
    (
        "history of nested lists",
        "/recall",
        _body({"features": {"history": [[["1"]]]}}),
        "application/json",
        422,
        "history",
    ),
]

ACCEPTED: list[tuple[str, str, dict[str, Any] | bytes]] = [
    (
        "lone surrogate in a string feature",
        "/recall",
        b'{"k": 5, "features": {"zip": "\\ud83412", "gender": "\\udfff"}}',
    ),
    (
        "lone surrogate in an item title",
        "/score",
        b'{"items": [{"item_id": "n", "features": {"title": "a \\ud800 b"}}]}',
    ),
    ("numeric feature 10**30 (a float)", "/recall", {"k": 5, "features": {"age": 10**30}}),
    (
        "150,000-item history (beyond the exclusion budget)",
        "/recall",
        {"k": 5, "features": {"history": [f"i{i}" for i in range(150_000)]}},
    ),
    ("unicode user_id", "/recall", {"user_id": "用户-é-😀", "k": 5}),
    ("NUL and RTL override in user_id", "/recall", {"user_id": "a\u0000b\u202ec", "k": 5}),
    ("unicode exclusions", "/recall", {"k": 5, "exclude_item_ids": ["ÿ", "😀", "\u0000", "1"]}),
    ("unicode item ids", "/score", {"items": [{"item_id": "物品-😀"}, {"item_id": "1"}]}),
    ("user_id 256 chars (the limit)", "/recall", {"user_id": "u" * 256, "k": 5}),
    ("50,000-item history", "/recall", {"features": {"history": [str(i) for i in range(50_000)]}, "k": 5}),
    ("1,000 candidates (the limit)", "/score", {"items": [{"item_id": str(i)} for i in range(1000)]}),
    (
        "10,000 exclusions (the limit)",
        "/recall",
        {"k": 5, "exclude_item_ids": [str(i) for i in range(10_000)]},
    ),
]

# Filters (/recall, /similar) and /similar's own fields: each 422 names the filter path.
CASES += [
    (
        "filter on an unknown field",
        "/recall",
        _body({"filter": {"colour": {"any": ["red"]}}}),
        "application/json",
        422,
        "colour",
    ),
    (
        "filter on a field not filterable",
        "/similar",
        _body({"item_id": "1", "filter": {"title": {"any": ["a"]}}}),
        "application/json",
        422,
        "title",
    ),
    (
        "filter operator unknown",
        "/recall",
        _body({"filter": {"genres": {"like": ["Com"]}}}),
        "application/json",
        422,
        "like",
    ),
    (
        "filter number as a string",
        "/similar",
        _body({"item_id": "1", "filter": {"release_year": {"gte": "1990"}}}),
        "application/json",
        422,
        "gte",
    ),
    (
        "filter number Infinity",
        "/recall",
        b'{"filter": {"release_year": {"lt": Infinity}}}',
        "application/json",
        422,
        "release_year",
    ),
    (
        "filter number past float",
        "/recall",
        _body({"filter": {"release_year": {"lt": 10**400}}}),
        "application/json",
        422,
        "lt",
    ),
    (
        "filter values not a list",
        "/recall",
        _body({"filter": {"genres": {"any": "Comedy"}}}),
        "application/json",
        422,
        "any",
    ),
    (
        "filter value not a string",
        "/recall",
        _body({"filter": {"genres": {"all": ["Comedy", 7]}}}),
        "application/json",
        422,
        "all",
    ),
    ("filter a list", "/recall", _body({"filter": ["genres"]}), "application/json", 422, "filter"),
    (
        "filter 100k values",
        "/recall",
        _body({"filter": {"genres": {"any": ["x"] * 100_000}}}),
        "application/json",
        422,
        "any",
    ),
    ("similar without item_id", "/similar", _body({"k": 5}), "application/json", 422, "item_id"),
    (
        "similar unknown item",
        "/similar",
        _body({"item_id": "no-such-item"}),
        "application/json",
        404,
        "no-such-item",
    ),
    (
        "similar item_id past the limit",
        "/similar",
        _body({"item_id": "x" * 5000}),
        "application/json",
        422,
        "item_id",
    ),
]
ACCEPTED += [
    ("filter on a value no item has", "/recall", {"k": 5, "filter": {"genres": {"any": ["No-such-genre"]}}}),
    (
        "similar with filter and exclusions",
        "/similar",
        {"item_id": "1", "k": 5, "filter": {"release_year": {"gte": 1990}}, "exclude_item_ids": ["2"]},
    ),
]


class RssPeak:
    """Samples a process's RSS in the background: the highest value seen."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.peak = srv.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.srv.rss())
            time.sleep(0.005)


def test_hand_picked_bad_input(api: Server, report: Callable[[str, str, str], None]) -> None:
    before = api.rss()
    statuses: dict[int, int] = {}
    with RssPeak(api) as rss, httpx.Client(base_url=api.url, timeout=30) as client:
        for name, route, body, ctype, status, word in CASES:
            headers = {"content-type": ctype} if ctype else {}
            r = client.post(route, content=body, headers=headers)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            assert word in json.dumps(r.json()["detail"]).lower() or word in r.text, (name, r.text[:300])
            statuses[status] = statuses.get(status, 0) + 1
        for name, route, obj in ACCEPTED:
            if isinstance(obj, bytes):  # JSON text with escapes httpx would not produce (lone surrogates)
                r = client.post(route, content=obj, headers={"content-type": "application/json"})
            else:
                r = client.post(route, json=obj)
            assert r.status_code == 200, (name, r.status_code, r.text[:300])
        assert client.post("/recall", json={"user_id": "1", "k": 5}).status_code == 200
    assert api.alive()
    after = api.rss()
    assert rss.peak - before < 96 * 2**20, f"RSS {mib(before)} -> peak {mib(rss.peak)}"

    report(
        f"Hand-picked bad input over real HTTP ({len(CASES)} cases): k 0 / negative / huge / past int64 / "
        "1e308 / true / a string; NaN and ±Infinity; wrong JSON types; non-JSON, form-encoded, not "
        "UTF-8, 100k-deep JSON, empty bodies; unknown model version; unknown user and item features; "
        "ids of 300 and 5000 chars; 10,000 candidates; a 100,000-id exclusion list; integers past the float "
        "range in numeric features; lone surrogates in feature names, user_id and model_version; ids one "
        "past max_id_length in /score's user_id and item_id, an exclusion and a history entry",
        "each gets its 4xx naming the field, never a 5xx; the server stays up",
        ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        + f" as expected; {len(ACCEPTED)} edge cases that are valid (unicode, NUL and RTL ids, "
        f"ids at their limits, a 50,000- and a 150,000-item history, lone surrogates in string feature "
        f"values, 10**30 as a number) answered 200; RSS {mib(before)} before, peak "
        f"{mib(rss.peak)}, {mib(after)} after",
    )


def _send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    """Send `chunks` until the server answers (or they run out); returns the bytes sent."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server closed after answering
            break
        sent += len(chunk)
    return sent


def test_ten_megabyte_bodies(api: Server, report: Callable[[str, str, str], None]) -> None:
    total = 10 * 2**20
    part = 64 * 1024
    before = api.rss()
    with RssPeak(api) as rss:
        # With a Content-Length: refused from the headers, before any of the body is read.
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            sock.sendall(
                b"POST /recall HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {total}\r\n\r\n".encode()
                + b"{"
                + b" " * (part - 1)
            )
            status_cl, headers_cl, _ = read_response(sock)
        # Chunked, without a Content-Length: read up to the limit and refused there.
        with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
            sock.sendall(
                b"POST /recall HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            payload = b"[" + b"1," * (part // 2)
            chunk = b"%x\r\n" % part + payload[:part] + b"\r\n"
            sent = _send_until_answered(sock, iter([chunk] * (total // part)))
            status_chunked, headers_chunked, _ = read_response(sock)
        # A bad Content-Length is a 400 from the same middleware.
        status_bad, _, _ = raw_request(
            api.port,
            "POST /recall HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1x",
        )
    after = api.rss()
    assert status_cl == 413 and headers_cl.get("connection") == "close"
    assert status_chunked == 413 and headers_chunked.get("connection") == "close"
    assert sent < total, "the server read the whole chunked body before refusing it"
    assert status_bad == 400
    assert rss.peak - before < 32 * 2**20, f"RSS {mib(before)} -> peak {mib(rss.peak)}"
    assert api.alive() and api.post("/recall", json={"user_id": "1", "k": 5}).status_code == 200

    report(
        "10 MB bodies: with a Content-Length (only 64 KiB of it sent), and chunked without one",
        "413 before the body is parsed; memory flat; the server stays up",
        f"Content-Length: 413 after 64 KiB sent (from the headers alone); chunked: 413 after {sent // 2**20} "
        f"MiB sent of 10 (limit {MAX_BODY // 10**6} MB plus socket buffers), `Connection: close` on both; a "
        f"malformed Content-Length 400; server RSS {mib(before)} before, peak {mib(rss.peak)}, {mib(after)} "
        "after",
    )
