"""The alias record on disk: `<index_store>/aliases.json`, beside the builds it names.

On one node it is the only record; with Redis it is the mirror that outlives a Redis restarted
empty. Every change is a read-modify-write under a file lock, written tmp + fsync + rename + fsync
of the directory, so a reader sees the old file or the new one, never a torn one. A failed write
changes nothing and says why: StorageFull (507) when the disk is full, StoreUnavailable (503) else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.state.locks import file_lock
from models.errors import StorageFull, StoreUnavailable
from models.manifest import fsync_dir

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
Aliases = dict[str, str]


class AliasFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name("aliases.lock")

    def read(self) -> dict[str, str] | None:
        """The recorded aliases, or None when no record was ever written."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: unreadable ({exc.strerror})") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreUnavailable(f"{self.path}: not valid JSON ({exc}); aliases left as they are") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise StoreUnavailable(f"{self.path}: not an object of alias -> version")
        return {str(k): v for k, v in data.items()}

    def update(
        self, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(before, after): `change(before)` written durably if it differs. Blocking: call in a thread."""
        try:
            with file_lock(self.lock_path):
                before = self.read() or {}
                after = change(dict(before))
                if after != before or not self.path.exists():
                    self.write(after)
                return before, after
        except OSError as exc:  # the lock file itself could not be made or locked
            raise StoreUnavailable(
                f"{self.lock_path}: cannot lock the alias record ({exc.strerror}); nothing changed"
            ) from exc

    def write(self, data: dict[str, str]) -> None:
        """Replace the file with `data` (the caller holds the lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".aliases.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            fsync_dir(self.path.parent)
        except OSError as exc:
            if exc.errno in FULL:
                raise StorageFull(f"{self.path}: no space left to record the alias; nothing changed") from exc
            raise StoreUnavailable(
                f"{self.path}: cannot record the alias ({exc.strerror}); nothing changed"
            ) from exc
        finally:
            if tmp is not None:  # nothing half-written is left behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
