"""Admin security over real HTTP: missing, wrong and near-miss tokens get 401, no token configured
gets 403, no path trick reaches an admin route without the token, and the token is never logged."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.reliability.procs import ADMIN, TOKEN, Server, deadline_loop, raw_request

pytestmark = pytest.mark.slow

ROUTES = [
    ("GET", "/admin/versions"),
    ("POST", "/admin/reindex"),
    ("PUT", "/admin/aliases/canary"),
    ("GET", "/admin/reindex/abc"),
]
NEAR_MISSES = {
    "missing": {},
    "scheme only": {"authorization": "Bearer"},
    "wrong": {"authorization": "Bearer wrong"},
    "one char short": {"authorization": f"Bearer {TOKEN[:-1]}"},
    "one char more": {"authorization": f"Bearer {TOKEN}x"},
    "last char changed": {"authorization": f"Bearer {TOKEN[:-1]}{'d' if TOKEN[-1] != 'd' else 'e'}"},
    "upper case": {"authorization": f"Bearer {TOKEN.upper()}"},
    "no scheme": {"authorization": TOKEN},
    "no space": {"authorization": f"Bearer{TOKEN}"},
    "Basic scheme": {"authorization": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()},
    "Token scheme": {"authorization": f"Token {TOKEN}"},
    "in a cookie": {"cookie": f"token={TOKEN}; authorization=Bearer%20{TOKEN}"},
    "in another header": {"x-api-key": TOKEN, "x-admin-token": TOKEN},
}
# Request targets sent byte for byte (no client normalisation); none may reach an admin route.
TRICKS = [
    "//admin/versions",
    "/admin//versions",
    "/admin/../admin/versions",
    "/x/../admin/versions",
    "/./admin/versions",
    "/admin/./versions",
    "/%61dmin/versions",
    "/admin/%76ersions",
    "/admin%2Fversions",
    "/%2Fadmin/versions",
    "/%2e%2e/admin/versions",
    "/admin/reindex/..%2Fversions",
    "/admin/reindex/%2e%2e/versions",
    "/recall/../admin/versions",
    "/admin/versions/",
    "/admin/versions/.",
    "/ADMIN/versions",
    "/Admin/Versions",
    "/admin/VERSIONS",
    "/admin/versions;",
    "/admin/versions;x=1",
    "/admin/versions%00",
    "/admin/versions%20",
    "/admin/versions?",
    "/admin/versions?token=" + TOKEN[:4],
    "/admin/versions#frag",
    "/admin\\versions",
    "http://127.0.0.1/admin/versions",
]


def start(spawn: Callable[..., Any], env: dict[str, str], name: str, **kw: Any) -> Server:
    srv: Server = spawn("serve", env, name, **kw)
    srv.wait_ready()
    return srv


def test_admin_tokens_and_path_tricks(
    spawn: Callable[..., Any], base_env: dict[str, str], report: Callable[[str, str, str], None]
) -> None:
    srv = start(spawn, {**base_env, "TWOTOWER_LOG_LEVEL": "DEBUG"}, "api", worker=True)
    checked = 0
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for name, headers in NEAR_MISSES.items():
            for method, path in ROUTES:
                for params in (None, {"token": TOKEN, "access_token": TOKEN}):
                    r = client.request(
                        method, path, headers=headers, params=params, json={"model_version": "x"}
                    )
                    assert r.status_code == 401, (name, method, path, r.status_code, r.text)
                    assert r.headers["www-authenticate"] == "Bearer"
                    checked += 1
        # Two Authorization headers, the wrong one first: the first is the one checked.
        r = client.get("/admin/versions", headers=[("authorization", "Bearer wrong"), *ADMIN.items()])
        assert r.status_code == 401
        assert client.get("/admin/versions", headers=ADMIN).status_code == 200  # the right token works
        assert client.get("/admin/versions", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200

    statuses: dict[int, int] = {}
    for target in TRICKS:
        status, headers, body = raw_request(
            srv.port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close"
        )
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (307, 400, 401, 404, 405), (target, status, body[:200])
        assert b"model_version" not in body, (target, body[:200])
        if status == 307:  # a redirect to the canonical path, which then wants the token
            path = urlsplit(headers["location"]).path  # the Host we sent was "t"
            assert path.startswith("/admin/") and httpx.get(srv.url + path, timeout=5).status_code == 401
    # Method and routing-header tricks.
    for method in ("HEAD", "OPTIONS", "TRACE", "PATCH"):
        status, _, body = raw_request(
            srv.port, f"{method} /admin/versions HTTP/1.1\r\nHost: t\r\nConnection: close"
        )
        assert status in (401, 405), (method, status)
        assert b"model_version" not in body
    for header in (
        "X-HTTP-Method-Override: GET",
        "X-Original-URL: /admin/versions",
        "X-Rewrite-URL: /admin/versions",
    ):
        status, _, body = raw_request(
            srv.port, f"POST /admin/versions HTTP/1.1\r\nHost: t\r\n{header}\r\nContent-Length: 0"
        )
        assert status in (401, 405), (header, status)
        status, _, body = raw_request(
            srv.port, f"GET /healthz HTTP/1.1\r\nHost: t\r\n{header}\r\nConnection: close"
        )
        assert status == 200 and json.loads(body)["status"] == "ok", (header, body)

    # No token configured (unset, or empty): admin is disabled, whatever is sent.
    disabled = {}
    for label, value in (("unset", None), ("empty", "")):
        env = {k: v for k, v in base_env.items() if k != "TWOTOWER_ADMIN_TOKEN"}
        if value is not None:
            env["TWOTOWER_ADMIN_TOKEN"] = value
        off = start(spawn, env, f"api-no-token-{label}")
        for method, path in ROUTES:
            for headers in ({}, ADMIN, {"authorization": "Bearer"}):
                r = httpx.request(method, f"{off.url}{path}", headers=headers, json={}, timeout=10)
                assert r.status_code == 403 and "disabled" in r.json()["detail"], (label, path, r.text)
        disabled[label] = off
        off.stop()

    report(
        f"Admin auth over real HTTP: {len(NEAR_MISSES)} missing / wrong / near-miss credentials (one char "
        "short or more or changed, upper case, no scheme, Basic, cookie, other headers, query string) x "
        f"{len(ROUTES)} routes; {len(TRICKS)} path tricks (`//admin`, `/admin/../admin`, percent-encoding, "
        "trailing slash, case, `;`, NUL, backslash, absolute-form); method and rewrite-header tricks; "
        "no token configured (unset and empty)",
        "401 for every wrong credential; 403 when no token is configured; no trick reaches admin without "
        "the token",
        f"{checked} requests all 401 with `WWW-Authenticate: Bearer`; path tricks answered "
        + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        + " (each 307 leads to a 401); no admin data in any body; no token configured: 403 on every "
        "route, with or without a token, for both an unset and an empty setting",
    )


def test_admin_token_never_logged(
    spawn: Callable[..., Any], base_env: dict[str, str], report: Callable[[str, str, str], None]
) -> None:
    srv = start(spawn, {**base_env, "TWOTOWER_LOG_LEVEL": "DEBUG"}, "api", worker=True)
    for headers in (ADMIN, {"authorization": f"Bearer {TOKEN}x"}, {"authorization": f"Bearer {TOKEN[:-1]}"}):
        for method, path in ROUTES:
            httpx.request(
                method, f"{srv.url}{path}", headers=headers, json={"model_version": "nope"}, timeout=10
            )
    # A reindex with the right token: the worker starts a build child; its command line and
    # environment must not carry the token either.
    job_id = srv.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
    child_seen = False
    for _ in deadline_loop(60, "the build to finish", step=0.005):
        for p in srv.children():
            try:
                cmdline = p.cmdline()
                if "reindex" in cmdline:
                    env = p.environ()
                    assert TOKEN not in " ".join(cmdline) and all(TOKEN not in v for v in env.values())
                    child_seen = True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        job = srv.get(f"/admin/reindex/{job_id}", headers=ADMIN).json()
        if job["status"] in ("succeeded", "failed"):
            break
    assert job["status"] == "succeeded", job
    srv.wait_build(job["index_build"])
    assert TOKEN not in srv.get("/metrics").text
    srv.stop()
    log = srv.text()
    fragment = TOKEN[4:16]  # in every near miss too
    assert "DEBUG" in log and "index build" in log  # the log did capture the run, at DEBUG
    assert fragment not in log, [line for line in log.splitlines() if fragment in line][:3]

    report(
        "Admin token in the logs: server stdout+stderr at DEBUG captured across admin calls with the "
        "right, a longer and a shorter token, and a reindex whose build child runs",
        "the token (or any part of it) never appears",
        f"{len(log.splitlines())} log lines, no occurrence of the token or of a 12-character piece of it; "
        "the build child's command line and environment "
        f"{'checked: no token' if child_seen else 'not caught'}; /metrics free of it",
    )
