"""Ranking metrics of the evaluation protocol: one relevant (clicked) item per event.

Each event n has a served list L_n and the item c_n the user then clicked.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def hit_rate_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Hashable], k: int) -> float:
    """HR@k = (1/N) Σ_n 1[c_n ∈ L_n[:k]].

    >>> hit_rate_at_k([["a", "b"], ["c", "d"]], ["b", "x"], k=2)
    0.5
    >>> hit_rate_at_k([["a", "b"]], ["b"], k=1)
    0.0
    """
    return float(np.mean([rank is not None for rank in _ranks(ranked, relevant, k)]))


def ndcg_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Hashable], k: int) -> float:
    """nDCG@k with one relevant item: the ideal DCG is 1, so each event scores 1/log2(1 + rank)
    for its 1-based rank within the top k, and 0 outside it; the mean over events.

    >>> round(ndcg_at_k([["a", "b"], ["c", "d"]], ["b", "c"], k=2), 4)  # (1/log2(3) + 1) / 2
    0.8155
    >>> ndcg_at_k([["a", "b", "c"]], ["c"], k=2)
    0.0
    """
    gains = [0.0 if rank is None else 1.0 / np.log2(1.0 + rank) for rank in _ranks(ranked, relevant, k)]
    return float(np.mean(gains))


def coverage(ranked: Iterable[Iterable[Hashable]], catalogue_size: int) -> float:
    """Catalogue coverage: distinct items ever recommended / catalogue size.

    >>> coverage([["a", "b"], ["b", "c"]], catalogue_size=6)
    0.5
    """
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    return len({item for items in ranked for item in items}) / catalogue_size


def _ranks(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[Hashable], k: int) -> list[int | None]:
    """1-based rank of each event's relevant item within its top k, None when absent."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists for {len(relevant)} relevant items")
    if not ranked:
        raise ValueError("no events to score")
    return [
        next((r for r, item in enumerate(items[:k], 1) if item == target), None)
        for items, target in zip(ranked, relevant, strict=True)
    ]
