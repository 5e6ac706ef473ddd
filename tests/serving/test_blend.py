"""Blending rules without Redis: slot counts, interleaving by position, dedupe, filtering before filling."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import example, given
from hypothesis import strategies as st
from recstream.serving.blend import OVERFLOW, SOURCES, Candidate, interleave, personal_first, slot_counts
from recstream.serving.popularity import by_score, orders

SHARES = {"personal": 0.6, "popular": 0.2, "fresh": 0.1, "explore": 0.1}


def ranked(prefix: str, n: int) -> list[Candidate]:
    return [Candidate(f"{prefix}{k}", prefix) for k in range(n)]


def full_lists(n: int = 50) -> dict:
    return {s: ranked(s[:2], n) for s in SOURCES}


def test_slot_counts_follow_the_shares_and_sum_to_the_page():
    assert slot_counts(SHARES, 20, explore_cap=0.25) == {"personal": 12, "popular": 4, "fresh": 2, "explore": 2}
    assert slot_counts(SHARES, 10, explore_cap=0.25) == {"personal": 6, "popular": 2, "fresh": 1, "explore": 1}
    for n in range(1, 101):
        assert sum(slot_counts(SHARES, n, explore_cap=0.25).values()) == n


@given(
    shares=st.fixed_dictionaries({s: st.floats(0, 1) for s in SOURCES}),
    n=st.integers(1, 100),
    cap=st.floats(0, 1),
)
@example(shares=dict.fromkeys(SOURCES, 0.0) | {"explore": 1.0}, n=1, cap=0.9999999999999999)
def test_the_explore_cap_holds_whatever_the_shares(shares, n, cap):
    """The cap holds to 9 decimals, as slot_counts reads every share (serving/blend._exact): a cap that is 1 but for
    its last bit allows a 1-item page its one explore slot, as a cap of 1 does."""
    counts = slot_counts(shares, n, explore_cap=cap)
    assert sum(counts.values()) == n and min(counts.values()) >= 0
    assert counts["explore"] <= math.floor(round(n * cap, 9))


def test_interleaving_spreads_each_source_by_position_and_is_deterministic():
    letter = {"personal": "P", "popular": "O", "fresh": "F", "explore": "E"}
    order = "".join(letter[s.source] for s in interleave(full_lists(), slot_counts(SHARES, 20, explore_cap=0.25)))
    # position p goes to the source furthest behind quota·p/n: each source spread over the whole page
    assert order == "POPPFPEPOPPOPPFPEPOP"


def test_an_item_in_several_sources_is_served_once_by_the_first_to_reach_it():
    lists = {"personal": ranked("x", 5), "popular": ranked("x", 5)}
    page = interleave(lists, {"personal": 2, "popular": 2})
    assert [s.item for s in page] == ["x0", "x1", "x2", "x3"]
    assert [s.source for s in page] == ["personal", "popular", "personal", "popular"]


def test_filtering_happens_before_slots_are_filled_so_a_page_is_never_short():
    lists = full_lists(30)
    excluded = {c.item for c in lists["personal"][:20]} | {c.item for c in lists["popular"][::2]}
    page = interleave(lists, slot_counts(SHARES, 20, 0.25), excluded)
    assert len(page) == 20 and not {s.item for s in page} & excluded
    assert next(s.item for s in page if s.source == "personal") == "pe20"


def test_a_dry_source_hands_its_slots_to_overflow_but_explore_never_gets_more_than_its_share():
    counts = slot_counts(SHARES, 20, 0.25)
    no_personal = interleave({**full_lists(), "personal": []}, counts)
    assert len(no_personal) == 20 and sum(s.source == "explore" for s in no_personal) == 2
    assert sum(s.source == "popular" for s in no_personal) == 16
    dry_midway = interleave({**full_lists(), "personal": ranked("pe", 1)}, counts)  # runs dry after one slot
    assert Counter(s.source for s in dry_midway) == {
        "personal": 1,
        "popular": counts["popular"] + counts["personal"] - 1,
        "fresh": 2,
        "explore": 2,
    }
    only_explore = interleave({"explore": ranked("ex", 50)}, counts)
    assert [s.source for s in only_explore] == ["explore", "explore"], "short rather than over the explore cap"
    no_fresh = interleave({**full_lists(), "fresh": []}, counts)
    assert sum(s.source == "personal" for s in no_fresh) == counts["personal"] + counts["fresh"], (
        "personal inherits first"
    )


@given(
    sizes=st.fixed_dictionaries({s: st.integers(0, 30) for s in SOURCES}),
    overlap=st.integers(0, 20),
    excluded=st.sets(st.integers(0, 40), max_size=15),
    n=st.integers(1, 60),
)
def test_pages_never_repeat_or_serve_excluded_items_and_are_full_when_overflow_can_fill_them(
    sizes, overlap, excluded, n
):
    lists = {
        s: [Candidate(f"i{(k + j * overlap) % 41}", s) for k in range(size)]
        for j, (s, size) in enumerate(sizes.items())
    }
    exclude = {f"i{k}" for k in excluded}
    counts = slot_counts(SHARES, n, 0.25)
    page = interleave(lists, counts, exclude)
    items = [s.item for s in page]
    assert len(items) == len(set(items)) and not set(items) & exclude
    fillable = {c.item for s in OVERFLOW for c in lists[s]} - exclude
    if len(fillable) >= n:
        assert len(page) == n


@given(
    popular=st.lists(st.integers(0, 60), unique=True, max_size=40),
    personal=st.lists(st.integers(0, 60), max_size=30),
    head=st.integers(0, 50),
)
def test_personal_first_only_reorders_the_popular_head_putting_the_users_own_candidates_first(popular, personal, head):
    pop = [Candidate(f"i{k}", "popular") for k in popular]
    out = [c.item for c in personal_first(pop, (f"i{k}" for k in personal), head)]
    assert sorted(out) == sorted(c.item for c in pop), "a permutation of the popular list: nothing added or lost"
    top = {c.item for c in pop[:head]}
    assert out[len(top) :] == [c.item for c in pop[len(top) :]], "past the head, popular order"
    in_both = [item for item in dict.fromkeys(f"i{k}" for k in personal) if item in top]
    assert out[: len(in_both)] == in_both, "head items the user's list holds come first, in its order"


def test_popular_slots_of_a_warm_user_take_popular_items_their_candidates_rank_next():
    personal = ranked("p", 10)
    popular = [Candidate(i, "popular") for i in ("q0", "q1", "p8", "q2", "p6", "p9")]
    counts = {"personal": 6, "popular": 2}
    by_ctr = interleave({"personal": personal, "popular": popular}, counts)
    blended = interleave(
        {"personal": personal, "popular": personal_first(popular, (c.item for c in personal), head=5)}, counts
    )
    assert [s.item for s in by_ctr if s.source == "popular"] == ["q0", "q1"]
    assert [s.item for s in blended if s.source == "popular"] == ["p6", "p8"], "p9 is past the head"
    assert [s.item for s in blended if s.source == "personal"] == [f"p{k}" for k in (0, 1, 2, 3, 4, 5)]


def test_warm_and_cold_orders_use_segment_scores_where_the_segment_has_them():
    segment, overall = {"a": 0.5, "b": 0.1}, {"a": 0.2, "b": 0.3, "c": 0.25}
    warm, cold, _ = orders(segment, overall, weight=0.7)
    assert warm == ("a", "c", "b")
    # cold: 0.7·seg + 0.3·global; an item unseen in the segment keeps its global score
    assert cold == ("a", "c", "b")
    assert orders(segment, overall, weight=0.0)[1] == ("b", "c", "a")


@given(st.dictionaries(st.text("abc", min_size=1, max_size=3), st.sampled_from([0.0, -0.0, 0.1, 0.25, 1.0])))
def test_popular_orders_are_by_score_then_id(scores):
    """by_score's two stable sorts give the one (−score, id) sort (ties by id) it replaced."""
    assert by_score(scores) == tuple(sorted(scores, key=lambda i: (-scores[i], i)))


SCORES = st.dictionaries(st.text("abcd", min_size=1, max_size=2), st.sampled_from([0.0, 0.1, 0.2, 0.25, 1 / 3, 1.0]))


@given(SCORES, SCORES, st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_the_loaders_orders_are_the_warm_and_cold_orders_of_their_formulas(segment, overall, weight):
    """orders() shares the merge and the id sort between both orders: the same tuples as each order computed
    alone from its formula (cold: λ·P(i|s) + (1−λ)·P(i|global), the segment score where the global one is missing)."""
    scores = {**overall, **segment}
    cold = {i: weight * s + (1.0 - weight) * overall.get(i, s) for i, s in scores.items()}
    expected = (
        tuple(sorted(scores, key=lambda i: (-scores[i], i))),
        tuple(sorted(cold, key=lambda i: (-cold[i], i))),
        scores,
    )
    assert orders(segment, overall, weight) == expected
