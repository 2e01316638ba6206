"""The temporal split, the metrics on hand-made scores, and the Markdown table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data import load_dataset
from models.schema import load_schema
from models.training.evaluate import eval_set, metrics_table, rank_metrics, temporal_split
from tests.models.conftest import MOVIELENS


def test_temporal_split_holds_out_the_last_two(tiny_data: Path) -> None:
    ds = load_dataset(tiny_data, load_schema(MOVIELENS))
    split = temporal_split(ds)
    for u, seq in split.sequences.items():
        times = [r.timestamp for r in ds.histories()[u]]
        assert times == sorted(times)
        assert split.train[u] == seq[:-2] and split.valid[u] == seq[-2] and split.test[u] == seq[-1]
    es = eval_set(split, "test")
    u0 = es.users[0]
    assert es.history[0] == split.sequences[u0][:-1]
    assert es.target[0] not in es.exclude[0]
    val = eval_set(split, "valid")
    assert val.history[0] == split.sequences[u0][:-2]


def test_rank_metrics_counts_rank_after_exclusions(tiny_data: Path) -> None:
    split = temporal_split(load_dataset(tiny_data, load_schema(MOVIELENS)))
    es = eval_set(split, "test")
    items = sorted({i for s in split.sequences.values() for i in s})
    col = {i: j for j, i in enumerate(items)}
    scores = np.zeros((len(es.users), len(items)))
    for row, (target, excl) in enumerate(zip(es.target, es.exclude, strict=True)):
        for i in excl:
            scores[row, col[i]] = 100.0  # excluded items score highest and must not count
        scores[row, col[target]] = 1.0 if row % 2 == 0 else -1.0  # odd rows: ranked last
    m = rank_metrics(scores, items, es, ks=(1, 10))
    n_even = (len(es.users) + 1) // 2
    assert m["recall@1"] == n_even / len(es.users)
    assert np.isclose(m["ndcg@10"], n_even / len(es.users))


def test_metrics_table_renders() -> None:
    table = metrics_table(
        {
            "two_tower": {"recall@10": 0.1, "recall@50": 0.4, "recall@100": 0.5, "ndcg@10": 0.05},
            "most_popular": {"recall@10": 0.05, "recall@50": 0.14, "recall@100": 0.2, "ndcg@10": 0.02},
            "split": "not a row",
        }
    )
    lines = table.splitlines()
    assert lines[0] == "| model | Recall@10 | Recall@50 | Recall@100 | NDCG@10 |"
    assert lines[2] == "| two-tower | 0.1000 | 0.4000 | 0.5000 | 0.0500 |"
    assert len(lines) == 4
