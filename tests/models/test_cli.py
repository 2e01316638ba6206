"""`twotower data` / `train`: clear errors with exit code 2; no torch import on the serving path."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from models import cli
from tests.models.conftest import MOVIELENS


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twotower")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_importing_models_cli_does_not_import_torch() -> None:
    code = (
        "import sys, models.cli, models.manifest, models.features, models.data, models.schema, "
        "models.runtime; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_data_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep").write_text("x")
    assert _run(["data", "ml-100k", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_data_rejects_unknown_dataset() -> None:
    with pytest.raises(SystemExit) as info:
        _run(["data", "ml-1m", "--out", "x"])
    assert info.value.code == 2


@pytest.mark.train
def test_train_on_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--schema", str(MOVIELENS), "--data", str(tmp_path / "none")]
    assert _run([*argv, "--model-store", str(tmp_path / "s")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.train
def test_train_names_a_schema_mistake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "schema.toml"
    bad.write_text(MOVIELENS.read_text().replace('kind = "hashed"', 'kind = "hashd"'))
    argv = ["train", "--schema", str(bad), "--data", str(tmp_path), "--model-store", str(tmp_path / "s")]
    assert _run(argv) == 2
    assert f"{bad}: user.fields.zip: unknown kind 'hashd'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.train
def test_train_rejects_bad_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--schema", str(MOVIELENS), "--data", str(tmp_path), "--model-store", str(tmp_path)]
    assert _run([*argv, "--version", "a/b"]) == 2
    assert "invalid version tag" in capsys.readouterr().err


def test_train_rejects_bad_numbers_and_needs_a_schema() -> None:
    with pytest.raises(SystemExit):
        _run(["train", "--schema", "s.toml", "--data", "d", "--model-store", "s", "--epochs", "0"])
    with pytest.raises(SystemExit):
        _run(["train", "--data", "d", "--model-store", "s"])
