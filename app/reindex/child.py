"""The build child's protocol: how the worker starts `python -m app.cli reindex` for one version
and what the child prints back.

A build re-encodes the whole catalog and trains an index: seconds of CPU that must not starve the
event loop, so it runs in its own process (its memory is returned when it exits, and a crash cannot
take the API down). The child gets the worker's settings as JSON in TWOTOWER_CONFIG_JSON (never the
admin token) and the lock's token as `--fence-token`; it prints one JSON object a line on stdout:

    {"items": n}                                  progress, every batch encoded
    {"build_id": "...", "model_version": "..."}   published (the last line)

Its last stderr line is the error of a failed build.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from app.settings import Settings

PARENT_ENV = "TWOTOWER_BUILD_PARENT"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def command(version: str, token: str, allow_shrink: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "app.cli", "reindex", "--model-version", version, "--json-progress"]
    return cmd + ["--fence-token", token] + (["--allow-shrink"] if allow_shrink else [])


def environment(settings: Settings) -> dict[str, str]:
    config = settings.model_dump(mode="json", exclude={"admin_token"})
    env = {k: v for k, v in os.environ.items() if k != "TWOTOWER_ADMIN_TOKEN"}
    return {**env, "TWOTOWER_CONFIG_JSON": json.dumps(config), PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """preexec_fn of the build child: the kernel SIGKILLs it when the worker dies (Linux), so no
    build outlives its worker holding the index store's build lock or writing a tmp directory."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def watch_parent(interval_s: float = 1.0) -> None:
    """In the child: exit once the worker that started it is gone (the belt to PDEATHSIG's braces:
    it also covers a parent that died before prctl, and systems without it)."""
    raw = os.environ.get(PARENT_ENV)
    if not raw or not raw.isdigit():
        return
    parent = int(raw)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def progress_line(items: int) -> str:
    return json.dumps({"items": items})


def done_line(build_id: str, version: str) -> str:
    return json.dumps({"build_id": build_id, "model_version": version})


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One line of the child's stdout as a message, or None for anything else it printed."""
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None
