"""How two runs' states compare (recstream/store/state_dump.py): exact but for float vectors, scores computed
from them, and which of exactly tied items fill a neighbour list's last places."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from recstream.store.state_dump import differing_keys, same_value

CLEAN = [["i1", 0.9, "h1"], ["i2", 0.5, "h1"], ["i3", 0.4, "h2"], ["i4", 0.4, "h2"]]


def cand(entries: list[list]) -> bytes:
    return orjson.dumps(entries)


@pytest.mark.parametrize("key", ["user:u1:cand", "item:i9:similar"])
def test_a_tie_at_the_cut_may_name_other_items(key: str) -> None:
    other = [*CLEAN[:3], ["i7", 0.4, "h3"]]  # i4 and i7 tie at the last score
    assert same_value(key, cand(CLEAN), cand(other))
    assert same_value(key, cand(CLEAN), cand([CLEAN[0], CLEAN[1], CLEAN[3], CLEAN[2]]))  # a tie in another order


@pytest.mark.parametrize(
    "other",
    [
        [CLEAN[0], ["i7", 0.5, "h1"], *CLEAN[2:]],  # another item above the last score
        [*CLEAN[:3], ["i7", 0.3, "h2"]],  # another item below the last score
        CLEAN[:3],  # shorter
        [*CLEAN[:3], ["i4", 0.4, "h1"]],  # the same item because of another history item
        [*CLEAN[:3], ["i4", 0.4002, "h2"]],  # a score off by more than 1e-4
    ],
    ids=["above-the-cut", "below-the-cut", "shorter", "because", "score"],
)
def test_lists_differing_other_than_by_a_tie_at_the_cut_differ(other: list[list]) -> None:
    assert not same_value("user:u1:cand", cand(CLEAN), cand(other))


def test_a_score_within_1e_4_is_the_same() -> None:
    assert same_value("user:u1:cand", cand(CLEAN), cand([*CLEAN[:3], ["i4", 0.40009, "h2"]]))


def test_vectors_compare_to_1e_6_and_everything_else_exactly() -> None:
    vector = np.array([0.5, -0.25], dtype="<f4")
    assert same_value("user:u1:vec", vector.tobytes(), (vector + 9e-7).astype("<f4").tobytes())
    assert not same_value("user:u1:vec", vector.tobytes(), (vector + 2e-6).astype("<f4").tobytes())
    assert not same_value("item:i1:meta", cand(CLEAN), cand([*CLEAN[:3], ["i7", 0.4, "h3"]]))


def test_differing_keys_names_keys_only_one_holds_and_changed_values() -> None:
    ours = {"a": b"1", "b": b"2", "only-ours": b"x"}
    theirs = {"a": b"1", "b": b"3", "only-theirs": b"y"}
    assert differing_keys(ours, theirs) == ["only-ours", "only-theirs", "b"]
