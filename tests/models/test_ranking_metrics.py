from __future__ import annotations

import math

import pytest
from recstream.models.ranking_metrics import coverage, hit_rate_at_k, intra_list_diversity, ndcg_at_k, novelty

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


@pytest.mark.parametrize(
    ("ranked", "relevant", "k", "says"),
    [
        ([["a"]], ["a", "b"], 1, "1 ranked lists for 2 relevant"),
        ([], [], 1, "no events"),
        ([["a"]], ["a"], 0, "k must"),
    ],
)
def test_invalid_input_is_rejected(ranked, relevant, k, says):
    with pytest.raises(ValueError, match=says):
        hit_rate_at_k(ranked, relevant, k)


def test_novelty_is_the_mean_self_information_of_smoothed_popularity_shares():
    counts = {"a": 7, "b": 3}  # with add-one smoothing over a catalogue of 3: p = 8/13, 4/13, 1/13
    info = {item: -math.log2(p) for item, p in {"a": 8 / 13, "b": 4 / 13, "c": 1 / 13}.items()}
    assert novelty([["a", "b"], ["c"], []], counts, catalogue_size=3) == pytest.approx(
        ((info["a"] + info["b"]) / 2 + info["c"]) / 2
    )
    assert novelty([["c"]], counts, 3) > novelty([["b"]], counts, 3) > novelty([["a"]], counts, 3), (
        "rarer items are more novel, an item nobody rated the most"
    )


def test_intra_list_diversity_averages_pairwise_genre_jaccard_distances():
    genres = {"a": {"drama"}, "b": {"drama", "romance"}, "c": {"comedy"}, "d": set()}
    assert intra_list_diversity([["a", "b"]], genres) == pytest.approx(0.5)
    assert intra_list_diversity([["a", "c"], ["a", "a"], ["b"]], genres) == pytest.approx(0.5), "singletons skipped"
    assert intra_list_diversity([["d", "x"]], genres) == 0.0, "no known genres on either side: identical"
    assert intra_list_diversity([["a", "d"]], genres) == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: novelty([[]], {"a": 1}, catalogue_size=1),
        lambda: novelty([["a"]], {"a": 1}, catalogue_size=0),
        lambda: intra_list_diversity([["a"], []], {"a": {"x"}}),
    ],
)
def test_beyond_accuracy_metrics_reject_input_they_cannot_score(call):
    with pytest.raises(ValueError):
        call()
