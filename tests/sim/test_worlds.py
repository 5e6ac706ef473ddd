"""The named worlds (recstream.sim.simulator.WORLDS) have the property each name claims."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recstream.sim.simulator import WORLDS, SimConfig
from recstream.sim.world import HOUR_MS, World, synthetic

STABLE = ("stable", "sparse", "dense")
SAME_TRAFFIC = 30_000  # stream dicts of each world compared at equal length


def world(name: str) -> World:
    return World(WORLDS[name].model_copy(update={"seed": 11}))


@pytest.mark.parametrize("name", STABLE)
def test_in_a_stable_world_an_item_is_as_appealing_a_month_later(name: str):
    w = world(name)
    items = np.arange(0, w.config.n_items, 97)
    created = w.created_ms[items]
    new, old = (w.click_probability(5, items, created + age) for age in (0, 30 * 24 * HOUR_MS))
    np.testing.assert_array_equal(new, old)


def test_in_the_fresh_world_appeal_halves_every_two_minutes():
    w = world("fresh")
    items = np.arange(0, w.config.n_items, 17)
    created = w.created_ms[items]
    new, later = (w.click_probability(5, items, created + age) for age in (0, 2 * 60_000))
    np.testing.assert_allclose(later, new / 2, rtol=1e-9)


def taste_and_quality_variance(w: World) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, w.config.n_users, 20_000)
    items = rng.integers(0, w.config.n_items, 20_000)
    affinity = np.einsum("nd,nd->n", w.taste[users], w.item_vectors[items])
    return float(affinity.var()), float(w.quality[: w.config.n_items].var())


@pytest.mark.parametrize("name", STABLE)
def test_in_a_stable_world_taste_matters_more_than_quality(name: str):
    taste, quality = taste_and_quality_variance(world(name))
    assert taste > 4 * quality


def test_in_the_fresh_world_quality_matters_more_than_taste():
    taste, quality = taste_and_quality_variance(world("fresh"))
    assert quality > 1.5 * taste


@pytest.mark.parametrize("name", STABLE)
def test_a_stable_world_adds_an_item_every_few_hundred_feeds(name: str):
    w = world(name)
    start = w.config.start_ms
    arrived = int(w.available_items(start + HOUR_MS)) - int(w.available_items(start))
    feeds_per_item = SimConfig().feeds_per_s * 3600 / arrived
    assert 100 <= feeds_per_item <= 1_000


def per_user(name: str) -> tuple[float, float]:
    """Mean views and clicks per user who viewed anything, over the first SAME_TRAFFIC stream dicts."""
    stream = world(name).history(SAME_TRAFFIC)
    views = Counter(e["user_id"] for e in stream if e.get("type") == "view")
    clicks = sum(e.get("type") == "click" for e in stream)
    return sum(views.values()) / len(views), clicks / len(views)


def test_dense_users_have_ten_times_the_views_and_clicks_of_sparse_ones_on_the_same_traffic():
    dense_views, dense_clicks = per_user("dense")
    sparse_views, sparse_clicks = per_user("sparse")
    assert dense_views >= 10 * sparse_views
    assert dense_clicks >= 10 * sparse_clicks
    assert dense_views >= 100, "long histories: beyond every history cap under validation but the largest"


def test_synthetic_streams_a_named_world_with_its_seed_and_rate():
    stable = WORLDS["stable"]
    records = list(synthetic(2_000, seed=4, config=stable, rate_per_s=300))
    expected = World(stable.model_copy(update={"seed": 4})).history(2_000, rate_per_s=300)
    assert [r.kind for r in records] == [e.get("kind", "event") for e in expected]
    assert [r.value.ts for r in records] == [e["ts"] for e in expected]
    assert [getattr(r.value, "item_id", None) for r in records] == [e.get("item_id") for e in expected]


@pytest.mark.parametrize("n", [0, 1, 2, 499, 500, 501])
def test_synthetic_counts_events_alone_when_asked_and_ends_on_the_last(n: int):
    """``produce --synthetic 2000`` promised 2,000 events and published 582 in 1,426 messages: the count was of
    every message. Counting events, the users and items they name come on top, none after the last event."""
    records = list(synthetic(n, events=True))
    assert sum(r.kind == "event" for r in records) == n
    assert not records or records[-1].kind == "event"
    assert [r.line for r in records] == list(range(1, len(records) + 1))
    messages = list(synthetic(len(records)))
    assert [(r.kind, r.value) for r in messages] == [(r.kind, r.value) for r in records]
