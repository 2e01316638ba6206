"""The ablation runner cannot rot: two configurations, one seed, two epochs, tiny towers, with the
most-popular and ALS baselines, a table, and a resumed run that trains nothing again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.train, pytest.mark.slow]
pytest.importorskip("torch")
pytest.importorskip("implicit")

from models.training import ablation  # noqa: E402
from tests.models.conftest import MOVIELENS  # noqa: E402


def test_tiny_ablation_runs_resumes_and_renders(tiny_data: Path, tmp_path: Path) -> None:
    results, table = tmp_path / "runs.jsonl", tmp_path / "table.md"
    argv = [
        "--schema", str(MOVIELENS), "--data", str(tiny_data), "--rows", "baseline,attention,mns-1024",
        "--row", "short:temperature=0.2,history=3", "--seeds", "1", "--epochs", "2", "--tiny",
        "--threads", "1", "--results", str(results), "--table", str(table),
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["row"] for r in runs] == ["most-popular", "als", "baseline", "attention", "mns-1024", "short"]
    for r in runs:
        for stage in ("valid", "test"):
            assert set(r[stage]) == {"recall@10", "recall@50", "recall@100", "ndcg@10"}
            assert 0.0 <= r[stage]["recall@10"] <= r[stage]["recall@50"] <= r[stage]["recall@100"] <= 1.0
    short = runs[-1]
    assert short["config"]["temperature"] == 0.2 and short["epochs_run"] == 2
    text = table.read_text()
    assert text.startswith("`python -m models.training.ablation --schema")
    for name in ("| baseline |", "| attention |", "| mns-1024 |", "| short |", "| most-popular |", "| als |"):
        assert name in text
    # a second run finds every (row, seed) done: nothing is trained or appended
    assert ablation.main(argv) == 0
    assert len(results.read_text().splitlines()) == len(runs)


def test_unknown_row_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown row"):
        ablation.parse_row("nope")
    with pytest.raises(SystemExit, match="unknown TrainConfig field"):
        ablation.parse_row("x:bogus=1")
