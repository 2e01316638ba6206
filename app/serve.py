"""`twotower serve`: the API under uvicorn, draining on SIGTERM; optionally announcing a token."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from typing import Any

from pydantic import SecretStr

from app.settings import Settings

log = logging.getLogger("twotower")


# What a serving process imports only once it runs (uvicorn picks its loop and protocols in
# `Config.load`, NumPy's random module is first touched by a request): the supervisor imports them
# before it forks, so that the processes share them instead of each holding its own copy.
LATE_IMPORTS = (
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvloop",
    "httptools",
    "anyio._backends._asyncio",
    "numpy.random",
    "logging.config",
    "app.http_protocol",
)


def preload() -> None:
    """Import everything a serving process will, before the supervisor forks them (app.supervisor)."""
    import importlib

    import app.main  # noqa: F401  FastAPI, NumPy, Faiss, ONNX Runtime, the app's own modules

    for name in LATE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional speedup that is not installed (uvloop, httptools)
            continue


def serve(
    settings: Settings,
    host: str,
    port: int,
    no_worker: bool = False,
    announce: bool = False,
    sockets: list[socket.socket] | None = None,
) -> None:
    """One serving process; `sockets`: a listening socket bound by the supervisor (app.supervisor)."""
    import uvicorn

    from app.http_protocol import OneWriteProtocol
    from app.main import create_app

    if no_worker:
        settings.worker = False
    if announce and settings.admin_token is None:
        settings.admin_token = SecretStr(secrets.token_urlsafe(24))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        http=OneWriteProtocol,  # httptools, one write per response (app/http_protocol.py)
    )

    class DrainingServer(uvicorn.Server):
        """On SIGTERM: readiness turns 503 first, the listener closes after the drain delay."""

        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining or settings.shutdown_drain_s <= 0:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            service = getattr(app.state, "service", None)
            if service is not None:
                service.draining = True
            log.info("signal %s: draining for %.1fs before closing", sig, settings.shutdown_drain_s)
            threading.Timer(settings.shutdown_drain_s, super().handle_exit, (sig, frame)).start()

    server = DrainingServer(config)
    if announce:
        threading.Thread(target=_announce, args=(server, settings, host, port), daemon=True).start()
    server.run(sockets=sockets)


def _announce(server: Any, settings: Settings, host: str, port: int) -> None:
    while not server.started:
        time.sleep(0.1)
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    base = f"http://{host}:{port}"
    # Printed once to the terminal for the person who ran `make serve`; never to the log.
    print(
        f"\ntwotower is serving on {base}\n"
        f"  admin token: {token}\n"
        f"  try: curl -s -X POST {base}/recall -H 'content-type: application/json' "
        '-d \'{"user_id":"196","k":10}\'\n'
        f"       curl -s -X POST {base}/admin/reindex -H 'authorization: Bearer {token}'\n",
        flush=True,
    )
