"""Pages pinned to the bit: the reader's speed-ups must serve what it served before.

A synthetic snapshot (lists, pool, a warm ranker, cached categories) and users of every kind (warm, cold with
picks, one who blocked a category, one mid-session) go through ``build_page`` in each mode (ranked with each explore
gate, the fixed blend) with two seeds; every item, source, reason, top feature and logged vector must equal
``pinned_pages.json``, written by the code before the reader's CPU work of 2026-12-03 (main at 70d3e54), and
every score be within 1e-12 of its pinned value: a score's last bits follow the CPU's numpy SIMD kernels (on
another machine the file's differed in the 17th digit). A change
that means to serve other pages rewrites the file on purpose::

    .venv/bin/python -c "from tests.serving.test_pinned_pages import write; write()"
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from recstream.models.ranker import FTRLRanker
from recstream.serving.features import _ROUNDED, AGES_MAX, ROUNDED_MAX, PageFeatures, _ages, history_categories
from recstream.serving.feed import build_page
from recstream.serving.ranking import RankerState
from recstream.serving.snapshot import Pool, Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import load_settings

PINNED = Path(__file__).with_name("pinned_pages.json")
PINNED_FEATURES = FEATURES[:1] + FEATURES[2:]
"""The features the file's vectors hold: all but ``batch_rank``, added since. None of these users has a batch list,
so it reads 0 on every page, weighs 0 in the test's ranker, and the pages must be the very ones pinned before it."""
NOW = 1_000.0
CATEGORIES = ("news", "sport", "music", "film", "kids")
SEGMENT = "age25-34.F"
MODES = {
    "ranked": {},
    "ranked, gate off": {"explore_gate": "off"},
    "ranked, gate draw": {"explore_gate": "draw"},
    "fixed": {"ranker": False},
}


def snapshot() -> Snapshot:
    rng = random.Random(3)
    snap = Snapshot()
    items = [f"i{k}" for k in range(300)]
    pool = [f"n{k}" for k in range(40)]
    for item in items + pool:
        snap.categories.put(item, tuple(rng.sample(CATEGORIES, 2)), now=NOW, created=1_700_000_000_000)
    ctr = {item: rng.betavariate(2, 40) for item in items}
    overall = tuple(sorted(items, key=lambda i: (-ctr[i], i)))
    snap.overall, snap.overall_rank = overall, {item: k for k, item in enumerate(overall)}
    snap.ctr_logits = {item: math.log(c / (1 - c)) for item, c in ctr.items()}
    snap.ctr_floor_logit = math.log(0.05 / 0.95)
    segment = sorted(items[:200], key=lambda i: (-ctr[i] * (1 + int(i[1:]) % 3 / 10), i))
    snap.segments = {SEGMENT: Popular(warm=tuple(segment), cold=tuple(reversed(segment)),
                                      ctr_logits={i: snap.ctr_logits[i] + 0.1 for i in segment})}  # fmt: skip
    views = np.array([rng.randrange(0, 200) for _ in pool], dtype=np.float64)
    clicks = np.array([rng.randrange(0, 8) for _ in pool], dtype=np.float64)
    created = {item: 1_700_000_000_000 + 60_000 * k for k, item in enumerate(pool)}
    fresh: dict[str, list[tuple[int, str]]] = {}
    for item in pool:
        for category in snap.categories.get(item, NOW) or ():
            fresh.setdefault(category, []).append((-created[item], item))
    snap.pool = Pool(
        items=tuple(pool),
        index={item: k for k, item in enumerate(pool)},
        alpha=1.0 + clicks,
        beta=19.0 + views - clicks,
        fresh={c: tuple(sorted(rows)) for c, rows in fresh.items()},
        by_category={c: np.array([k for k, i in enumerate(pool) if c in (snap.categories.get(i, NOW) or ())])
                     for c in CATEGORIES},
        created=created,
        ctr_logits={item: math.log((c + 1) / (v - c + 19)) for item, c, v in zip(pool, clicks, views, strict=True)},
    )  # fmt: skip
    snap.clock_ms = 1_700_000_000_000 + 60_000 * 45
    ranker = FTRLRanker(len(PINNED_FEATURES))
    rows = np.random.default_rng(5).uniform(0.0, 1.0, (2_000, len(PINNED_FEATURES)))
    ranker.update(rows, (rows[:, 0] + rows[:, 5] > 1.0).astype(np.int64))
    weights = np.zeros(len(FEATURES) + 1)  # a feature added since weighs 0
    weights[[0, *(1 + FEATURES.index(name) for name in PINNED_FEATURES)]] = ranker.weights
    snap.ranker = RankerState(weights, 2_000, 1, NOW, NOW, ())
    snap.loaded = True
    return snap


def users() -> dict[str, UserState]:
    rng = random.Random(11)
    items = [f"i{k}" for k in range(300)]

    def warm(**more: object) -> UserState:
        history = rng.sample(items, 10)
        candidates = [[i, round(1 - j / 50, 5), rng.choice(history)] for j, i in enumerate(rng.sample(items, 50))]
        clicked = [[i, 5.0 if k % 3 == 0 else 1.0, 5] for k, i in enumerate(history)]  # a view, or a view and a click
        return UserState(segment=SEGMENT, candidate_rows=candidates, history_rows=clicked,
                         seen=[*rng.sample(items, 60), "n3"], **more)  # type: ignore[arg-type]  # fmt: skip

    return {
        "warm": warm(),
        "warm, mid-session": warm(served=frozenset([*rng.sample(items, 30), "n1", "n7"]), session_found=True),
        "warm, blocks sport": warm(not_interested=frozenset({"sport", "i5"})),
        "cold with picks": UserState(segment=SEGMENT, preferred=("music", "kids")),
        "cold, unknown segment": UserState(segment="nowhere"),
    }


def pages() -> dict[str, list]:
    snap, base = snapshot(), load_settings()
    out = {}
    for mode, flat in MODES.items():
        settings = base.replace(**flat)
        for name, user in users().items():
            for seed in (1, 987_654_321):
                page = build_page(user, snap, settings, 20, seed, NOW)
                items = [[s.item, s.source, s.reason, s.score, s.top_feature] for s in page.items]
                out[f"{mode} | {name} | seed {seed}"] = [page.mode, items, page.vectors]
    return out


def write() -> None:
    pinned = {key: [mode, items, pinned_vectors(vectors)] for key, (mode, items, vectors) in pages().items()}
    lines = [f"{json.dumps(key)}: {json.dumps(page)}" for key, page in pinned.items()]
    PINNED.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def pinned_vectors(vectors: list[str] | None) -> list[str] | None:
    """Served vectors as the file holds them: the features it pins, under their version (``batch_rank`` must be 0)."""
    if vectors is None:
        return None
    version = hashlib.blake2b(",".join(PINNED_FEATURES).encode(), digest_size=4).hexdigest()
    out = []
    for vector in vectors:
        values = dict(zip(FEATURES, vector.partition(":")[2].split(","), strict=True))
        assert values.pop("batch_rank") == "0.0", vector
        out.append(f"{version}:" + ",".join(values.values()))
    return out


def test_every_page_is_the_pinned_one_item_by_item():
    pinned = json.loads(PINNED.read_text())
    served = json.loads(json.dumps(pages()))  # the same float round trip as the file's
    assert served.keys() == pinned.keys()
    for key, (mode, items, vectors) in pinned.items():
        assert served[key][0] == mode and pinned_vectors(served[key][2]) == vectors, key
        assert [[*i[:3], i[4]] for i in served[key][1]] == [[*i[:3], i[4]] for i in items], key
        scores = zip((i[3] for i in served[key][1]), (i[3] for i in items), strict=True)
        assert all(
            a == b or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12)) for a, b in scores
        ), key
    modes = {page[0] for page in pinned.values()}
    assert modes == {"ranked", "fixed-off"}, modes


@pytest.mark.parametrize("filled", [AGES_MAX - 1, AGES_MAX, AGES_MAX + 1])
def test_the_pool_age_memo_starts_over_past_its_bound_and_the_rows_stay_the_same(filled):
    """A page's ``pool_age`` values are memoized per clock (serving/features._ages), at most AGES_MAX of them."""
    snap, user, graduate_s = snapshot(), users()["warm"], 3600.0
    history = history_categories(user, snap.categories, NOW)
    features = PageFeatures(user, snap, snap.segments[SEGMENT], history, {}, (), NOW, graduate_s, 20_000)
    items = [*snap.pool.items[:5], "i1", "i2"]  # five creation times: the i's were created with n0
    ages = _ages(snap.clock_ms, graduate_s * 1000)
    ages.clear()
    expected = features.rows(items)
    ages.clear()
    ages.update({-k: 0.5 for k in range(1, filled + 1)})  # creation times no item has
    assert np.array_equal(features.rows(items), expected)
    assert len(ages) == (5 if filled > AGES_MAX else filled + 5)


@pytest.mark.parametrize("filled", [ROUNDED_MAX - 1, ROUNDED_MAX, ROUNDED_MAX + 1])
def test_the_category_rounding_memo_starts_over_past_its_bound_and_the_rows_stay_the_same(filled):
    """A page's category roundings (``category_affinity`` sums, ``category_lift`` means) are memoized by value
    (serving/features._ROUNDED), at most ROUNDED_MAX."""
    snap, user = snapshot(), users()["warm"]
    taste = {"news": 3.0, "sport": 1.0, "film": 2.0}
    history = history_categories(user, snap.categories, NOW)
    features = PageFeatures(user, snap, snap.segments[SEGMENT], history, taste, (), NOW, 3600.0, 20_000)
    items = [f"i{k}" for k in range(20)]
    _ROUNDED.clear()
    expected = features.rows(items)
    sums = len(_ROUNDED)
    _ROUNDED.clear()
    _ROUNDED.update({1e3 + k: 0.5 for k in range(1, filled + 1)})  # means no page has: a lift is a log of ≤ 1e3
    assert np.array_equal(features.rows(items), expected) and sums > 1
    assert len(_ROUNDED) == (sums if filled > ROUNDED_MAX else filled + sums)
