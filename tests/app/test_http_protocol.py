"""app/http_protocol.py: uvicorn's protocol with the response head written together with the body.

A real uvicorn server on a loopback port, a raw socket as the client: the bytes on the wire are
uvicorn's own (status line, headers, body, chunked framing, keep-alive), only the first write is
later. Without OneWriteProtocol the head arrives while the body is still being computed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.http_protocol import OneWriteProtocol
from tests.conftest import free_port

HEAD_TO_BODY_S = 0.3
PROTOCOL: Any = OneWriteProtocol


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    await receive()
    if path == "/stream":  # chunked: no content-length, several body parts
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two", "more_body": False})
        return
    if path == "/broken":  # a response started and never finished
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("the app failed after starting its response")
    body = b'{"ok":true}'
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/slow":
        await asyncio.sleep(HEAD_TO_BODY_S)
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=PROTOCOL, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def request(conn: socket.socket, method: str, path: str) -> None:
    conn.sendall(f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n".encode())


def read_until(conn: socket.socket, marker: bytes, timeout_s: float = 5.0) -> bytes:
    conn.settimeout(timeout_s)
    data = b""
    while marker not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_head_waits_for_the_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request(conn, "POST", "/slow")
        conn.settimeout(HEAD_TO_BODY_S / 2)
        with pytest.raises(TimeoutError):  # stock uvicorn has sent the status line by now
            conn.recv(65536)
        data = read_until(conn, b'{"ok":true}')
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b'\r\n\r\n{"ok":true}')
    assert b"content-length: 11\r\n" in data


def test_keep_alive_and_head_requests(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(3):
            request(conn, "POST", "/fast")
            assert read_until(conn, b'{"ok":true}').count(b"HTTP/1.1 200 OK") == 1
        request(conn, "HEAD", "/fast")  # uvicorn sends the head only
        data = read_until(conn, b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\n")
        request(conn, "POST", "/fast")  # the connection is still in step
        assert read_until(conn, b'{"ok":true}').startswith(b"HTTP/1.1 200 OK")


def test_closing_responses_keep_their_head(port: int) -> None:
    """`Connection: close`: uvicorn closes the transport in the same send (for HEAD, without
    writing any body part): the head still goes out first."""
    for method, marker in (("HEAD", b"\r\n\r\n"), ("POST", b'{"ok":true}')):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(f"{method} /fast HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode())
            data = read_until(conn, marker)
        assert data.startswith(b"HTTP/1.1 200 OK"), (method, data)
        assert b"connection: close" in data.lower()


def test_chunked_parts(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request(conn, "POST", "/stream")
        data = read_until(conn, b"0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in data and b"x-a: 1\r\n" in data
    assert data.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")


def test_a_response_never_finished_closes_the_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        request(conn, "POST", "/broken")
        conn.settimeout(5)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert b'{"ok"' not in data  # closed without a body; the client sees an incomplete response
    with socket.create_connection(("127.0.0.1", port)) as conn:  # the server still answers
        request(conn, "POST", "/fast")
        assert read_until(conn, b'{"ok":true}').startswith(b"HTTP/1.1 200 OK")
