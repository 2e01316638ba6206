"""Training: in-batch sampled softmax with logQ correction, early stopping, and the options the
ablation (models/training/ablation.py, docs/MODEL.md "Ablation") measures: mixed negative sampling,
hard negatives mined by the previous epoch's model (EBR), Dual Augmented Two-Tower, attention pooling.

Speed: every input is encoded once (`prepare`) and kept as tensors; a batch is an `index_select`
plus trimming all-padding columns, so no Python feature encoding runs per batch or per epoch."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.data import Dataset, load_dataset
from models.errors import DataError, VersionExists
from models.features import FeatureSchema, Side
from models.manifest import check_tag, new_version_tag
from models.schema import SchemaFile, load_schema
from models.training.evaluate import EvalSet, Split, eval_set, evaluate, temporal_split
from models.training.export import export_version
from models.training.towers import TwoTower, to_tensors
from models.transform import TowerEncoder

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


def _take(arrays: Mapping[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
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


def run_eval(model: TwoTower, prep: Prepared, stage: str, baseline: bool) -> dict[str, dict[str, float]]:
    items = encode_items(model, prep)
    users = encode_users(model, prep.eval_inputs[stage])

    def user_vectors(es: EvalSet) -> np.ndarray:
        return users

    return evaluate(prep.split, stage, prep.item_ids, items, user_vectors, baseline=baseline)


def item_categories(prep: Prepared, name: str | None) -> torch.Tensor:
    """Each catalogue item's category for the DAT alignment loss: the first active column of a
    multi_hot field (in vocabulary order) or a categorical field's index."""
    fields = prep.schema.item.fields
    spec = next((f for f in fields if f.name == name), None) if name else None
    if spec is None:
        spec = next((f for f in fields if f.kind == "multi_hot"), None)
    if spec is None or spec.kind not in ("multi_hot", "categorical"):
        raise DataError(
            f"dat_category: {name or 'no multi_hot item field'}: needs an item multi_hot or categorical field"
        )
    arr = prep.item_arrays[spec.name]
    if spec.kind == "multi_hot":
        arr = np.where(arr.any(axis=1), arr.argmax(axis=1) + 1, 0)
    return torch.from_numpy(np.asarray(arr, dtype=np.int64))


def category_alignment(v: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
    """DAT's category alignment loss: the covariance of the batch's item vectors in each category is
    pulled towards the covariance of the largest category (Frobenius), so sparse categories are
    spread like the dense one."""
    cats, counts = torch.unique(cat, return_counts=True)
    keep = cats[counts >= 2]
    if len(keep) < 2:
        return v.new_zeros(())

    def cov(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=0)
        return x.T @ x / (len(x) - 1)

    major = cats[counts.argmax()]
    ref = cov(v[cat == major])
    terms = [((ref - cov(v[cat == c])) ** 2).sum() for c in keep if c != major]
    return torch.stack(terms).mean()


def uniform_negatives(
    model: TwoTower, prep: Prepared, k: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNS's uniform part: `k` catalogue rows drawn uniformly (with replacement) and their vectors,
    fresh from the item tower and with gradient. A cache of detached vectors (the first
    implementation) let only the user tower learn from them, and training collapsed."""
    idx = torch.from_numpy(rng.integers(0, len(prep.item_ids), size=k))
    return model.item(**_take(prep.item_tensors, idx)), idx


def softmax_logits(
    u: torch.Tensor,
    v: torch.Tensor,
    tgt: torch.Tensor,
    temperature: float,
    item_prob: torch.Tensor | None,
    neg_vec: torch.Tensor | None = None,
    neg_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, B + C] logits of the sampled softmax: the batch's positives (row r's positive in column
    r), then C uniformly sampled negatives (`neg_vec`, catalogue rows `neg_idx`), if any.

    With `item_prob` (the click frequency q the batch's positives are drawn by) every column gets
    the logQ correction (Yi et al., 2019: without it popular items are over-penalised): minus the
    log of the item's expected count among the candidates. In-batch
    items are drawn by q, B per batch; uniform negatives C out of N. Under MNS the candidate set
    is one sample from the mixture, so an item's expected count is B*q(i) + C/N wherever it sits
    (Yang et al., 2020: the correction uses the mixed distribution); the first implementation
    used B*q(i) for in-batch columns and C/N for uniform ones. An item equal to a row's positive is
    masked out of that row's negatives."""
    B = len(tgt)
    n_items = 0 if item_prob is None else len(item_prob)
    logits = u @ v.T / temperature
    dup = (tgt[:, None] == tgt[None, :]) & ~torch.eye(B, dtype=torch.bool)
    extra = None
    if neg_vec is not None and neg_idx is not None and len(neg_idx):
        extra = u @ neg_vec.T / temperature
    if item_prob is not None:
        uniform = len(neg_idx) / n_items if extra is not None and neg_idx is not None else 0.0
        in_batch = B * item_prob.clamp(min=1e-12)
        logits = logits - torch.log(in_batch[tgt] + uniform)[None, :]
        if extra is not None and neg_idx is not None:
            extra = extra - torch.log(in_batch[neg_idx] + uniform)[None, :]
    logits = logits.masked_fill(dup, -1e9)
    if extra is None or neg_idx is None:
        return logits
    return torch.cat([logits, extra.masked_fill(tgt[:, None] == neg_idx[None, :], -1e9)], dim=1)


def mine_hard(model: TwoTower, prep: Prepared, lo: int, hi: int) -> np.ndarray:
    """[train users, hi - lo]: the catalogue rows ranked lo..hi-1 for each user by the current
    model, among the items the user did not interact with in training."""
    items = encode_items(model, prep)
    users = encode_users(model, to_tensors(prep.user_last))
    scores = users @ items.T
    for k, seen in enumerate(prep.user_items):
        scores[k, seen] = -np.inf
    hi = min(hi, len(prep.item_ids) - max(len(s) for s in prep.user_items))
    lo = min(lo, max(0, hi - 1))
    top = np.argpartition(-scores, hi - 1, axis=1)[:, :hi]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)[:, lo:hi]


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
            u, u_aug = model.user.encode(_take(prep.user_tensors, idx))
            v, v_aug = model.item.encode(_take(prep.item_tensors, tgt))
            neg_vec, neg_idx = (
                uniform_negatives(model, prep, config.mns_uniform, rng) if config.mns else (None, None)
            )
            prob = item_prob if config.logq else None
            parts = [softmax_logits(u, v, tgt, config.temperature, prob, neg_vec, neg_idx)]
            if hard is not None:
                users = prep.example_user[idx.numpy()]
                pick = torch.from_numpy(hard[users, rng.integers(0, hard.shape[1], size=len(users))])
                vh = model.item(**_take(prep.item_tensors, pick))
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
