"""Delivery files: the compose file validates, the Dockerfile lints and runs the Makefile's commands,
and nothing private is committed. (No Docker engine runs on CI machines.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is missing: `make test` installs the dev extra")
    return path


def test_compose_file_is_valid() -> None:
    out = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_topology() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for needle in (
        "replicas: 2",
        'TWOTOWER_WORKER: "false"',
        "condition: service_healthy",
        '["twotower", "worker"]',
        "${ADMIN_TOKEN",
        "redis-data:/data",
        "index:/srv/index",
    ):
        assert needle in text, needle


def test_dockerfile_lints_clean() -> None:
    out = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_runs_the_makefile_commands() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    for cmd in ("twotower data ml-100k --out", "twotower reindex", "pip install"):
        assert cmd in docker and cmd in make.replace("$(BIN)/", ""), cmd
    assert "torch" not in docker
    assert re.search(r"^USER \d+", docker, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in docker and "/healthz" in docker
    assert 'ENTRYPOINT ["twotower", "serve"]' in docker


def test_nothing_private_is_committed() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in files if re.search(r"(u\.data|\.inter|\.user|\.item|interactions\.csv)$", f)]
    pattern = re.compile(r"/(root|home)/\w+|/work/ma[i]n|BEGIN (RSA|OPENSSH) PRIVATE KEY")
    for f in files:
        path = ROOT / f
        if path.suffix in (".onnx", ".png", ".npy", ".faiss") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        assert not pattern.search(text), f"{f} holds a machine path or a secret"
