"""HNSW space for ALS factors: recall@10 against the exact dot-product top-10, and query time.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.ann_space

Data sets: item/user factors of iALS trained on MovieLens 100K (skipped when absent),
a synthetic ALS-like catalogue (clustered directions, log-normal norms as popularity
gives, queries from exact user steps), and 5,000 i.i.d. Gaussian 64-d items.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time

import numpy as np
from recstream.models.als import ALSConfig, interaction_matrix, train_als
from recstream.models.ann import ItemIndex
from recstream.models.user_step import ALSStep
from rich.table import Table

from bench.common import movielens_dir, show
from recstream.contracts.feedback import DEFAULT_FEEDBACK

K, TOP = 64, 10
M, EF_CONSTRUCTION, EFS = 16, 200, (50, 100, 200)
ML100K = movielens_dir() / "u.data"


def movielens() -> tuple[np.ndarray, np.ndarray] | None:
    if not ML100K.exists():
        return None
    users, items, ratings, _ = np.loadtxt(ML100K, dtype=np.int64, unpack=True)
    cfg = ALSConfig(factors=K)
    w = DEFAULT_FEEDBACK.signed_weight
    weights = w["view"] + w["click"] * (ratings >= 4)  # every rating a view, >= 4 also a click
    r = interaction_matrix(users - 1, items - 1, weights, users.max(), items.max())
    fit = train_als(r, cfg)
    return fit.item_factors, fit.user_factors


def synthetic_als(n_items: int = 20_000, n_queries: int = 1_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, K))
    directions = centers[rng.integers(0, 50, n_items)] + 0.7 * rng.standard_normal((n_items, K))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    items = (directions * rng.lognormal(-1.0, 0.6, (n_items, 1))).astype(np.float32)
    popularity = np.linalg.norm(items, axis=1) ** 2
    step = ALSStep(items, regularization=0.1)
    lengths = rng.integers(20, 51, n_queries)
    rows = np.concatenate([rng.choice(n_items, n, replace=False, p=popularity / popularity.sum()) for n in lengths])
    queries = step.solve_batch(np.r_[0, np.cumsum(lengths)], rows, 1.0 + 4.0 * rng.random(len(rows)))
    return items, queries


def gaussian(n_items: int = 5_000, n_queries: int = 1_000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_items, K)).astype(np.float32), rng.standard_normal((n_queries, K)).astype(np.float32)


def measure(items: np.ndarray, queries: np.ndarray, space: str, ef: int) -> tuple[float, float]:
    """(recall@10 vs exact dot top-10, mean µs per single-vector query)."""
    ids = [str(i) for i in range(len(items))]
    index = ItemIndex(items.shape[1], space=space, M=M, ef_construction=EF_CONSTRUCTION, ef=ef, capacity=len(items))
    index.add(ids, items)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :TOP]
    started = time.perf_counter()
    found = [index.query(q, TOP) for q in queries]
    micros = (time.perf_counter() - started) / len(queries) * 1e6
    hits = sum(len({int(i) for i, _ in f} & set(e.tolist())) for f, e in zip(found, exact, strict=True))
    return hits / (TOP * len(queries)), micros


def main() -> None:
    datasets = {"synthetic ALS-like 20k": synthetic_als(), "gaussian 5k": gaussian()}
    ml = movielens()
    if ml is not None:
        datasets = {"ML-100K iALS 1,682": ml, **datasets}
    table = Table(title=f"HNSW recall@{TOP} vs exact dot top-{TOP} (M={M}, ef_construction={EF_CONSTRUCTION})")
    for column in ("data", "ef", "space", f"recall@{TOP}", "µs/query"):
        table.add_column(column, justify="left" if column in ("data", "space") else "right")
    for name, (items, queries) in datasets.items():
        for ef in EFS:
            for space in ("ip", "cosine"):
                recall, micros = measure(items, queries, space, ef)
                table.add_row(name, str(ef), space, f"{recall:.4f}", f"{micros:.0f}")
    show(table)


if __name__ == "__main__":
    main()
