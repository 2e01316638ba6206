"""Mixed negative sampling: the logQ correction of every candidate is the log of its expected count
in the whole mixed candidate set (B*q(i) + C/N), whether it sits in the batch or among the uniform
negatives (Yang et al., 2020)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")

from models.data import load_dataset  # noqa: E402
from models.schema import load_schema  # noqa: E402
from models.training.losses import softmax_logits, uniform_negatives  # noqa: E402
from models.training.prepare import prepare, take  # noqa: E402
from models.training.towers import TwoTower  # noqa: E402
from tests.models.conftest import MOVIELENS  # noqa: E402

SCHEMA = load_schema(MOVIELENS)


def _case() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    n_items, dim = 10, 4
    prob = torch.tensor([0.40, 0.20, 0.10, 0.10, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01])
    u = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=1)
    items = torch.nn.functional.normalize(torch.randn(n_items, dim, generator=g), dim=1)
    tgt = torch.tensor([0, 2, 9])  # a popular, a middling and a rare positive
    neg_idx = torch.tensor([9, 5, 0, 7])  # uniform draws: the rare and the popular item again
    return u, items, prob, tgt, neg_idx


def test_every_column_is_corrected_by_its_expected_count_in_the_mixture() -> None:
    u, items, prob, tgt, neg_idx = _case()
    temp = 0.1
    logits = softmax_logits(u, items[tgt], tgt, temp, prob, items[neg_idx], neg_idx)
    B, C, N = len(tgt), len(neg_idx), len(prob)
    assert logits.shape == (B, B + C)
    cols = torch.cat([tgt, neg_idx])
    for r in range(B):
        for c, item in enumerate(cols.tolist()):
            if item == int(tgt[r]) and c != r:
                assert logits[r, c] < -1e8  # the row's positive is no negative of its own
                continue
            want = float(u[r] @ items[item]) / temp - math.log(B * float(prob[item]) + C / N)
            assert logits[r, c].item() == pytest.approx(want, abs=1e-4), (r, c, item)
    # the same item costs the same wherever it was sampled: item 0 is column 0 and cache column 2,
    # item 9 column 2 and cache column 0 (row 1 sees both as negatives)
    assert logits[1, 0].item() == pytest.approx(logits[1, B + 2].item(), abs=1e-5)
    assert logits[1, 2].item() == pytest.approx(logits[1, B + 0].item(), abs=1e-5)


def test_without_uniform_negatives_it_is_the_in_batch_logq_correction() -> None:
    u, items, prob, tgt, _ = _case()
    logits = softmax_logits(u, items[tgt], tgt, 0.07, prob)
    want = u @ items[tgt].T / 0.07 - torch.log(len(tgt) * prob[tgt])[None, :]
    assert torch.allclose(logits, want, atol=1e-4)
    plain = softmax_logits(u, items[tgt], tgt, 0.07, None, items[:2], torch.tensor([3, 4]))
    assert torch.allclose(plain[:, 3:], u @ items[:2].T / 0.07, atol=1e-5)  # logQ off: no correction


def test_uniform_negatives_train_the_item_tower(tiny_data: Path) -> None:
    """The uniform negatives push the item tower too: an item drawn only as a uniform negative gets
    a gradient on its id embedding. (The first implementation kept detached vectors in a cache, so
    only the user tower learned from them, and MNS collapsed: docs/MODEL.md.)"""
    prep = prepare(load_dataset(tiny_data, SCHEMA), SCHEMA)
    model = TwoTower(prep.schema, dim=8, field_dim=4, hidden=(8,))
    tgt = torch.from_numpy(prep.target[:16])
    u = model.user(**take(prep.user_tensors, torch.arange(16)))
    v = model.item(**take(prep.item_tensors, tgt))
    neg_vec, neg_idx = uniform_negatives(model, prep, 32, np.random.default_rng(0))
    prob = torch.from_numpy(prep.item_prob).float()
    logits = softmax_logits(u, v, tgt, 0.1, prob, neg_vec, neg_idx)
    torch.nn.functional.cross_entropy(logits, torch.arange(16)).backward()
    only_uniform = sorted(set(neg_idx.tolist()) - set(tgt.tolist()))
    assert only_uniform
    grad = model.item.embeddings["item_id"].proj.weight.grad
    assert grad is not None
    # catalogue row r is item id vocabulary index of prep.item_ids[r]: read it from the encoded input
    rows = prep.item_tensors["item_id"][torch.tensor(only_uniform)]
    assert (grad[rows].abs().sum(dim=1) > 0).all()
