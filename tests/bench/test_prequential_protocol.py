"""The prequential schedule is what the benchmark's numbers rest on: these tests pin what it promises.

Above all: before every scored click, exactly that user's earlier ratings have been published (the
candidate rows' claim to be strict-order exact), and the clicked rating itself has not.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.prequential_protocol import (
    Popularity,
    Rating,
    Round,
    Stream,
    first_uses,
    group_ratings,
    in_order,
    rounds,
    shuffled,
    split,
    top_k,
)
from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.jobs.sources import Record, movielens
from tests.conftest import MOVIELENS

T0 = 10**12  # event timestamps must look like real epoch milliseconds


def rating(position: int, user: str, click: bool) -> Rating:
    view = Event(type="view", user_id=user, item_id=f"i{position}", ts=T0 + position)
    events = (view, view.model_copy(update={"type": "click"})) if click else (view,)
    return Rating(position, events)


tails = st.lists(st.tuples(st.sampled_from("abcde"), st.booleans()), max_size=60).map(
    lambda rows: [rating(k, user, click) for k, (user, click) in enumerate(rows)]
)


def check_prefixes(tail: list[Rating], schedule: list[Round]) -> None:
    """Every click scored once, in per-user order, after exactly the same user's earlier ratings."""
    published: list[Rating] = []
    scored: list[Rating] = []
    for step in schedule:
        published += step.publish
        for target in step.score:
            mine = {r.position for r in published if r.user_id == target.user_id}
            earlier = {r.position for r in tail if r.user_id == target.user_id and r.position < target.position}
            assert mine == earlier
            scored.append(target)
    assert sorted(r.position for r in scored) == [r.position for r in tail if r.click]
    positions = [r.position for r in published]
    assert len(positions) == len(set(positions)), "a rating was published twice"


@settings(max_examples=300, deadline=None)
@given(tails)
def test_rounds_publish_exactly_each_users_earlier_ratings_before_a_fetch(tail):
    check_prefixes(tail, rounds(tail))


@settings(max_examples=100, deadline=None)
@given(tails)
def test_in_order_is_the_strict_protocol(tail):
    schedule = in_order(tail)
    check_prefixes(tail, schedule)
    published: list[int] = []
    for step in schedule:
        published += [r.position for r in step.publish]
        assert published == list(range(step.score[0].position)), "strictly in order: everything before the click"


@settings(max_examples=100, deadline=None)
@given(tails)
def test_rounds_take_as_many_rounds_as_the_busiest_user_has_clicks(tail):
    clicks: dict[str, int] = {}
    for r in tail:
        clicks[r.user_id] = clicks.get(r.user_id, 0) + r.click
    assert len(rounds(tail)) == max(clicks.values(), default=0)
    for step in rounds(tail):
        assert [r.position for r in step.publish] == sorted(r.position for r in step.publish)
        assert len({r.user_id for r in step.score}) == len(step.score), "one click per user and round"


def test_a_click_joins_its_own_view_only():
    e = lambda kind, user, item, ts: Record("event", Event(type=kind, user_id=user, item_id=item, ts=T0 + ts))  # noqa: E731
    item = ItemEvent(op="new", item_id="a", ts=T0, created_ts=T0)
    stream = group_ratings(
        [Record("item", item), e("view", "u", "a", 1), e("click", "u", "a", 1), e("view", "u", "a", 2),
         e("click", "v", "a", 2), e("click", "u", "a", 3)]
    )  # fmt: skip
    assert [[ev.type for ev in r.events] for r in stream.ratings] == [["view", "click"], ["view"], ["click"], ["click"]]
    assert [r.position for r in stream.ratings] == [0, 2, 3, 4]
    assert stream.items == {"a": item}
    assert stream.events == 5


def test_split_moves_the_cut_to_the_end_of_a_rating():
    ratings = [rating(0, "u", True), rating(2, "u", False), rating(3, "v", True)]  # events 0-1, 2, 3-4
    history, tail = split(ratings, 0.2)  # cut at event 1: inside the first rating
    assert [r.position for r in history] == [0]
    assert [r.position for r in tail] == [2, 3]


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"MovieLens 100K is not at {MOVIELENS} (set MOVIELENS_DIR)")
def test_movielens_split_keeps_every_tail_click_with_its_view():
    stream = group_ratings(movielens(MOVIELENS))
    history, tail = split(stream.ratings, 0.8)
    assert len(history) + len(tail) == 100_000
    assert sum(len(r.events) for r in history) >= int(0.8 * stream.events)
    assert all(r.events[0].type == "view" for r in tail)
    assert all(len(r.events) == 2 for r in tail if r.click)


@given(tails.filter(lambda tail: len(tail) >= 2), st.integers(0, 2**32))
def test_a_shuffled_stream_is_every_rating_once_in_another_order_on_the_same_clock(tail, seed):
    ratings = [Rating(r.position, tuple(e.model_copy(update={"item_id": f"i{r.position % 7}"}) for e in r.events))
               for r in tail]  # fmt: skip
    stream = Stream(ratings, {r.item_id: ItemEvent(op="new", item_id=r.item_id, ts=T0, created_ts=T0) for r in ratings},
                    {r.user_id: UserEvent(user_id=r.user_id, ts=T0) for r in ratings})  # fmt: skip
    out = shuffled(stream, seed)

    def rows(s: Stream) -> list[tuple]:
        return sorted((r.user_id, r.item_id, tuple(e.type for e in r.events)) for r in s.ratings)

    assert rows(out) == rows(stream)
    assert [r.events[0].ts for r in out.ratings] == sorted(r.events[0].ts for r in ratings)  # the same clock
    assert all(e.ts == r.events[0].ts for r in out.ratings for e in r.events)  # a click stays with its view
    starts = np.cumsum([0] + [len(r.events) for r in out.ratings])[:-1].tolist()
    assert [r.position for r in out.ratings] == starts  # a position counts events, as group_ratings has it
    first = {}
    for r in out.ratings:
        first.setdefault(r.item_id, r.events[0].ts)
    assert {i: e.created_ts for i, e in out.items.items()} == first  # announced at its first rating, as the source does
    assert shuffled(stream, seed) == out


def test_shuffled_movielens_has_no_time_order_left():
    if not MOVIELENS.is_dir():
        pytest.skip(f"MovieLens 100K is not at {MOVIELENS}")
    stream = group_ratings(movielens(MOVIELENS))
    out = shuffled(stream, seed=1)
    assert len(out.ratings) == len(stream.ratings) and out.events == stream.events
    before = {(r.user_id, r.item_id): k for k, r in enumerate(stream.ratings)}
    after = [before[r.user_id, r.item_id] for r in out.ratings]
    assert abs(np.corrcoef(np.arange(len(after)), after)[0, 1]) < 0.02  # the new order says nothing of the old one
    assert shuffled(stream, seed=2).ratings[0] != out.ratings[0]


def test_popularity_counts_clicks_and_breaks_ties_by_first_click():
    popular = Popularity()
    clicks = [("c", "click"), ("a", "click"), ("b", "view"), ("b", "view"), ("a", "click"), ("d", "click")]
    popular.add(Event(type=kind, user_id="u", item_id=item, ts=T0) for item, kind in clicks)
    assert popular.top(exclude=set(), k=10) == ["a", "c", "d"]
    assert popular.top(exclude={"a"}, k=1) == ["c"]


def test_top_k_and_first_uses():
    assert top_k(iter(["a", "b", "c"]), {"a"}, k=5) == ["b", "c"]
    tail = [rating(0, "u", False), rating(1, "v", True), rating(2, "u", True)]
    assert list(first_uses(tail, {"i1"}, "item")) == ["i0", "i2"]
    assert list(first_uses(tail, set(), "user")) == ["u", "v"]


def test_the_ranker_learns_a_page_as_its_views_and_the_click_on_it_exactly_as_a_worker_would():
    from recstream.models.ranker import FTRLConfig
    from recstream.streams.ranker_training import Rows, train

    from bench.prequential_rows import ImpressionTrainer
    from recstream.contracts.events import partition_for
    from recstream.contracts.ranking import FEATURES, encode_features

    vector = {item: encode_features([float(k)] * len(FEATURES)) for k, item in enumerate(["i0", "x", "y"])}
    hit, miss = rating(0, "a", click=True), rating(1, "c", click=True)  # partitions 0 and 2 of 4
    trainer = ImpressionTrainer(partitions=4, config=FTRLConfig())
    # a's page holds the clicked item; c's does not, and one of its items has no vector (not learned)
    states = trainer.learn([(hit, ["x", "i0"], vector), (miss, ["y", "z"], vector)])
    assert (trainer.rows, trainer.clicks) == (3 + 1, 1)
    assert set(states) == {partition_for("a", 4), partition_for("c", 4)} == {0, 2}
    rows_of = {"a": (["x", "i0", "i0"], [0.0, 0.0, 1.0]), "c": (["y"], [0.0])}
    for user, (items, labels) in rows_of.items():
        x = np.vstack([np.full(len(FEATURES), float(["i0", "x", "y"].index(i))) for i in items])
        expected = train(None, Rows(x, np.array(labels)), FTRLConfig()).state
        assert states[partition_for(user, 4)] == expected


def test_the_ranker_learns_a_view_once_per_user_and_item_as_a_real_clients_seen_set_would_allow():
    from recstream.models.ranker import FTRLConfig
    from recstream.streams.ranker_training import Rows, train

    from bench.prequential_rows import ImpressionTrainer
    from recstream.contracts.events import partition_for
    from recstream.contracts.ranking import FEATURES, encode_features

    vector = {item: encode_features([float(k)] * len(FEATURES)) for k, item in enumerate(["x", "y", "i1"])}
    trainer = ImpressionTrainer(partitions=4, config=FTRLConfig())
    trainer.learn([(rating(0, "a", click=True), ["x", "y"], vector)])
    # the next page shows x and y again (nothing was published, the reader does not know they were seen) and
    # holds the rated i1: x and y are not learned again, i1's view and click are; another user's x is learned
    states = trainer.learn(
        [(rating(1, "a", click=True), ["x", "y", "i1"], vector), (rating(2, "c", False), ["x"], vector)]
    )
    assert (trainer.rows, trainer.clicks, trainer.repeats) == (2 + 2 + 1, 1, 2)
    x = np.vstack([np.full(len(FEATURES), float(k)) for k in (0, 1, 2, 2)])
    expected = train(None, Rows(x, np.array([0.0, 0.0, 0.0, 1.0])), FTRLConfig()).state
    assert states[partition_for("a", 4)] == expected  # c is on another partition (2), learned apart
