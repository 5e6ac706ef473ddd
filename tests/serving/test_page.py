"""One page from a user's state and a snapshot, without Redis: sources, reasons, exclusions, cursors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from recstream.serving.cursor import Cursor
from recstream.serving.feed import (
    FAST_UNAVAILABLE,
    Exclusions,
    build_page,
    degraded_page,
    explore,
    favourite_categories,
    taste_weights,
)
from recstream.serving.filters import NO_FILTER, FeedFilter
from recstream.serving.snapshot import Pool, Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.settings import load_settings

SETTINGS = load_settings()
CATEGORIES = {f"i{k}": ("news" if k % 2 else "sport",) for k in range(100)} | {f"n{k}": ("music",) for k in range(10)}


def snapshot() -> Snapshot:
    snap = Snapshot()
    for item, categories in CATEGORIES.items():
        snap.categories.put(item, categories, now=0.0)
    order = tuple(f"i{k}" for k in range(100))
    snap.overall = order
    snap.segments = {"age25-34.F": Popular(warm=order, cold=order[::-1])}
    items = tuple(f"n{k}" for k in range(10))
    snap.pool = Pool(
        items=items,
        index={item: k for k, item in enumerate(items)},
        alpha=np.full(10, 2.0),
        beta=np.full(10, 8.0),
        fresh={"music": tuple((-k, item) for k, item in enumerate(items))},
        by_category={"music": np.arange(10)},
    )
    return snap


def warm_user(**more) -> UserState:
    rows = [[f"i{k}", 1.0 - k / 100, "i99"] for k in range(50, 80)]
    return UserState(segment="age25-34.F", candidate_rows=rows, history_rows=[["n0", 3.0, 1]], seen=["i0"], **more)


def test_a_warm_page_names_why_each_item_is_there():
    page = build_page(warm_user(), snapshot(), SETTINGS, 20, seed=1, now=0.0)
    reasons = {s.source: s.reason for s in page.items}
    assert page.warm and len(page.items) == 20
    assert reasons == {
        "personal": "because you watched i99",
        "popular": "popular with people like you",
        "fresh": "new in music, one of your favourite categories",
        "explore": "new — we're exploring it",
    }
    assert "i0" not in {s.item for s in page.items}, "seen"


def test_a_not_interested_category_holds_back_items_whose_categories_are_unknown():
    snap = snapshot()
    user = warm_user(not_interested=frozenset({"news"}))
    unknown = UserState(
        segment="age25-34.F", candidate_rows=[["mystery", 1.0, None]], not_interested=user.not_interested
    )
    for u in (user, unknown):
        items = {s.item for s in build_page(u, snap, SETTINGS, 30, seed=1, now=0.0).items}
        assert not [i for i in items if "news" in CATEGORIES.get(i, ())]
        assert "mystery" not in items
    assert "mystery" in snap.categories.wanted, "the next snapshot reload fetches its categories"


def test_a_not_interested_category_no_cached_item_carries_yet_holds_back_unknown_items_too():
    """ "horror" is on no cached item (a long-tail category, a reader just restarted): it was not a blocked category,
    so candidates whose categories were not loaded yet went through, horror ones included. An entry the snapshot
    knows as an item keeps the one-set fast path."""
    snap = snapshot()
    rows = [["h1", 1.0, None], ["i2", 0.9, None]]
    user = UserState(segment="age25-34.F", candidate_rows=rows, not_interested=frozenset({"horror"}))
    items = {s.item for s in build_page(user, snap, SETTINGS, 30, seed=1, now=0.0).items}
    assert "h1" not in items and "i2" in items and "h1" in snap.categories.wanted
    assert isinstance(Exclusions(warm_user(not_interested=frozenset({"i7"})), snap, 0.0).fast, set)
    assert "horror" in snap.categories.wanted, "asked for: it may be an item id the reader never cached"
    snap.categories.put("horror", (), now=0.0)  # the reload found no such item: still maybe a category
    assert not isinstance(Exclusions(warm_user(not_interested=frozenset({"horror"})), snap, 0.0).fast, set)
    old = warm_user(not_interested=frozenset({"i500"}))  # an item id the reader never cached
    assert not isinstance(Exclusions(old, snap, 0.0).fast, set) and "i500" in snap.categories.wanted
    snap.categories.put("i500", ("news",), now=0.0, created=1)  # the next reload: an item, the fast path again
    assert isinstance(Exclusions(old, snap, 0.0).fast, set)


def test_explore_holds_back_pool_items_without_categories_from_a_user_with_a_refused_category():
    """An explore pick is held back as the other sources' items are: a pool item whose categories were not loaded
    may be in the category the user is not interested in (a blocked one, or one no cached item carries yet)."""
    snap = snapshot()
    snap.pool = dataclasses.replace(snap.pool, uncategorized=np.array([0]))
    picked = {
        name: {c.item for c in explore(snap.pool, Exclusions(warm_user(not_interested=refused), snap, 0.0), 10, 1,
                                       SETTINGS)[0]}
        for name, refused in (("none", frozenset()), ("blocked", frozenset({"news"})), ("unsure", frozenset({"x"})))
    }  # fmt: skip
    assert "n0" in picked["none"] and len(picked["none"]) == 10
    assert picked["blocked"] == picked["unsure"] == picked["none"] - {"n0"}


def test_a_cold_user_with_picks_gets_popular_items_of_those_categories_first():
    user = UserState(segment="age25-34.F", preferred=("news",))
    page = build_page(user, snapshot(), SETTINGS, 20, seed=1, now=0.0)
    popular = [s for s in page.items if s.source == "popular"]
    assert not page.warm
    assert popular[0].item == "i99" and popular[0].reason == "popular in news, which you picked"
    assert all("news" in CATEGORIES[s.item] for s in popular)


def test_favourite_categories_put_picks_first_and_never_blocked_ones():
    snap = snapshot()
    user = UserState(preferred=("kids",), history_rows=[["i1", 5.0, 1], ["i2", 1.0, 1], ["n1", 2.0, 1]])
    taste = taste_weights(user, snap.categories, 0.0)
    assert taste == {"news": 5.0, "sport": 1.0, "music": 2.0}
    assert favourite_categories(user, taste) == ("kids", "news", "music")
    assert favourite_categories(user, taste, blocked={"news"}) == ("kids", "music", "sport")


def test_the_degraded_page_is_the_last_popular_list_minus_unavailable_items():
    snap = snapshot()
    snap.unavailable = frozenset({"i1"})
    assert [s.item for s in degraded_page(snap, 3)] == ["i0", "i2", "i3"]


def test_the_same_seed_gives_the_same_page_and_another_seed_other_explore_draws():
    snap, user = snapshot(), warm_user()
    pages = {seed: build_page(user, snap, SETTINGS, 20, seed, now=0.0).items for seed in range(20)}
    assert build_page(user, snap, SETTINGS, 20, 3, now=0.0).items == pages[3]
    assert len({tuple(s.item for s in p if s.source == "explore") for p in pages.values()}) > 1


def test_cursors_round_trip_and_malformed_ones_are_refused():
    cursor = Cursor.start().following()
    assert Cursor.parse(cursor.text) == cursor and cursor.page == 1
    assert cursor.seed("u1") == Cursor.parse(cursor.text).seed("u1") != cursor.following().seed("u1")
    assert Cursor.parse("0123456789abcdef.999999").last and not cursor.last  # MAX_PAGE: the last page
    assert not Cursor.parse("0123456789abcdef.999998").last
    bad_ones = ("", "abc", "0123456789abcdef", "0123456789abcdef.0", "0123456789ABCDEF.1", "0123456789abcdef.1.2")
    for bad in (*bad_ones, "0123456789abcdef.1000000", "0123456789abcdef.1\n"):  # a trailing newline passed re.match
        with pytest.raises(ValueError, match="malformed cursor"):
            Cursor.parse(bad)


@pytest.mark.parametrize("unavailable", [FAST_UNAVAILABLE - 1, FAST_UNAVAILABLE, FAST_UNAVAILABLE + 1])
def test_the_fast_exclusion_set_answers_as_the_exclusions_do(unavailable):
    """Exclusions.fast is one set when ids alone decide (up to FAST_UNAVAILABLE unavailable items), else the
    Exclusions themselves; either way every item gets the same answer."""
    snap = snapshot()
    snap.unavailable = frozenset(f"u{k}" for k in range(unavailable))
    probe = [*CATEGORIES, "mystery", "u0", f"u{unavailable - 1}", f"u{unavailable}"]
    cases = [
        (warm_user(served=frozenset({"i3"})), NO_FILTER, unavailable <= FAST_UNAVAILABLE),
        (warm_user(not_interested=frozenset({"news"})), NO_FILTER, False),
        (warm_user(), FeedFilter.parse(category="sport"), False),
    ]
    for user, only, plain in cases:
        exclude = Exclusions(user, snap, 0.0, only)
        assert isinstance(exclude.fast, set) == plain
        assert [item in exclude.fast for item in probe] == [item in exclude for item in probe]
