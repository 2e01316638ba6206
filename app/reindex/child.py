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

import json
import os
import sys
from typing import Any

from app.settings import Settings


def command(version: str, token: str) -> list[str]:
    cmd = [sys.executable, "-m", "app.cli", "reindex", "--model-version", version, "--json-progress"]
    return cmd + ["--fence-token", token]


def environment(settings: Settings) -> dict[str, str]:
    config = settings.model_dump(mode="json", exclude={"admin_token"})
    env = {k: v for k, v in os.environ.items() if k != "TWOTOWER_ADMIN_TOKEN"}
    return {**env, "TWOTOWER_CONFIG_JSON": json.dumps(config)}


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
