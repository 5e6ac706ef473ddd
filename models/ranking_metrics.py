"""Ranking metrics of the evaluation protocol: one relevant (clicked) item per event.

Each event n has a served list L_n and the item c_n the user then clicked. Accuracy (HR, nDCG)
says whether c_n was in L_n; coverage, novelty and intra-list diversity describe the lists
themselves, so a recommender that buys accuracy by serving the same blockbusters to everyone shows it.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence

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


def novelty(ranked: Iterable[Sequence[Hashable]], counts: Mapping[Hashable, float], catalogue_size: int) -> float:
    """Mean self-information of the recommended items: (1/N) Σ_n (1/|L_n|) Σ_{i∈L_n} −log2 p(i).

    p(i) = (n_i + 1) / (Σ_j n_j + |catalogue|), the item's share of the interactions ``counts``
    (e.g. ratings in the training history), add-one smoothed so an item nobody rated yet has a
    finite, maximal novelty. Higher means less popular items; empty lists are skipped. In the example
    the lists score −log2(6/8) = 0.415 and (0.415 + 2) / 2, so the mean is 0.8113.

    >>> round(novelty([["a"], ["a", "b"]], {"a": 5, "b": 1}, catalogue_size=2), 4)  # p(a) = 6/8, p(b) = 2/8
    0.8113
    """
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    total = float(sum(counts.values())) + catalogue_size
    per_list = [
        float(np.mean([-np.log2((counts.get(item, 0.0) + 1.0) / total) for item in items])) for items in ranked if items
    ]
    if not per_list:
        raise ValueError("no non-empty lists to score")
    return float(np.mean(per_list))


def intra_list_diversity(ranked: Iterable[Sequence[Hashable]], categories: Mapping[Hashable, Collection[str]]) -> float:
    """Mean pairwise category distance within a list, averaged over lists:
    ILD(L) = (2 / (|L|(|L|−1))) Σ_{i<j∈L} (1 − |G_i ∩ G_j| / |G_i ∪ G_j|), with G_i the item's categories
    (genres on MovieLens). 0 when every item shares the same genres, 1 when no two share any; two
    items without known categories count as identical (distance 0). Lists of fewer than two items are skipped.

    >>> intra_list_diversity([["a", "b", "c"]], {"a": {"x"}, "b": {"x", "y"}, "c": {"z"}})  # (1/2 + 1 + 1) / 3
    0.8333333333333334
    """
    per_list = [
        float(np.mean([_jaccard_distance(categories.get(i, ()), categories.get(j, ())) for i, j in pairs]))
        for items in ranked
        if (pairs := list(itertools.combinations(items, 2)))
    ]
    if not per_list:
        raise ValueError("no list of two or more items to score")
    return float(np.mean(per_list))


def _jaccard_distance(a: Collection[str], b: Collection[str]) -> float:
    union = len(set(a) | set(b))
    return 0.0 if union == 0 else 1.0 - len(set(a) & set(b)) / union


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
