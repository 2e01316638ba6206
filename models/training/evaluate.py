"""Temporal leave-one-out split, whole-catalog Recall@K / NDCG@10, and a most-popular baseline."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.data import Dataset

KS = (10, 50, 100)


@dataclass(frozen=True)
class Split:
    """Per-user temporal split: last interaction = test, the one before = validation, the rest train.

    `sequences[u]` is the user's full item sequence in time order; a user with fewer than 3
    interactions contributes everything to training and is not evaluated.
    """

    sequences: Mapping[str, list[str]]
    train: Mapping[str, list[str]]
    valid: Mapping[str, str]
    test: Mapping[str, str]

    def train_counts(self) -> Counter[str]:
        return Counter(i for seq in self.train.values() for i in seq)


def temporal_split(data: Dataset) -> Split:
    seqs = {u: [r.item_id for r in rows] for u, rows in data.histories().items()}
    train: dict[str, list[str]] = {}
    valid: dict[str, str] = {}
    test: dict[str, str] = {}
    for u, seq in seqs.items():
        if len(seq) >= 3:
            train[u], valid[u], test[u] = seq[:-2], seq[-2], seq[-1]
        else:
            train[u] = seq
    return Split(sequences=seqs, train=train, valid=valid, test=test)


@dataclass(frozen=True)
class EvalSet:
    """Users to score, each with the history the user tower sees, the held-out item and exclusions."""

    users: list[str]
    history: list[list[str]]
    target: list[str]
    exclude: list[set[str]]


def eval_set(split: Split, stage: str) -> EvalSet:
    """`stage` "valid" or "test": the user tower is fed the history strictly before the held-out item;
    every other item the user interacted with is excluded from the ranking."""
    held = split.valid if stage == "valid" else split.test
    users = sorted(held)
    history, target, exclude = [], [], []
    for u in users:
        seq = split.sequences[u]
        pos = len(seq) - (2 if stage == "valid" else 1)
        history.append(seq[:pos])
        target.append(seq[pos])
        exclude.append(set(seq) - {seq[pos]})
    return EvalSet(users=users, history=history, target=target, exclude=exclude)


def rank_metrics(
    scores: np.ndarray, item_ids: Sequence[str], es: EvalSet, ks: Sequence[int] = KS
) -> dict[str, float]:
    """scores [U, N] for users in `es` against `item_ids`; one held-out item per user."""
    index = {i: j for j, i in enumerate(item_ids)}
    scores = scores.astype(np.float64, copy=True)
    for row, excl in enumerate(es.exclude):
        cols = [index[i] for i in excl if i in index]
        scores[row, cols] = -np.inf
    tgt = np.array([index.get(t, -1) for t in es.target])
    valid = tgt >= 0
    tgt_score = scores[np.arange(len(tgt)), np.where(valid, tgt, 0)]
    # rank = number of items scored strictly higher (ties count in the target's favour)
    rank = (scores > tgt_score[:, None]).sum(axis=1)
    rank = np.where(valid, rank, len(item_ids))
    out = {f"recall@{k}": float((rank < k).mean()) for k in ks}
    out["ndcg@10"] = float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    out["users"] = float(len(tgt))
    return out


def popularity_scores(split: Split, item_ids: Sequence[str], n_users: int) -> np.ndarray:
    counts = split.train_counts()
    row = np.array([counts.get(i, 0) for i in item_ids], dtype=np.float64)
    return np.broadcast_to(row, (n_users, len(item_ids)))


def evaluate(
    split: Split,
    stage: str,
    item_ids: Sequence[str],
    item_vectors: np.ndarray,
    user_vectors: Callable[[EvalSet], np.ndarray],
    baseline: bool = True,
) -> dict[str, dict[str, float]]:
    """Two-tower vs most-popular on the same users and exclusions. Vectors are L2-normalised,
    so the dot product is the cosine the service ranks by."""
    es = eval_set(split, stage)
    out = {"two_tower": rank_metrics(user_vectors(es) @ item_vectors.T, item_ids, es)}
    if baseline:
        out["most_popular"] = rank_metrics(popularity_scores(split, item_ids, len(es.users)), item_ids, es)
    return out


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per model, one column per metric."""
    cols = [f"recall@{k}" for k in KS] + ["ndcg@10"]
    lines = [
        "| model | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in cols) + " |"
    ]
    lines.append("| --- |" + " ---: |" * len(cols))
    for name, m in metrics.items():
        if not isinstance(m, Mapping) or not all(c in m for c in cols):
            continue
        vals = " | ".join(f"{float(m[c]):.4f}" if math.isfinite(float(m[c])) else "n/a" for c in cols)
        lines.append(f"| {name.replace('_', '-')} | {vals} |")
    return "\n".join(lines) + "\n"
