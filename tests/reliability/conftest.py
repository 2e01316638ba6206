"""Fixtures for the reliability scenarios: a small catalog, one good index build, real processes that
are always stopped, a redis-server per test that the test may kill, and the scenario report.

`RELIABILITY_REPORT=path pytest tests/reliability` writes the table of docs/RELIABILITY.md (scenario,
expected, observed, result) from the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models.manifest import ModelManifest
from tests.conftest import RedisServer
from tests.data import build_index, write_dataset
from tests.reliability.chaos import NOT_NICE
from tests.reliability.procs import TOKEN, Proc, Server, clean_env

N_ITEMS = 300
N_USERS = 30


@pytest.fixture(scope="session")
def rel_data(tmp_path_factory: pytest.TempPathFactory, manifest: ModelManifest) -> Path:
    out = tmp_path_factory.mktemp("rel-data")
    write_dataset(out, manifest, N_USERS, N_ITEMS, seed=5)
    return out


@dataclass(frozen=True)
class GoodIndex:
    root: Path
    build: str


@pytest.fixture(scope="session")
def good_index(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, version: str, rel_data: Path
) -> GoodIndex:
    """One real build of the demo version over `rel_data`, copied by each test that needs it."""
    root = tmp_path_factory.mktemp("rel-index")
    return GoodIndex(root, build_index(root, model_store, version, rel_data))


@pytest.fixture
def index_root(tmp_path: Path, good_index: GoodIndex) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(good_index.root, dst)
    return dst


@pytest.fixture
def own_models(tmp_path: Path, model_store: Path) -> Path:
    """A model store this test may break (the session's one is shared)."""
    dst = tmp_path / "models"
    shutil.copytree(model_store, dst)
    return dst


@pytest.fixture
def base_env(rel_data: Path, model_store: Path, index_root: Path) -> dict[str, str]:
    env = clean_env(
        model_store=model_store,
        index_store=index_root,
        data_dir=rel_data,
        admin_token=TOKEN,
        poll_interval_s=0.2,
        shutdown_drain_s=0,
        reindex_on_start="false",
        lock_ttl_s=2,
    )
    # Build children at normal priority: these tests are about faults, and several run builds
    # while load keeps both cores busy, where the default (SCHED_IDLE) build waits for idle CPU
    # (a 90 s timeout seen in CI). Yielding the CPU is tested in tests/app/reindex/test_cpu.py.
    return {**env, **NOT_NICE}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """spawn(kind, env, name, **kw) -> Server or Proc; every one is stopped at teardown."""
    started: list[Proc] = []

    def make(kind: str, env: dict[str, str], name: str, **kw: Any) -> Any:
        log = tmp_path / f"{name}.log"
        proc: Proc = Server(env, log, **kw) if kind == "serve" else Proc([kind], env, log, **kw)
        started.append(proc)
        return proc

    yield make
    for p in reversed(started):
        p.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (not started): the test may stop, pause or kill it."""
    server = RedisServer(tmp_path)
    yield server
    if server.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


# --- the report ----------------------------------------------------------------------------------

_ROWS: list[dict[str, str]] = []
_RESULTS: dict[str, tuple[str, float]] = {}


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str, str, str], None]:
    """report(scenario, expected, observed): one row of docs/RELIABILITY.md."""
    started = time.monotonic()

    def add(scenario: str, expected: str, observed: str) -> None:
        _ROWS.append(
            {
                "nodeid": request.node.nodeid,
                "scenario": scenario,
                "expected": expected,
                "observed": observed,
                "at": f"{time.monotonic() - started:.1f}",
            }
        )

    return add


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call" or rep.failed:
        previous = _RESULTS.get(item.nodeid, ("passed", 0.0))
        outcome = rep.outcome if previous[0] == "passed" else previous[0]
        _RESULTS[item.nodeid] = (outcome, previous[1] + rep.duration)
    return rep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("RELIABILITY_REPORT")
    if not path or not _ROWS:
        return
    lines = [
        "| scenario | expected | observed | result |",
        "| --- | --- | --- | --- |",
    ]
    for row in _ROWS:
        outcome, seconds = _RESULTS.get(row["nodeid"], ("not run", 0.0))
        cells = [row["scenario"], row["expected"], row["observed"], f"{outcome} ({seconds:.0f} s)"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n")


# --- for the chaos suite (issue 11) ---------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "2m") mounted on `mnt` for the block, or a skip saying why it cannot be."""
    import subprocess

    mnt.mkdir()
    try:
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs the test may fill, or a skip saying why it cannot be mounted here."""
    with mounted_tmpfs(tmp_path / "tiny-disk", "2m") as mnt:
        yield mnt


def fill_disk(path: Path) -> Path:
    """Write zeros into `path/filler` until the filesystem is full; returns the filler."""
    import errno

    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
