"""The maximum-inner-product (MIPS) transform: one extra coordinate that gives every indexed vector
the same norm, so an ANN index built for nearest neighbours searches by raw inner product.

Maximum inner product over vectors of different norms (a `dot` model) is not what IVF's k-means or
HNSW's graph are good at: measured on 20k clustered 32-d vectors with log-normal norms, HNSW32
stayed at recall@100 0.89 with efSearch 4096, and IVF needed nprobe 24 where unit vectors need 3.
The usual remedy appends one coordinate, sqrt(M^2 - |x|^2) (M the largest norm), and searches with
that coordinate 0 (Bachrach et al., 2014): every indexed vector has norm M and inner products are
unchanged. It is no cure-all: on the same vectors without clusters HNSW32 reached the floor at
efSearch 100 raw and not at all augmented, while with clusters it was the other way round (raw
failed, augmented 473-1458). So for vectors of different norms an ANN build (index_store.build)
makes both variants and keeps the cheaper one at the recall floor, measured against exact maximum
inner product; the exact kind needs no transform. Scores are the raw inner products either way.
"""

from __future__ import annotations

import numpy as np

_NORM_RTOL = 1e-4  # norms closer than this (relative) count as equal: no MIPS transform needed
_NORM_BLOCK = 1 << 14  # rows per block when norms are only reduced (16k x 64 floats: 4 MB)


def mips_max_norm(vectors: np.ndarray) -> float | None:
    """The largest norm when the norms differ (the MIPS transform is needed), else None."""
    if vectors.shape[0] == 0:
        return None
    # A block of rows at a time: each row's norm is the same computation (so the same float), and
    # no [N, dim] temporary is made. At 1M x 64 that temporary was 256 MB of fresh pages, ~0.5 s
    # of page faults in a build process (measured), for two numbers.
    top, low = -np.inf, np.inf
    for start in range(0, vectors.shape[0], _NORM_BLOCK):
        norms = np.linalg.norm(vectors[start : start + _NORM_BLOCK], axis=1)
        top, low = max(top, float(norms.max())), min(low, float(norms.min()))
    return top if top - low > _NORM_RTOL * max(top, 1e-12) else None


def mips_augment(vectors: np.ndarray, max_norm: float) -> np.ndarray:
    """[x, sqrt(M^2 - |x|^2)]: every row gets norm M, inner products with [q, 0] are unchanged."""
    sq = np.einsum("nd,nd->n", vectors, vectors, dtype=np.float64)
    extra = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def pad_queries(queries: np.ndarray, index_dim: int) -> np.ndarray:
    """Queries with zeros appended up to the index's dim (the MIPS coordinate), else unchanged."""
    extra = index_dim - queries.shape[1]
    if extra <= 0:
        return queries
    pad = np.zeros((queries.shape[0], extra), dtype=np.float32)
    return np.ascontiguousarray(np.hstack([queries, pad]), dtype=np.float32)
