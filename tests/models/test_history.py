from __future__ import annotations

import gc
import random

import orjson
import pytest
from recstream.models.history import history_from_rows, history_rows, merge_history


def test_history_is_the_same_however_events_are_batched():
    rng = random.Random(0)
    events = [(f"i{rng.randrange(12)}", rng.choice([1.0, 4.0, 4.0, -4.0])) for _ in range(500)]  # with dislikes
    whole = merge_history({}, events, cap=8)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(events)), 15))
        history: dict = {}
        for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
            history = merge_history(history, events[start:end], cap=8)
        assert history_rows(history) == history_rows(whole)


def test_history_is_recent_first_capped_and_sums_weights():
    history = merge_history({}, [("a", 1.0), ("b", 1.0), ("a", 4.0), ("c", 1.0)], cap=2)
    assert history_rows(history) == [("c", 1.0), ("a", 5.0)]


def test_a_dislike_makes_the_item_a_negative_observation_whatever_came_before_or_after():
    for events in ([("a", 1.0), ("a", 4.0), ("a", -4.0)], [("a", -4.0), ("a", 4.0), ("a", 1.0)]):
        assert history_rows(merge_history({}, events, cap=5)) == [("a", -4.0)]
    assert history_rows(merge_history({"a": -4.0}, [("a", -2.0)], cap=5)) == [("a", -6.0)]


def test_a_zero_weight_event_keeps_what_the_item_had():
    """A feedback type may weigh 0 (an impression): it must not turn a click into nothing, nor a nothing negative."""
    assert history_rows(merge_history({}, [("a", 4.0), ("a", 0.0)], cap=5)) == [("a", 4.0)]
    assert history_rows(merge_history({}, [("a", 0.0), ("a", 4.0)], cap=5)) == [("a", 4.0)]
    assert history_rows(merge_history({"a": -4.0}, [("a", 0.0)], cap=5)) == [("a", -4.0)]


def test_merge_leaves_its_input_alone():
    before = {"a": 1.0}
    merge_history(before, [("b", 1.0), ("a", 1.0)], cap=1)
    assert before == {"a": 1.0}


def test_stored_form_round_trips_and_reloading_applies_the_cap():
    history = merge_history({}, [("a", 1.0), ("b", 4.0), ("c", 1.0)], cap=10)
    stored = orjson.dumps(history_rows(history))
    assert stored == b'[["c",1.0],["b",4.0],["a",1.0]]'
    assert history_from_rows(orjson.loads(stored), cap=10) == history
    assert history_rows(history_from_rows(orjson.loads(stored), cap=2)) == [("c", 1.0), ("b", 4.0)]


@pytest.mark.parametrize(
    "stored",
    [b'{"i1": 4.0}', b'"i1"', b"null", b'[["i1"]]', b'[["i1", 4.0, 1]]', b'[["i1", "4"]]', b'[["i1", true]]',
     b'[["i1", null]]', b"[[1, 4.0]]", b'[["i2", 1.0], "i1"]', b'[{"i1": 4.0}]'],
)  # fmt: skip
def test_a_stored_value_of_another_shape_is_a_value_error(stored: bytes):
    """What the worker reads as an empty history (recstream/store/state.py) instead of failing the batch."""
    with pytest.raises(ValueError, match="not a"):
        history_from_rows(orjson.loads(stored), cap=10)


def test_only_the_rows_within_the_cap_are_read():
    assert history_from_rows([["b", 1.0], ["a", 4], "past the cap"], cap=2) == {"a": 4.0, "b": 1.0}


def test_a_cached_history_is_invisible_to_the_cyclic_gc():
    """Why the in-memory form is a dict: a worker caches one per user, and tracked objects there
    make every full collection slower."""
    history = merge_history({}, [(f"i{k}", 1.0) for k in range(100)], cap=100)
    assert not gc.is_tracked(history)
