"""One page from a user's state and a snapshot, without Redis: sources, reasons, exclusions, cursors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from recstream.serving.cursor import Cursor
from recstream.serving.features import history_categories
from recstream.serving.feed import (
    FAST_UNAVAILABLE,
    TASTE_ITEMS,
    Exclusions,
    build_page,
    degraded_page,
    explore,
    favourite_categories,
    taste_weights,
)
from recstream.serving.filters import NO_FILTER, FeedFilter
from recstream.serving.ranking import RankerState
from recstream.serving.snapshot import Pool, Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.ranking import FEATURES
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
    expected = {
        "personal": "because you watched i99",
        "popular": "popular with people like you",
        "fresh": "new in music, one of your favourite categories",
        "explore": "new — we're exploring it",
    }
    assert page.warm and len(page.items) == 20 and {s.source for s in page.items} == set(expected)
    assert [s.reason for s in page.items] == [expected[s.source] for s in page.items], "every item's, not one a source"
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


def taste_of(user: UserState, snap: Snapshot) -> dict[str, float]:
    return taste_weights(user, history_categories(user, snap.categories, 0.0), snap.categories, 0.0)


def test_favourite_categories_put_picks_first_and_never_blocked_ones():
    snap = snapshot()
    user = UserState(preferred=("kids",), history_rows=[["i1", 5.0, 1], ["i2", 1.0, 1], ["n1", 2.0, 1]])
    taste = taste_of(user, snap)
    assert taste == {"news": 5.0, "sport": 1.0, "music": 2.0}
    assert favourite_categories(user, taste) == ("kids", "news", "music")
    assert favourite_categories(user, taste, blocked={"news"}) == ("kids", "music", "sport")


@pytest.mark.parametrize("length", [TASTE_ITEMS - 1, TASTE_ITEMS, TASTE_ITEMS + 1])
def test_the_taste_weighs_the_most_recent_taste_items_of_the_history(length):
    """The oldest row, a music item, counts only while the history is no longer than TASTE_ITEMS."""
    snap = snapshot()
    history = [["i1", 1.0, 1]] * (length - 1) + [["n1", 2.0, 1]]
    user = UserState(history_rows=history, seen=["i2"])
    taste = taste_of(user, snap)
    assert taste == ({"news": length - 1.0, "music": 2.0} if length <= TASTE_ITEMS else {"news": TASTE_ITEMS})


def test_without_a_history_the_taste_counts_one_per_seen_item():
    snap = snapshot()
    user = UserState(seen=["i1", "i2", "i3", "n1"])
    taste = taste_of(user, snap)
    assert taste == {"news": 2.0, "sport": 1.0, "music": 1.0}


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


def ranked_snapshot(overall: list[str], pool: list[str], categories: dict[str, tuple[str, ...]]) -> Snapshot:
    """A loaded snapshot with a warm ranker: ``overall`` the global popular list, ``pool`` the new items."""
    snap = Snapshot()
    for item, names in categories.items():
        snap.categories.put(item, names, now=0.0, created=1_700_000_000_000)
    snap.overall, snap.overall_rank = tuple(overall), {item: k for k, item in enumerate(overall)}
    snap.ctr_logits = {item: -3.0 + 0.01 * k for k, item in enumerate(overall)}
    fresh: dict[str, list[tuple[int, str]]] = {}
    for k, item in enumerate(pool):
        for name in categories.get(item, ()):
            fresh.setdefault(name, []).append((-k, item))
    snap.pool = Pool(
        items=tuple(pool),
        index={item: k for k, item in enumerate(pool)},
        alpha=np.full(len(pool), 2.0),
        beta=np.full(len(pool), 20.0),
        fresh={name: tuple(sorted(rows)) for name, rows in fresh.items()},
        by_category={name: np.array([k for k, i in enumerate(pool) if name in categories[i]]) for name in fresh},
        created=dict.fromkeys(pool, 1_700_000_000_000),
        ctr_logits=dict.fromkeys(pool, -3.0),
    )
    snap.clock_ms = 1_700_000_060_000
    weights = np.zeros(len(FEATURES) + 1)
    weights[1 + FEATURES.index("ctr_logit")] = 1.0
    snap.ranker = RankerState(weights, rows=10_000, partitions=1, refreshed_at=0.0, changed_at=0.0)
    snap.loaded = True
    return snap


MODES = [{}, {"explore_gate": "off"}, {"explore_policy": "epsilon_greedy"}, {"ranker": False}]


@pytest.mark.parametrize("flat", MODES, ids=["gated", "gate-off", "epsilon-greedy", "fixed"])
def test_a_page_is_full_while_a_generator_or_the_pool_has_an_allowed_item(flat):
    """Ungated, the union stopped filling as if each of the first explore picks would take an explore slot with an
    item of its own, though a generator had proposed one of them (the pool's x, also on the popular list): the page
    came out one short while the pool's y and the popular z's were allowed."""
    a, z = [f"a{k}" for k in range(8)], [f"z{k}" for k in range(4)]
    categories = {item: ("c2",) for item in [*a, *z, "h1"]} | {"x": ("c1",), "y": ("c1",)}
    snap = ranked_snapshot([*a, "x", *z], ["x", "y"], categories)
    user = UserState(candidate_rows=[[item, 0.9, "h1"] for item in a], history_rows=[["h1", 1.0, 5]], seen=["h1"])
    for seed in range(3):
        page = build_page(user, snap, SETTINGS.replace(**flat), 10, seed, now=0.0)
        assert page.ranked == flat.get("ranker", True) and len(page.items) == 10
        assert len({s.item for s in page.items}) == 10


@pytest.mark.parametrize("ranker", [True, False])
def test_a_source_of_share_0_only_inherits_and_the_page_stays_full(ranker):
    """A 0 share gives a source no slots of its own; it inherits what the others cannot fill, in both modes (the
    fixed blend the slots of a dry source, the ranked union the candidates it lacks)."""
    a, p = [f"a{k}" for k in range(5)], [f"p{k}" for k in range(5)]
    snap = ranked_snapshot([*a, *(f"z{k}" for k in range(30))], [], {item: ("c2",) for item in [*a, *p, "h1"]})
    user = UserState(candidate_rows=[[item, 0.9, "h1"] for item in p], history_rows=[["h1", 1.0, 5]], seen=["h1"])
    page = build_page(user, snap, SETTINGS.replace(share_personal=0.0, ranker=ranker), 10, 1, now=0.0)
    assert page.ranked == ranker and len(page.items) == 10
    assert not {s.item for s in page.items} & set(p), "popular has items left: nothing to inherit"
    short = ranked_snapshot(a, [], {item: ("c2",) for item in [*a, *p, "h1"]})
    page = build_page(user, short, SETTINGS.replace(share_personal=0.0, ranker=ranker), 10, 1, now=0.0)
    assert len(page.items) == 10 and {s.item for s in page.items} == {*a, *p}


@pytest.mark.parametrize("ranker", [True, False])
def test_with_only_explore_configured_the_page_is_full(ranker):
    """slot_counts gives popular the slots past explore's cap; the ranked page proposed from no generator and served
    the capped explore slots alone (5 of 20)."""
    items = [f"i{k}" for k in range(40)]
    snap = ranked_snapshot(items, [f"n{k}" for k in range(10)], {i: ("c2",) for i in items} | CATEGORIES)
    settings = SETTINGS.replace(share_personal=0.0, share_popular=0.0, share_fresh=0.0, share_explore=1.0,
                                ranker=ranker)  # fmt: skip
    page = build_page(warm_user(), snap, settings, 20, 1, now=0.0)
    assert page.ranked == ranker and len(page.items) == 20
    assert 0 < [s.source for s in page.items].count("explore") <= 5
