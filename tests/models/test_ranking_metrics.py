from __future__ import annotations

import math

import pytest

from models.ranking_metrics import coverage, hit_rate_at_k, ndcg_at_k

FEEDS = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"], ["a", "a", "j"]]
CLICKS = ["c", "d", "z", "a"]  # rank 3, rank 1, miss, rank 1 (first occurrence)


def test_hit_rate_counts_clicks_inside_the_cutoff():
    assert hit_rate_at_k(FEEDS, CLICKS, k=3) == 0.75
    assert hit_rate_at_k(FEEDS, CLICKS, k=2) == 0.5


def test_ndcg_discounts_by_rank():
    assert ndcg_at_k(FEEDS, CLICKS, k=3) == pytest.approx((1 / math.log2(4) + 1 + 0 + 1) / 4)
    assert ndcg_at_k(FEEDS, CLICKS, k=1) == pytest.approx(0.5)
    assert ndcg_at_k(FEEDS, CLICKS, k=3) <= hit_rate_at_k(FEEDS, CLICKS, k=3)


def test_short_lists_and_coverage():
    assert hit_rate_at_k([["a"]], ["a"], k=10) == 1.0
    assert coverage(FEEDS, catalogue_size=20) == 10 / 20


@pytest.mark.parametrize(("ranked", "relevant", "k"), [([["a"]], ["a", "b"], 1), ([], [], 1), ([["a"]], ["a"], 0)])
def test_invalid_input_is_rejected(ranked, relevant, k):
    with pytest.raises(ValueError):
        hit_rate_at_k(ranked, relevant, k)
