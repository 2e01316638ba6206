"""Training: in-batch sampled softmax with logQ correction, optional mixed negatives, early stopping."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.data import Dataset, load_dataset
from models.errors import DataError, VersionExists
from models.features import FeatureSchema, Side, TowerEncoder
from models.manifest import check_tag, new_version_tag
from models.schema import SchemaFile, load_schema
from models.training.evaluate import EvalSet, Split, evaluate, temporal_split
from models.training.export import export_version
from models.training.towers import TwoTower, to_tensors

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 0.07
    dim: int = 64
    field_dim: int = 32
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    senet: bool = True
    logq: bool = True
    mns: bool = False  # mixed negative sampling from a cache of uniformly sampled item vectors
    mns_cache: int = 1024
    mns_refresh: int = 256
    patience: int = 3
    seed: int = 7
    threads: int = 2
    max_minutes: float = 9.0  # a hard stop so `twotower train` stays under 10 minutes on 2 cores

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def user_row(data: Dataset, user_id: str, history: list[str]) -> dict[str, Any]:
    """A user's features with every `from_interactions` key holding `history` (oldest first)."""
    row = dict(data.users.get(user_id, {data.layout.user_id: user_id}))
    for key in data.layout.history:
        row[key] = history
    return row


def history_len(schema: FeatureSchema) -> int:
    """How much of a user's past the `from_interactions` fields can use (0: none of them)."""
    return max((f.max_len for f in schema.user.fields if f.from_interactions), default=0)


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
    L = history_len(schema)
    for u, seq in split.train.items():
        for j, item in enumerate(seq):
            # the history a training example sees is strictly before its item, as at serving time
            rows.append(user_row(data, u, seq[max(0, j - L) : j]))
            target.append(row_of[item])
    if not rows:
        raise DataError("no training interactions after the temporal split")
    user_arrays = TowerEncoder(schema, "user").encode(rows)
    counts = np.bincount(np.asarray(target), minlength=len(item_ids)).astype(np.float64)
    prob = counts / counts.sum()
    return Prepared(
        data=data,
        split=split,
        schema=schema,
        item_ids=item_ids,
        item_arrays=item_arrays,
        user_arrays=user_arrays,
        target=np.asarray(target, dtype=np.int64),
        item_prob=prob,
    )


def _take(arrays: Mapping[str, np.ndarray], idx: np.ndarray, trim: bool = True) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in arrays.items():
        part = v[idx]
        if trim and part.ndim == 2 and part.dtype == np.int64:
            # drop all-padding columns so short-history batches cost less
            width = max(1, int((part != 0).any(axis=0).nonzero()[0].max(initial=0)) + 1)
            part = part[:, :width]
        out[k] = torch.from_numpy(np.ascontiguousarray(part))
    return out


def encode_items(model: TwoTower, prep: Prepared, batch: int = 4096) -> np.ndarray:
    model.eval()
    vecs = []
    with torch.no_grad():
        for s in range(0, len(prep.item_ids), batch):
            idx = np.arange(s, min(s + batch, len(prep.item_ids)))
            vecs.append(model.item(**_take(prep.item_arrays, idx)).numpy())
    return np.concatenate(vecs)


def encode_users(model: TwoTower, prep: Prepared, es: EvalSet) -> np.ndarray:
    model.eval()
    enc = TowerEncoder(prep.schema, "user")
    rows = [user_row(prep.data, u, h) for u, h in zip(es.users, es.history, strict=True)]
    with torch.no_grad():
        vecs: np.ndarray = model.user(**to_tensors(enc.encode(rows))).numpy()
        return vecs


def run_eval(model: TwoTower, prep: Prepared, stage: str, baseline: bool) -> dict[str, dict[str, float]]:
    items = encode_items(model, prep)
    return evaluate(
        prep.split, stage, prep.item_ids, items, lambda es: encode_users(model, prep, es), baseline=baseline
    )


def train_model(prep: Prepared, config: TrainConfig) -> tuple[TwoTower, dict[str, Any]]:
    """Train both towers; returns the best model on validation Recall@50 and a training log."""
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    model = TwoTower(
        prep.schema,
        dim=config.dim,
        field_dim=config.field_dim,
        hidden=config.hidden,
        senet=config.senet,
        dropout=config.dropout,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log_q = torch.from_numpy(np.log(np.maximum(prep.item_prob, 1e-12))).float()
    n_items = len(prep.item_ids)
    rng = np.random.default_rng(config.seed)
    n = len(prep.target)
    cache_vec = torch.empty(0, config.dim)
    cache_idx = torch.empty(0, dtype=torch.long)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    stop_reason = "max_epochs"
    t_start = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(n)
        total, steps = 0.0, 0
        for s in range(0, n, config.batch_size):
            idx = order[s : s + config.batch_size]
            if len(idx) < 2:
                continue
            tgt = torch.from_numpy(prep.target[idx])
            u = model.user(**_take(prep.user_arrays, idx))
            v = model.item(**_take(prep.item_arrays, prep.target[idx]))
            logits = u @ v.T / config.temperature
            if config.logq:
                # in-batch negatives are drawn by click frequency: subtract the log of each item's
                # expected count in the batch, B*q(i), so popular items are not over-penalised
                # (Yi et al., 2019); log B is a constant here but keeps units equal to the MNS part
                logits = logits - (log_q[tgt] + math.log(len(idx)))[None, :]
            # the same item twice in a batch is not a negative for itself
            dup = (tgt[:, None] == tgt[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
            logits = logits.masked_fill(dup, -1e9)
            if config.mns and len(cache_idx):
                # cached vectors were sampled uniformly from the catalogue: their correction is
                # the expected count C/N, the same for every item, unlike the in-batch B*q(i)
                extra = u @ cache_vec.T / config.temperature
                if config.logq:
                    extra = extra - math.log(len(cache_idx) / n_items)
                extra = extra.masked_fill(tgt[:, None] == cache_idx[None, :], -1e9)
                logits = torch.cat([logits, extra], dim=1)
            loss = F.cross_entropy(logits, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach().item()
            steps += 1
            if config.mns:
                # refresh a slice of the cache with fresh vectors of uniformly sampled items
                with torch.no_grad():
                    pick = rng.integers(0, n_items, size=config.mns_refresh)
                    model.item.eval()
                    fresh = model.item(**_take(prep.item_arrays, pick))
                    model.item.train()
                cache_vec = torch.cat([fresh, cache_vec])[: config.mns_cache]
                cache_idx = torch.cat([torch.from_numpy(pick), cache_idx])[: config.mns_cache]
        val = run_eval(model, prep, "valid", baseline=False)["two_tower"]
        r50 = val["recall@50"]
        elapsed = time.monotonic() - t_start
        history.append(
            {"epoch": epoch, "loss": total / max(1, steps), "val_recall@50": r50, "seconds": elapsed}
        )
        log.info("epoch %d loss %.4f val recall@50 %.4f (%.0fs)", epoch, total / max(1, steps), r50, elapsed)
        if r50 > best:
            best, best_epoch, bad = r50, epoch, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
            if bad >= config.patience:
                stop_reason = "early_stopping"
                break
        if elapsed > config.max_minutes * 60 * 0.8:
            log.warning("stopping early: time budget of %.1f min nearly spent", config.max_minutes)
            stop_reason = "time_budget"
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "best_epoch": best_epoch,
        "best_val_recall@50": best,
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "seconds": round(time.monotonic() - t_start, 1),
        "history": history,
    }
    return model, info


def real_rows(prep: Prepared, n: int = 64) -> dict[Side, list[dict[str, Any]]]:
    """A parity batch from the data, with cold users and unknown items mixed in: a real row under
    an unknown id (with an unknown history item), and a row with nothing but an id."""
    layout = prep.data.layout
    keep = history_len(prep.schema)
    users = sorted(prep.split.train)[:n]
    urows = [user_row(prep.data, u, prep.split.sequences[u][-keep:] if keep else []) for u in users]
    cold = user_row(prep.data, users[0], ["never-seen-item"]) if users else {}
    urows.append({**cold, layout.user_id: "cold-user"})
    urows.append({layout.user_id: "cold-user-2"})
    irows = [prep.data.items[i] for i in prep.item_ids[:n]]
    irows.append({**prep.data.items[prep.item_ids[-1]], layout.item_id: "new-item"})
    irows.append({layout.item_id: "new-item-2"})
    return {"user": urows, "item": irows}


def train_and_export(
    schema_path: Path,
    data_dir: Path,
    model_store: Path,
    version: str | None = None,
    config: TrainConfig | None = None,
) -> Path:
    """Load, train, evaluate on the test split (two-tower and most-popular), export a new version."""
    config = config or TrainConfig()
    version = check_tag(version) if version else new_version_tag()
    if (Path(model_store) / version).exists():
        raise VersionExists(
            f"model version {version!r} already exists in {model_store}; versions are immutable"
        )
    schema_file = load_schema(schema_path)
    data = load_dataset(data_dir, schema_file)
    prep = prepare(data, schema_file)
    model, info = train_model(prep, config)
    test = run_eval(model, prep, "test", baseline=True)
    log.info("test: %s", test)
    order = "timestamp" if data.layout.timestamp else "file order"
    metrics: dict[str, Any] = {
        **test,
        "split": f"temporal leave-last-out ({order}), test",
        "catalog_items": len(prep.item_ids),
    }
    training = {
        "config": config.to_dict(),
        "schema_file": str(schema_path),
        **info,
        "dataset": {
            "users": len(data.users),
            "items": len(data.items),
            "interactions": len(data.interactions),
            "train_examples": len(prep.target),
        },
    }
    return export_version(model, prep.schema, model_store, version, real_rows(prep), metrics, training)
