"""bench/validate.py chooses the project's defaults: its splits must never leak, its lists must be the worker's,
and its choice must be the max-min row."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from recstream.models.als import ALSConfig, confidence
from recstream.models.user_step import ALSStep

from bench import validate
from bench.prequential_protocol import Rating
from bench.validate import (
    MIN_HITS,
    TIE,
    Candidate,
    Fetches,
    Model,
    Queries,
    Score,
    Split,
    choose,
    deciding,
    evaluate,
    fetches,
    item_rows,
    queries,
    read,
    time_split,
    unordered,
    user_split,
    without_tail,
    worst_case,
)
from recstream.contracts.events import Event, ItemEvent
from recstream.sim.world import WorldConfig, synthetic

T0 = 10**12
CFG = ALSConfig()


@pytest.fixture(scope="module")
def stream():
    """A small world's stream: re-views, clicks, items announced before their first use."""
    return read(synthetic(6_000, seed=2, config=WorldConfig(n_users=40, n_items=60, new_items_per_hour=3_600)))


def rating(position: int, user: str, item: str, click: bool) -> Rating:
    view = Event(type="view", user_id=user, item_id=item, ts=T0 + position)
    return Rating(position, (view, view.model_copy(update={"type": "click"})) if click else (view,))


def test_without_tail_keeps_the_first_80_percent_and_no_item_announced_in_the_tail(stream):
    ratings, items, announced = stream
    events = sum(len(r.events) for r in ratings)
    history, kept, kept_announced = without_tail(ratings, items, announced)
    end = history[-1].position + len(history[-1].events)
    assert end <= int(0.8 * events) + 1  # a rating cut by the boundary stays whole: one event past it at most
    assert ratings[len(history)].position >= int(0.8 * events)
    assert all(announced[i] < end for i in kept) and len(kept) < len(items)
    assert kept_announced == {i: announced[i] for i in kept}


def test_a_time_split_trains_only_on_events_before_every_validation_event(stream):
    s = time_split(*without_tail(*stream))
    events = sum(len(r.events) for r in stream[0])
    assert max(r.position for r in s.train) < min(r.position for r in s.validation)
    assert s.train[-1].position + len(s.train[-1].events) <= int(0.6 * events) + 1
    assert s.validation[-1].position < int(0.8 * events)
    assert {r.position for r in s.train}.isdisjoint(r.position for r in s.validation)


def test_a_user_split_holds_out_every_rating_of_a_held_out_pair(stream):
    ratings, items, announced = without_tail(*stream)
    s = user_split(ratings, items, announced, share=0.25, seed=3)
    held = {(r.user_id, r.item_id) for r in s.validation}
    assert all(r.click for r in s.validation) and len(held) == len(s.validation), "one click per held-out pair"
    assert not any((r.user_id, r.item_id) in held for r in s.train), "a held-out pair leaked into training"
    assert len(s.train) + sum((r.user_id, r.item_id) in held for r in ratings) == len(ratings)
    clicked = {(r.user_id, r.item_id) for r in ratings if r.click}
    assert 0.15 < len(held) / len(clicked) < 0.35


def test_unordered_keeps_every_rating_and_renumbers_positions(stream):
    ratings = stream[0][:500]
    shuffled = unordered(ratings, seed=4)
    ids = [[e.event_id for e in r.events] for r in ratings]
    assert sorted([e.event_id for e in r.events] for r in shuffled) == sorted(ids)
    assert [r.position for r in shuffled[:3]] == [
        0,
        len(shuffled[0].events),
        len(shuffled[0].events) + len(shuffled[1].events),
    ]
    assert [r.events for r in shuffled] != [r.events for r in ratings]


def hand_split(mode: str) -> Split:
    """u: views a, clicks b (training); then views c, clicks d, clicks a (seen), and v's first click."""
    train = [rating(0, "u", "a", False), rating(1, "u", "b", True)]
    validation = [rating(3, "u", "c", False), rating(4, "u", "d", True), rating(6, "u", "a", True),
                  rating(8, "v", "e", True)]  # fmt: skip
    items = {i: ItemEvent(op="new", item_id=i, ts=T0, created_ts=T0, categories=["x"]) for i in "abcde"}
    return Split(mode, train, validation, items, {"a": 0, "b": 1, "c": 3, "d": 4, "e": 8})  # type: ignore[arg-type]


def test_a_time_split_scores_each_click_on_the_list_of_the_last_refresh_point_minus_what_was_seen():
    s = hand_split("time")
    rows = {item: row for row, item in enumerate(item_rows(s))}
    q = queries(fetches(s, rows, seen_cap=500), rows, cap=10)
    # d: the list made at u's click on b (position 1) from [b (view + click), a], before c was viewed;
    # a: already seen, and v has no list before its first event: neither is scored
    assert q.fetches.relevant.tolist() == [rows["d"]]
    assert q.rows.tolist() == [rows["b"], rows["a"]] and q.weights.tolist() == [5.0, 1.0]
    assert q.fetches.made_at.tolist() == [1]
    assert q.fetches.seen[0] == {rows["a"], rows["b"], rows["c"]}


def test_a_history_cap_keeps_the_most_recent_items_of_the_list():
    s = hand_split("time")
    rows = {item: row for row, item in enumerate(item_rows(s))}
    assert queries(fetches(s, rows, seen_cap=500), rows, cap=1).rows.tolist() == [rows["b"]]


def test_a_user_split_scores_every_held_out_click_on_the_training_history_alone():
    s = hand_split("user")
    rows = {item: row for row, item in enumerate(item_rows(s))}
    f = fetches(s, rows, seen_cap=500)
    assert f.relevant.tolist() == [rows["d"]]
    assert f.seen[0] == {rows["a"], rows["b"]}, "validation events are not folded in a per-user holdout"


def test_evaluate_ranks_by_the_user_step_and_drops_history_seen_and_unindexed_items():
    """Six items in 2-D, one history [item 0] and seen set {0, 3}, fetched twice: once from a list made before
    item 5 was indexed (at 7), clicking item 5; once from a list made after, clicking item 1. Expected lists:
    the items by x·y, x the exact user step computed here with ALSStep.solve, minus the exclusions."""
    factors = np.array([[1.0, 0.1], [0.9, 0.2], [0.2, 0.9], [0.95, 0.1], [0.6, 0.5], [1.0, 0.0]], np.float32)
    model = Model(ALSStep(factors, CFG.regularization), np.array([-1, -1, -1, -1, -1, 7]), CFG, {}.get)
    fetched = Fetches({}, ["u", "u"], [1, 1], np.array([6, 8]), [frozenset({0, 3})] * 2, np.array([5, 1]))
    q = Queries(fetched, np.array([0, 1, 2]), np.array([0, 0]), np.array([5.0, 5.0]))
    x = ALSStep(factors, CFG.regularization).solve(np.array([0]), confidence(np.array([5.0]), CFG))
    order = np.argsort(-(factors @ x), kind="stable").tolist()
    before, after = ([i for i in order if i not in excluded] for excluded in ({0, 3, 5}, {0, 3}))
    assert order[:3] == [0, 5, 3], "the excluded items are the best ones: the exclusions decide the lists"
    score = evaluate(model, q, None, m=50)
    assert score.hr == 0.5, "item 5 was not in the index when the first list was made"
    assert score.ndcg == pytest.approx(0.5 / np.log2(1 + after.index(1) + 1))
    assert score.coverage == pytest.approx(len(set(before) | set(after)) / 6)


def test_evaluate_anchors_the_step_of_a_user_the_batch_knew_to_its_batch_vector():
    """The same history [item 0], clicking item 2 (at the bottom of the plain step's order): a batch vector along
    item 2 lifts it to the top of an anchored list; a user the batch did not know keeps the plain list."""
    factors = np.array([[1.0, 0.1], [0.9, 0.2], [0.2, 0.9], [0.95, 0.1], [0.6, 0.5], [1.0, 0.0]], np.float32)
    prior = np.array([0.0, 3.0])
    step = ALSStep(factors, CFG.regularization)
    fetched = Fetches({}, ["known", "stranger"], [1, 1], np.array([0, 0]), [frozenset({0})] * 2, np.array([2, 2]))
    q = Queries(fetched, np.array([0, 1, 2]), np.array([0, 0]), np.array([5.0, 5.0]))
    model = Model(step, np.full(6, -1), CFG, {"known": prior}.get)
    x = step.solve(np.array([0]), confidence(np.array([5.0]), CFG))
    plain_rank = [i for i in np.argsort(-(factors @ x), kind="stable").tolist() if i != 0].index(2)
    assert plain_rank == 4, "item 2 is last of the plain list"
    plain = evaluate(model, q, None, m=50)
    anchored = evaluate(model, q, None, m=50, anchor=1_000.0)
    assert plain.ndcg == pytest.approx(1 / np.log2(2 + plain_rank))
    assert anchored.ndcg == pytest.approx((1 + 1 / np.log2(2 + plain_rank)) / 2), "known: first; stranger: as plain"


def test_the_choice_is_the_row_with_the_best_worst_case_not_any_sources_best():
    a, b, c = Candidate(10.0, 2.0, 10), Candidate(40.0, 2.0, 100), Candidate(160.0, 8.0, 300)
    table = {
        a: {"movielens": 0.20, "dense": 0.05},  # best on movielens, 0.5 of the best on dense
        b: {"movielens": 0.18, "dense": 0.09},  # 0.9 and 0.9
        c: {"movielens": 0.16, "dense": 0.10},  # 0.8 and best on dense
    }
    worst = worst_case(table)
    assert [round(worst[row][0], 9) for row in (a, b, c)] == [0.5, 0.9, 0.8]
    assert worst[a][1] == "dense" and worst[c][1] == "movielens"
    assert choose(table) == b
    same_cap = Candidate(20.0, 2.0, 100)
    tied = {b: {"s": 0.9, "t": 1.0}, same_cap: {"s": 1.0, "t": 0.9}, c: {"s": 0.9, "t": 0.9}}
    assert choose(tied) == same_cap, "equal worst cases, equal caps: the higher mean ratio, then the grid order"
    faded = Candidate(40.0, 2.0, 100, recency=0.97)  # the hard cap and recency weighting side by side
    assert choose({**table, faded: {"movielens": 0.19, "dense": 0.095}}) == faded
    assert choose(table, sources=["movielens"]) == a, "only the sources named decide"


@pytest.mark.parametrize("hits", [MIN_HITS - 1, MIN_HITS, MIN_HITS + 1])
def test_a_source_ranks_defaults_only_when_its_best_row_has_enough_hits(hits: int):
    a, b = Candidate(10.0, 2.0, 10), Candidate(40.0, 2.0, 10)
    scores = {
        a: {"big": Score(0.3, 0.1, 0.5, 1_000), "edge": Score(hits / 1_000, 0.1, 0.5, 1_000)},
        b: {"big": Score(0.2, 0.1, 0.5, 1_000), "edge": Score(0.05, 0.01, 0.5, 1_000)},
    }
    assert deciding(scores) == (["big", "edge"] if hits >= MIN_HITS else ["big"])


def test_the_examples_in_the_docstrings_run():
    assert doctest.testmod(validate).failed == 0


@pytest.mark.parametrize(("gap", "chosen"), [(TIE - 0.001, "short"), (TIE, "short"), (TIE + 0.001, "long")])
def test_worst_cases_within_the_tie_go_to_the_smaller_history_cap(gap: float, chosen: str):
    rows = {"long": Candidate(40.0, 1.0, 100, recency=0.9), "short": Candidate(40.0, 1.0, 30, recency=0.9)}
    table = {rows["long"]: {"s": 1.0, "t": 1.0}, rows["short"]: {"s": 1.0, "t": 1.0 - gap}}
    assert choose(table) == rows[chosen]
