"""The training inputs, encoded once (`prepare`) and kept as tensors, and the towers run over them
whole (evaluation, hard-negative mining).

Speed: a batch is an `index_select` plus trimming all-padding columns (`take`), so no Python feature
encoding runs per batch or per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from models.data import Dataset
from models.errors import DataError
from models.features import FeatureSchema
from models.schema import SchemaFile
from models.training.evaluate import Split, eval_set, temporal_split
from models.training.towers import TwoTower, to_tensors
from models.transform import TowerEncoder


@dataclass(frozen=True)
class Prepared:
    data: Dataset
    split: Split
    schema: FeatureSchema
    item_ids: list[str]  # catalogue order of `item_arrays` rows
    item_arrays: dict[str, np.ndarray]
    user_arrays: dict[str, np.ndarray]  # one row per training example
    target: np.ndarray  # catalogue row of each example's item
    item_prob: np.ndarray  # training click frequency per catalogue item (the in-batch sampling q)
    example_user: np.ndarray  # row in `train_users` of each example's user
    train_users: list[str]
    user_last: dict[str, np.ndarray]  # each train user with the full training history (mining)
    user_items: list[np.ndarray]  # catalogue rows each train user interacted with in training
    item_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    user_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    eval_inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # by stage


def user_row(data: Dataset, user_id: str, history: list[str]) -> dict[str, Any]:
    """A user's features with every `from_interactions` key holding `history` (oldest first)."""
    row = dict(data.users.get(user_id, {data.layout.user_id: user_id}))
    for key in data.layout.history:
        row[key] = history
    return row


def history_len(schema: FeatureSchema) -> int:
    """How much of a user's past the `from_interactions` fields can use (0: none of them)."""
    return max((f.max_len for f in schema.user.fields if f.from_interactions), default=0)


def with_history_len(schema_file: SchemaFile, n: int) -> SchemaFile:
    """The schema with every `from_interactions` field keeping the user's last `n` items."""
    fields = tuple(replace(f, max_len=n) if f.from_interactions else f for f in schema_file.user.fields)
    return replace(schema_file, user=replace(schema_file.user, fields=fields))


def prepare(data: Dataset, schema_file: SchemaFile) -> Prepared:
    split = temporal_split(data)
    # vocabularies and statistics come from the whole tables; a history field's values are the
    # user's items, so users are offered with their full sequences
    schema = schema_file.learn(
        (user_row(data, u, split.sequences.get(u, [])) for u in data.users), data.items.values()
    )
    item_ids = sorted(data.items)
    row_of = {i: j for j, i in enumerate(item_ids)}
    item_arrays = TowerEncoder(schema, "item").encode([data.items[i] for i in item_ids])
    rows: list[dict[str, Any]] = []
    target: list[int] = []
    example_user: list[int] = []
    L = history_len(schema)
    train_users = list(split.train)
    for k, (u, seq) in enumerate(split.train.items()):
        for j, item in enumerate(seq):
            # the history a training example sees is strictly before its item, as at serving time
            rows.append(user_row(data, u, seq[max(0, j - L) : j]))
            target.append(row_of[item])
            example_user.append(k)
    if not rows:
        raise DataError("no training interactions after the temporal split")
    encoder = TowerEncoder(schema, "user")
    user_arrays = encoder.encode(rows)
    user_last = encoder.encode([user_row(data, u, seq[-L:] if L else []) for u, seq in split.train.items()])
    counts = np.bincount(np.asarray(target), minlength=len(item_ids)).astype(np.float64)
    prob = counts / counts.sum()
    eval_inputs = {}
    for stage in ("valid", "test"):
        es = eval_set(split, stage)
        hist = [h[-L:] if L else [] for h in es.history]
        eval_inputs[stage] = to_tensors(
            encoder.encode([user_row(data, u, h) for u, h in zip(es.users, hist, strict=True)])
        )
    return Prepared(
        data=data,
        split=split,
        schema=schema,
        item_ids=item_ids,
        item_arrays=item_arrays,
        user_arrays=user_arrays,
        target=np.asarray(target, dtype=np.int64),
        item_prob=prob,
        example_user=np.asarray(example_user, dtype=np.int64),
        train_users=train_users,
        user_last=user_last,
        user_items=[np.unique([row_of[i] for i in seq]) for seq in split.train.values()],
        item_tensors=to_tensors(item_arrays),
        user_tensors=to_tensors(user_arrays),
        eval_inputs=eval_inputs,
    )


def take(arrays: Mapping[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in arrays.items():
        part = v.index_select(0, idx)
        if part.ndim == 2 and part.dtype == torch.int64 and part.shape[1] > 1:
            # drop all-padding columns (lists are right-padded) so short-history batches cost less
            used = (part != 0).any(dim=0).nonzero()
            part = part[:, : int(used.max()) + 1 if len(used) else 1]
        out[k] = part
    return out


def encode_items(model: TwoTower, prep: Prepared) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        vecs: np.ndarray = model.item(**prep.item_tensors).numpy()
        return vecs


def encode_users(model: TwoTower, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        vecs: np.ndarray = model.user(**inputs).numpy()
        return vecs
