"""Training: in-batch sampled softmax with logQ correction, early stopping, and the options the
ablation (models/training/ablation.py, docs/MODEL.md "Ablation") measures: mixed negative sampling,
hard negatives mined by the previous epoch's model (EBR), Dual Augmented Two-Tower, attention pooling.

The inputs are prepared once (models/training/prepare.py); the losses and negatives are in
models/training/losses.py."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.data import load_dataset
from models.errors import VersionExists
from models.features import Side
from models.manifest import check_tag, new_version_tag
from models.schema import load_schema
from models.training.evaluate import EvalSet, evaluate
from models.training.export import export_version
from models.training.losses import (
    category_alignment,
    item_categories,
    mine_hard,
    softmax_logits,
    uniform_negatives,
)
from models.training.prepare import (
    Prepared,
    encode_items,
    encode_users,
    history_len,
    prepare,
    take,
    user_row,
)
from models.training.towers import TwoTower

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
    # mixed negative sampling (Yang et al., 2020): each step, `mns_uniform` catalogue items drawn
    # uniformly go through the item tower (with gradient: a cache of detached vectors collapsed
    # training, docs/MODEL.md "Why MNS collapsed") and join the in-batch negatives
    mns: bool = False
    mns_uniform: int = 1024
    # hard negatives (Huang et al., 2020, "Embedding-based Retrieval in Facebook Search"): for each
    # user, the items the previous epoch's model ranks in [hard_lo, hard_hi) among those the user did
    # not pick; one per example joins the softmax with its own logQ correction
    hard_negatives: bool = False
    hard_lo: int = 20
    hard_hi: int = 200
    # Dual Augmented Two-Tower (Yu et al., 2021): per-id augmented vectors with the mimic loss, and
    # the category alignment loss over `dat_category` (an item multi_hot or categorical field)
    dat: bool = False
    dat_mimic: float = 0.5
    dat_cal: float = 1.0
    dat_category: str | None = None  # default: the item tower's first multi_hot field
    # of sequence fields: "mean" or "attention" (the ablation's best, docs/MODEL.md "Ablation")
    pooling: str = "attention"
    patience: int = 3
    seed: int = 7
    threads: int = 1  # measured: 2 intra-op threads on 2 busy cores ran an epoch 11-14x slower (spin-waits)
    max_minutes: float = 9.0  # a hard stop so `twotower train` stays under 10 minutes on 2 cores

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_eval(model: TwoTower, prep: Prepared, stage: str, baseline: bool) -> dict[str, dict[str, float]]:
    items = encode_items(model, prep)
    users = encode_users(model, prep.eval_inputs[stage])

    def user_vectors(es: EvalSet) -> np.ndarray:
        return users

    return evaluate(prep.split, stage, prep.item_ids, items, user_vectors, baseline=baseline)


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
        pooling=config.pooling,
        augment=config.dat,
    )
    # fused: one kernel over all parameters instead of several small ops per tensor; the unfused
    # step was 17% of an epoch's CPU in the profiler (its gain is not measurable on the busy box)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    item_prob = torch.from_numpy(prep.item_prob).float()
    category = item_categories(prep, config.dat_category) if config.dat else None
    n_items = len(prep.item_ids)
    rng = np.random.default_rng(config.seed)
    n = len(prep.target)
    target = torch.from_numpy(prep.target)
    hard: np.ndarray | None = None
    log_q_hard = torch.zeros(n_items)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    stop_reason = "max_epochs"
    t_start = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        if config.hard_negatives and epoch > 1:
            # mined by the model as it stands after the previous epoch (EBR's "previous model")
            hard = mine_hard(model, prep, config.hard_lo, config.hard_hi)
            # a hard negative is drawn uniformly from its user's pool, so item i is drawn with
            # probability proportional to how many examples' pools hold it: that is its q
            per_user = np.bincount(prep.example_user, minlength=len(prep.train_users)).astype(np.float64)
            q = np.bincount(
                hard.ravel(), weights=np.repeat(per_user / hard.shape[1], hard.shape[1]), minlength=n_items
            )
            log_q_hard = torch.from_numpy(np.log(np.maximum(q / q.sum(), 1e-12))).float()
        model.train()
        order = torch.from_numpy(rng.permutation(n))
        total, steps = 0.0, 0
        for s in range(0, n, config.batch_size):
            idx = order[s : s + config.batch_size]
            if len(idx) < 2:
                continue
            tgt = target.index_select(0, idx)
            u, u_aug = model.user.encode(take(prep.user_tensors, idx))
            v, v_aug = model.item.encode(take(prep.item_tensors, tgt))
            neg_vec, neg_idx = (
                uniform_negatives(model, prep, config.mns_uniform, rng) if config.mns else (None, None)
            )
            prob = item_prob if config.logq else None
            parts = [softmax_logits(u, v, tgt, config.temperature, prob, neg_vec, neg_idx)]
            if hard is not None:
                users = prep.example_user[idx.numpy()]
                pick = torch.from_numpy(hard[users, rng.integers(0, hard.shape[1], size=len(users))])
                vh = model.item(**take(prep.item_tensors, pick))
                extra = u @ vh.T / config.temperature
                if config.logq:
                    extra = extra - (log_q_hard[pick] + math.log(len(idx)))[None, :]
                parts.append(extra.masked_fill(tgt[:, None] == pick[None, :], -1e9))
            logits = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            loss = F.cross_entropy(logits, torch.arange(len(idx)))
            if u_aug is not None and v_aug is not None:
                # mimic loss: each augmented vector learns the other tower's output for its positive
                mimic = ((u_aug - v.detach()) ** 2).sum(1).mean() + ((v_aug - u.detach()) ** 2).sum(1).mean()
                loss = loss + config.dat_mimic * mimic
            if category is not None:
                loss = loss + config.dat_cal * category_alignment(v, category[tgt])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach().item()
            steps += 1
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
