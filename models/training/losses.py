"""What a training step adds up: the sampled softmax with the logQ correction, the negatives (mixed
negative sampling's uniform items, hard negatives mined by the current model) and Dual Augmented
Two-Tower's category alignment loss."""

from __future__ import annotations

import numpy as np
import torch

from models.errors import DataError
from models.training.prepare import Prepared, encode_items, encode_users, take
from models.training.towers import TwoTower, to_tensors


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
    return model.item(**take(prep.item_tensors, idx)), idx


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
