"""Build files hashed once per host, not once per process: a marker beside the build says which
files this host has checked against the manifest, and the file states it checked.

    <build>/.verified-<boot id>.json  {"manifest_sha256": ..., "files": {name: {sha256, size, dev,
                                       ino, mtime_ns, ctime_ns}}}
    <build>/.verify.lock              flock: one process hashes, the others wait and read the marker

With `serve --workers N` every process loads every build; each used to read and hash all of its
files (600 MB at 1M items) before mapping them. Now the first process to load a build on a host
hashes its files and records each file's identity and timestamps; a later process skips the hash
of a file whose entry names the manifest's sha256 and whose `stat` is unchanged.

Why that is safe: any change to a file through the filesystem (a write, a truncate, a copy over
it, a rename of another file onto it, `touch`) moves its ctime (and its inode for a replacement),
and ctime cannot be set back from user space. So a file whose (device, inode, size, mtime, ctime)
are what they were when it hashed right is still the file that hashed right. Two limits, both
made safe:
- timestamps are coarse (a clock tick) and a shared volume's server stamps them with its own
  clock: a file is recorded only if its ctime is at least `margin_s` older than the start of
  its hash, so a change after the hash cannot carry the same ctime; a fresher file is hashed
  again by the next process;
- the marker is per boot (the kernel's boot id, which containers on one host share): another
  host, or this one after a reboot, hashes again. Damage below the filesystem (a disk flipping
  bits under an unchanged inode) is not what the hash ever caught reliably either: it read the
  page cache, which a process maps afterwards anyway.
The checksums guard against accidents (a partial copy, a truncated file, a wrong edit), not
against someone who can write the build directory: they could rewrite the manifest too.
A read-only index store gets no marker and no lock: every process hashes, as before.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER_PREFIX = ".verified-"
LOCK = ".verify.lock"
_STAT_KEYS = ("size", "dev", "ino", "mtime_ns", "ctime_ns")


def boot_id() -> str:
    """This kernel's boot id (shared by the containers on one host), else the host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or os.uname().nodename
    except OSError:
        return os.uname().nodename


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, created in place: unlike `locking.file_lock`, never creates the
    directory (a build pruned meanwhile must not come back as an empty directory)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _state(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {
        "size": st.st_size,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


class HostVerification:
    """The files of one build this host has already hashed, for one manifest.

    with HostVerification.held(bdir, manifest_sha) as done:
        for name in names:
            done.verify(bdir / name, lambda: check_sha256(bdir / name))
    """

    def __init__(self, bdir: Path, manifest_sha: str, margin_s: float = 1.0) -> None:
        self.bdir = bdir
        self.manifest_sha = manifest_sha
        self.margin_ns = int(margin_s * 1e9)
        self.path = bdir / f"{MARKER_PREFIX}{boot_id()}.json"
        self.files: dict[str, dict[str, Any]] = {}
        self.hashed: list[str] = []  # the files this process hashed (the others: trusted from the marker)
        self._changed = False

    @classmethod
    @contextmanager
    def held(cls, bdir: Path, manifest_sha: str, margin_s: float = 1.0) -> Iterator[HostVerification]:
        """Under the build's verify lock, the marker read on entry and written on a clean exit. A
        directory where the lock cannot be made (a read-only store): no lock, no marker."""
        self = cls(bdir, manifest_sha, margin_s)
        with ExitStack() as stack:
            try:
                stack.enter_context(_flock(bdir / LOCK))
            except OSError as exc:
                log.debug("%s: no verify lock (%s): every file hashed", bdir, exc)
                yield self
                return
            self._read()
            yield self
            self._write()  # no fsync: a marker lost in a crash only means hashing again

    def verify(self, path: Path, digest: str, check: Callable[[], None]) -> None:
        """`check()` (size and sha256 against `digest`, raising if wrong) unless this host already
        ran it on this very file; a file that passes is recorded when old enough (see the module)."""
        entry = self.files.get(path.name)
        try:
            now: dict[str, int] | None = _state(path)
        except OSError:
            now = None
        if entry is not None and now is not None and entry.get("sha256") == digest:
            if all(entry.get(k) == now[k] for k in _STAT_KEYS):
                return
        started = time.time_ns()
        check()
        self.hashed.append(path.name)
        try:
            after = _state(path)
        except OSError:
            return
        if now is not None and after == now and now["ctime_ns"] <= started - self.margin_ns:
            self.files[path.name] = {"sha256": digest, **now}
            self._changed = True
        elif path.name in self.files:
            del self.files[path.name]
            self._changed = True

    def _read(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(raw, dict) and raw.get("manifest_sha256") == self.manifest_sha:
            files = raw.get("files")
            if isinstance(files, dict):
                self.files = {k: v for k, v in files.items() if isinstance(v, dict)}

    def _write(self) -> None:
        if not self._changed:
            return
        data = json.dumps({"manifest_sha256": self.manifest_sha, "files": self.files}, sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        try:
            tmp.write_text(data + "\n")
            os.replace(tmp, self.path)  # readers see the old marker or the new one, never half
        except OSError as exc:
            log.debug("%s: marker not written (%s)", self.path, exc)
        finally:
            tmp.unlink(missing_ok=True)


def recorded(bdir: Path) -> Mapping[str, Any]:
    """This host's marker of a build ({} if none): for tests and inspection."""
    try:
        raw: Mapping[str, Any] = json.loads((bdir / f"{MARKER_PREFIX}{boot_id()}.json").read_text())
    except (OSError, ValueError):
        return {}
    return raw
