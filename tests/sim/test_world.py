from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np
import pydantic
import pytest

from recstream.contracts.events import validate
from recstream.sim.world import HOUR_MS, World, WorldConfig

ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SMALL = WorldConfig(seed=3, n_users=300, n_items=100, new_items_per_hour=3_600, initial_age_span_h=2)


@pytest.fixture(scope="module")
def stream() -> list[dict]:
    return World(SMALL).history(30_000, rate_per_s=50)


def test_same_seed_gives_the_same_world_and_stream():
    a, b, c = World(SMALL), World(SMALL), World(SMALL.model_copy(update={"seed": 4}))
    assert a.history(5_000) == b.history(5_000)
    np.testing.assert_array_equal(a.taste, b.taste)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    assert a.bias == b.bias
    assert a.history(5_000) != c.history(5_000)


def test_the_world_does_not_depend_on_how_far_it_was_advanced():
    ahead, fresh = World(SMALL), World(SMALL)
    ahead.available_items(SMALL.start_ms + 20 * HOUR_MS)  # generate many arrival blocks first
    assert ahead.history(5_000) == fresh.history(5_000)
    n = len(fresh.item_ids)
    np.testing.assert_array_equal(ahead.item_vectors[:n], fresh.item_vectors)
    np.testing.assert_array_equal(ahead.created_ms[:n], fresh.created_ms)


@pytest.mark.parametrize("base_ctr", [0.04, 0.1])
def test_a_random_impression_clicks_at_the_base_ctr(base_ctr: float):
    world = World(WorldConfig(seed=5, base_ctr=base_ctr))
    rng = np.random.default_rng(99)  # not the calibration sample
    users = rng.integers(0, world.config.n_users, 50_000)
    items = rng.integers(0, world.config.n_items, 50_000)
    mean = world.click_probability(users, items, world.config.start_ms).mean()
    assert mean == pytest.approx(base_ctr, rel=0.1)


def test_an_unreachable_base_ctr_is_refused():
    with pytest.raises(ValueError, match="base_ctr"):
        World(WorldConfig(n_users=10, n_items=50, appeal_half_life_h=1, initial_age_span_h=240))


def test_a_base_ctr_that_needs_a_bias_past_the_search_bound_is_refused():
    """Scores spread ±1e4 put the bias that gives a 4% click rate near −17,000: the search stopped at −50 and the
    world silently clicked at about half of its items' rate instead."""
    with pytest.raises(ValueError, match="needs a bias beyond"):
        World(WorldConfig(n_users=10, n_items=50, quality_sd=1e4))
    World(WorldConfig(n_users=10, n_items=50, quality_sd=10.0))  # a wide spread within reach still builds


@pytest.mark.parametrize("field", ["affinity_sd", "quality_sd", "new_items_per_hour"])
def test_infinite_spreads_and_rates_are_refused(field: str):
    """affinity_sd=inf built a world whose click probabilities were NaN; an infinite arrival rate looped forever."""
    with pytest.raises(pydantic.ValidationError, match="finite"):
        WorldConfig(**{field: math.inf})


def test_appeal_halves_every_half_life_and_is_zero_before_creation():
    world = World(WorldConfig(seed=6, n_users=20, n_items=20, appeal_half_life_h=24))
    created = int(world.created_ms[5])
    fresh, day_old = (world.click_probability(3, 5, created + age) for age in (0, 24 * HOUR_MS))
    assert day_old == pytest.approx(fresh / 2, rel=1e-12)
    assert world.click_probability(3, 5, created - 1) == 0.0
    timeless = World(WorldConfig(seed=6, n_users=20, n_items=20, appeal_half_life_h=None))
    assert timeless.click_probability(3, 5, created + 24 * HOUR_MS) == timeless.click_probability(3, 5, created)


def test_oracle_on_a_hand_checkable_world():
    start = 1_700_000_000_000
    world = World(WorldConfig(n_users=1, n_items=4, dim=1, new_items_per_hour=0, appeal_half_life_h=1, start_ms=start))
    world.taste = np.array([[1.0]])
    world.item_vectors = np.array([[2.0], [0.0], [-2.0], [0.0]])
    world.quality = np.array([0.0, 1.5, 0.0, 0.0])
    world.created_ms = np.array([start - 2 * HOUR_MS, start, start, start + HOUR_MS])
    world.bias = 0.0
    # at start: σ(2)·¼ = 0.22, σ(1.5) = 0.82, σ(−2) = 0.12, item 3 does not exist yet
    assert world.oracle_top_k(0, start, 4).tolist() == [1, 0, 2]
    assert world.oracle_top_k(0, start, 2, candidates=[0, 2, 3]).tolist() == [0, 2]
    # an hour later: item 3 σ(0) = 0.5 beats item 1 σ(1.5)·½ = 0.41, then 0.11, 0.06
    assert world.oracle_top_k(0, start + HOUR_MS, 4).tolist() == [3, 1, 0, 2]


def test_every_announcement_precedes_its_events_and_ids_are_safe(stream: list[dict]):
    users, items, event_ids = set(), set(), set()
    last_ts, previous = 0, None
    for message in stream:
        assert message["ts"] >= last_ts
        last_ts = message["ts"]
        kind = message.get("kind", "event")
        body = {k: v for k, v in message.items() if k != "kind"}  # the stream is the module's: left as it is
        assert not hasattr(validate(body, kind, now_ms=last_ts), "reason"), message  # the v1 contract
        if kind == "user":
            assert message["user_id"] not in users
            users.add(message["user_id"])
        elif kind == "item":
            assert message["item_id"] not in items
            items.add(message["item_id"])
        else:
            assert message["user_id"] in users and message["item_id"] in items
            assert message["event_id"] not in event_ids
            event_ids.add(message["event_id"])
            if message["type"] == "click":
                assert previous is not None and previous["type"] == "view"
                assert [previous[k] for k in ("user_id", "item_id", "ts")] == [
                    message[k] for k in ("user_id", "item_id", "ts")
                ]
            assert all(ID.match(message[k]) for k in ("user_id", "item_id", "event_id"))
        previous = message
    assert all(ID.match(x) for x in users | items)
    assert len(items) > SMALL.n_items  # new items arrived during the stream


def test_the_browsing_stream_is_skewed_and_follows_taste(stream: list[dict]):
    world = World(SMALL)
    views = [m for m in stream if m.get("type") == "view"]
    counts = np.array(sorted(Counter(m["item_id"] for m in views).values(), reverse=True))
    assert counts[: len(counts) // 10].sum() > 0.25 * counts.sum()
    world.available_items(views[-1]["ts"])
    user_index = {u: i for i, u in enumerate(world.user_ids)}
    item_index = {it: i for i, it in enumerate(world.item_ids)}
    u = np.array([user_index[m["user_id"]] for m in views])
    i = np.array([item_index[m["item_id"]] for m in views])
    viewed_affinity = np.einsum("nd,nd->n", world.taste[u], world.item_vectors[i]).mean()
    random_affinity = np.einsum("nd,nd->n", world.taste[u], world.item_vectors[np.random.permutation(i)]).mean()
    assert viewed_affinity > random_affinity + 0.3
    clicks = sum(m.get("type") == "click" for m in stream)
    assert SMALL.base_ctr < clicks / len(views) < 5 * SMALL.base_ctr


def test_users_with_the_same_attributes_share_taste():
    world = World(WorldConfig(seed=8, n_users=3_000))
    groups: defaultdict[tuple, list[int]] = defaultdict(list)
    bands = [17, 24, 34, 44, 55]
    for idx, a in enumerate(world.user_attributes):
        groups[(sum(a["age"] > b for b in bands), a["gender"], a["occupation"])].append(idx)
    unit = world.taste / np.linalg.norm(world.taste, axis=1, keepdims=True)
    same = [unit[g[0]] @ unit[g[1]] for g in groups.values() if len(g) >= 2]
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 3_000, (len(same), 2))
    other = np.einsum("nd,nd->n", unit[pairs[:, 0]], unit[pairs[:, 1]])
    assert np.mean(same) > np.mean(other) + 0.25


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError):
        WorldConfig(browse_popular=0.8, browse_recent=0.4)
    with pytest.raises(pydantic.ValidationError):
        WorldConfig(n_categories=0)
    with pytest.raises(pydantic.ValidationError):
        WorldConfig(n_user=10)  # type: ignore[call-arg]
