"""docs/BRING_YOUR_MODEL.md works as written: its shell blocks run in order (train + export with
PyTorch, import, reindex, serve, curl), its Python blocks are the example's code, its schema is
the example's schema."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "BRING_YOUR_MODEL.md"
EXAMPLE = ROOT / "examples" / "external"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", GUIDE.read_text(), flags=re.S | re.M)


def test_python_blocks_are_the_example_code() -> None:
    code = (EXAMPLE / "train_towers.py").read_text()
    found = blocks("python")
    assert len(found) == 2
    for block in found:
        assert block in code, block.splitlines()[0]


def test_schema_block_is_the_example_schema() -> None:
    (block,) = blocks("toml")
    shown = tomllib.loads(block)
    real = tomllib.loads((EXAMPLE / "schema.toml").read_text())
    assert shown == {k: v for k, v in real.items() if k not in ("data", "interactions")}


@pytest.mark.slow
@pytest.mark.train
def test_shell_blocks_run_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    shell = blocks("sh")
    assert len(shell) == 4  # train + export, import, reindex, serve + curl
    port = str(free_port())
    script = "set -euo pipefail\n" + "\n".join(b.replace("8001", port) for b in shell)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # var/ is written here, not in the checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the server the guide starts is in this group: cleaned up below
    )
    try:
        out, err = proc.communicate(timeout=600)
    finally:  # a script that failed half-way may have left the server running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]
    assert "wrote model version shop-dot-1 (dot, dim 32)" in out
    # curl prints each answer without a newline: decode the two JSON objects one after the other.
    text = out[out.index('{"model_version"') :]
    recall, end = json.JSONDecoder().raw_decode(text)
    score, _ = json.JSONDecoder().raw_decode(text[end:].lstrip())
    assert recall["model_version"] == "shop-dot-1" and len(recall["items"]) == 5
    assert [s["item_id"] for s in score["scores"]] == ["i7", "new-1"]
    assert all(isinstance(s["score"], float) for s in score["scores"])
    assert (tmp_path / "var" / "models" / "shop-dot-1" / "manifest.json").is_file()
