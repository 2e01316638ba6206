"""An ALS baseline for the ablation: implicit-feedback matrix factorisation (Hu, Koren, Volinsky
2008) from the `implicit` package (a dev extra; a wheel on PyPI), fitted on the training split.

Evaluation users are folded in from the history the two-tower user tower sees for the same stage
(the closed-form ALS user step against the fitted item factors), so ALS and the towers rank with
the same information: at test time both know the validation item, neither was refitted on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.training.evaluate import EvalSet
from models.training.prepare import Prepared


@dataclass(frozen=True)
class AlsParams:
    # picked on validation Recall@50 (seed 1) from factors {32, 64, 128} x regularization
    # {0.1, 1, 10} x alpha {1, 10, 40}: 0.34-0.42, best 0.416 here (docs/MODEL.md, "Ablation")
    factors: int = 32
    regularization: float = 0.1
    alpha: float = 1.0
    iterations: int = 15

    @classmethod
    def tiny(cls) -> AlsParams:
        return cls(factors=8, iterations=3)

    def describe(self) -> str:
        return (
            f"implicit ALS, {self.factors} factors, reg {self.regularization}, alpha {self.alpha}, "
            f"{self.iterations} iterations"
        )


def fit_item_factors(prep: Prepared, params: AlsParams, seed: int) -> np.ndarray:
    from implicit.cpu.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    rows = np.concatenate([np.full(len(items), k) for k, items in enumerate(prep.user_items)])
    cols = np.concatenate(prep.user_items)
    matrix = csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (rows, cols)),
        shape=(len(prep.user_items), len(prep.item_ids)),
    )
    # implicit runs its own loop; a BLAS thread pool under it only contends (it warns otherwise)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=seed,
            num_threads=1,
        )
        model.fit(matrix, show_progress=False)
    return np.asarray(model.item_factors, dtype=np.float64)


def fold_in(items: np.ndarray, history: list[np.ndarray], params: AlsParams) -> np.ndarray:
    """Per user: x = (YᵀY + Yₕᵀ(Cₕ - I)Yₕ + λI)⁻¹ Yₕᵀ Cₕ 1, with confidence c = 1 + alpha."""
    k = items.shape[1]
    gram = items.T @ items + params.regularization * np.eye(k)
    out = np.zeros((len(history), k))
    for row, h in enumerate(history):
        if len(h) == 0:
            continue
        y = items[h]
        a = gram + params.alpha * (y.T @ y)
        out[row] = np.linalg.solve(a, (1.0 + params.alpha) * y.sum(axis=0))
    return out


def als_scores(prep: Prepared, es: EvalSet, params: AlsParams, seed: int) -> np.ndarray:
    items = fit_item_factors(prep, params, seed)
    row_of = {i: j for j, i in enumerate(prep.item_ids)}
    history = [np.unique([row_of[i] for i in h if i in row_of]).astype(np.int64) for h in es.history]
    users: np.ndarray = fold_in(items, history, params) @ items.T
    return users
