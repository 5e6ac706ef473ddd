"""The simulator's truth side on a tiny world whose click probabilities are computed by hand."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web

from recstream.contracts.settings import load_settings
from recstream.sim.simulator import Ledger, Shown, SimResult, Simulator, post_events
from recstream.sim.world import HOUR_MS, World, WorldConfig

START = 1_700_000_000_000


def record(ledger: Ledger, *page: Any) -> list[bool]:
    """Score a page and count it, as the simulator does with one whose events were accepted."""
    return ledger.count(ledger.score(*page))


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port for the block; yields its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def tiny_world(half_life_h: float | None = None) -> World:
    """One user with taste 1 (d = 1), four items with affinity 0, 1, 2, 3, no quality, bias 0.

    Items 0–2 exist at START; item 3 (the best by taste) is created one hour later.
    """
    world = World(WorldConfig(seed=0, n_users=1, n_items=4, dim=1, new_items_per_hour=0,
                              appeal_half_life_h=half_life_h, start_ms=START, initial_age_span_h=0))  # fmt: skip
    world.taste = np.array([[1.0]])
    world.item_vectors = np.array([[0.0], [1.0], [2.0], [3.0]])
    world.quality = np.zeros(4)
    world.bias = 0.0
    world.created_ms = np.array([START, START, START, START + HOUR_MS])
    return world


def test_oracle_is_the_best_available_unseen_items():
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    assert ledger.oracle(0, START).tolist() == [2, 1]  # item 3 does not exist yet
    assert ledger.oracle(0, START + HOUR_MS).tolist() == [3, 2]
    ledger.saw(0, [3])
    assert ledger.oracle(0, START + HOUR_MS).tolist() == [2, 1]


def test_regret_is_the_oracle_value_minus_the_served_value():
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    best, got = ledger.regret(0, [0, 1], START)
    assert best == pytest.approx(sigmoid(2) + sigmoid(1))
    assert got == pytest.approx(sigmoid(0) + sigmoid(1))
    assert ledger.regret(0, [1, 2], START) == pytest.approx((best, best))  # the oracle's items: no regret
    assert ledger.regret(0, [0], START)[1] == pytest.approx(sigmoid(0))  # a short page: the missing slot is 0


def test_regret_follows_fading_appeal():
    """With a 1 h half-life, two hours later items 0–2 are worth ¼ and item 3 (1 h old) ½ of σ."""
    ledger = Ledger(tiny_world(half_life_h=1.0), start_ms=START, limit=2)
    now = START + 2 * HOUR_MS
    assert ledger.oracle(0, now).tolist() == [3, 2]
    best, got = ledger.regret(0, [0, 1], now)
    assert best == pytest.approx(sigmoid(3) / 2 + sigmoid(2) / 4)
    assert got == pytest.approx((sigmoid(0) + sigmoid(1)) / 4)


def test_record_counts_sources_regret_discoveries_and_shown_items():
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    rng = np.random.default_rng(0)
    record(ledger, 0, [Shown(0, "personal", "a"), Shown(1, "explore", "a")], START + HOUR_MS, rng)
    record(ledger, 0, [Shown(3, "explore", "b")], START + HOUR_MS, rng)
    ledger.ranked([1, 3])  # item 3 is new (created after start_ms), 1 is not: a discovery after 1 impression
    record(ledger, 0, [Shown(3, "popular", "b")], START + HOUR_MS, rng)
    ledger.ranked([3])  # already discovered
    r = ledger.finish(START + HOUR_MS)
    assert r.feeds == 3 and r.totals.impressions == 4
    assert {s: c.impressions for s, c in r.by_source.items()} == {"personal": 1, "explore": 2, "popular": 1}
    first = sigmoid(3) + sigmoid(2) - sigmoid(0) - sigmoid(1)  # oracle [3, 2] vs served [0, 1]
    second = sigmoid(3) + sigmoid(2) - sigmoid(3)  # 0 and 1 are shown now: oracle [3, 2], served [3]
    third = sigmoid(2)  # 3 was shown, so the oracle has only item 2 left; the page repeats 3, which earns nothing
    assert r.regret == pytest.approx(first + second + third)
    assert r.by_variant["a"].feeds == 1 and r.by_variant["a"].regret == pytest.approx(first)
    assert r.by_variant["b"].impressions == 2
    assert r.discovered_after == {3: 1}
    assert r.top_new == [3] and r.top_discovered == [3] and r.median_impressions_to_discovery == 1.0
    assert ledger.shown[0] == {0, 1, 3}


def test_a_repeat_earns_nothing_and_is_never_clicked_whether_shown_before_or_earlier_on_the_page():
    """The oracle never repeats an item; a page that did was credited its full p, and the memoryless user clicked it
    again: rows that re-show items (a seen set of 500 in a dense world) beat the oracle, regret below 0."""
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    ledger.saw(0, [2])
    _, got = ledger.regret(0, [2, 1, 1], START)
    assert got == pytest.approx(sigmoid(1))  # 2 was shown before; the second 1 repeats the first

    class Always:  # every draw is 0: a new item is always clicked
        def random(self, size: int) -> np.ndarray:
            return np.zeros(size)

    page = [Shown(2, "popular"), Shown(1, "personal"), Shown(1, "personal")]
    assert record(ledger, 0, page, START, Always()) == [False, True, False]  # type: ignore[arg-type]


def test_the_oracle_chooses_among_the_items_that_existed_when_the_feed_was_asked_for():
    """Item 3 is created while the reader answers: no reader could have served it, so it is not the oracle's."""
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    arrived = START + HOUR_MS
    assert ledger.oracle(0, arrived, asked_ms=arrived - 1).tolist() == [2, 1]
    best, _ = ledger.regret(0, [2, 1], arrived, asked_ms=arrived - 1)
    assert best == pytest.approx(sigmoid(2) + sigmoid(1))
    assert ledger.oracle(0, arrived).tolist() == [3, 2]


def test_a_feeds_click_on_an_item_does_not_depend_on_where_the_page_put_it():
    """Two rows serving the same items on feed n in another order draw the same click for each item."""
    world = tiny_world()
    for seed in range(20):
        clicks = []
        for order in ([0, 1, 2], [2, 0, 1]):
            ledger = Ledger(world, start_ms=START, limit=3)
            drawn = record(ledger, 0, [Shown(i, "personal") for i in order], START, np.random.default_rng([seed, 1]))
            clicks.append(dict(zip(order, drawn, strict=True)))
        assert clicks[0] == clicks[1]


def test_clicks_follow_the_true_probability():
    ledger = Ledger(tiny_world(), start_ms=START, limit=3)
    rng = np.random.default_rng(1)
    for _ in range(4_000):
        ledger.shown.clear()
        record(ledger, 0, [Shown(0, "personal"), Shown(2, "personal")], START, rng)
    r = ledger.result
    assert r.ctr == pytest.approx((sigmoid(0) + sigmoid(2)) / 2, abs=0.02)


def test_reported_events_are_valid_and_carry_source_and_variant():
    from recstream.contracts.events import decode
    from recstream.sim.simulator import _events

    world = tiny_world()
    page = [Shown(0, "explore", "exp:a"), Shown(1, "personal")]
    events = _events("u000000", world, page, [True, False], START, "t-")
    valid, rejected = decode(orjson.dumps(events), "event", START)
    assert not rejected
    assert [(e.type, e.item_id, e.context["source"], e.variant) for e in valid] == [
        ("view", "i000000", "explore", "exp:a"),
        ("click", "i000000", "explore", "exp:a"),
        ("view", "i000001", "personal", None),
    ]
    assert len({e.event_id for e in valid}) == 3
    assert all("feed" not in e.context for e in valid), "no session named: the page had none"


def test_reported_events_name_the_pages_scroll_session_so_the_reader_stamps_the_served_features():
    from recstream.contracts.events import decode
    from recstream.sim.simulator import _events

    page = [Shown(0, "personal"), Shown(1, "popular")]
    events = _events("u000000", tiny_world(), page, [False, True], START, "t-", session="0123456789abcdef")
    valid, rejected = decode(orjson.dumps(events), "event", START)
    assert not rejected
    assert [(e.type, e.context) for e in valid] == [
        ("view", {"source": "personal", "feed": "0123456789abcdef"}),
        ("view", {"source": "popular", "feed": "0123456789abcdef"}),
        ("click", {"source": "popular", "feed": "0123456789abcdef"}),
    ]


@pytest.mark.parametrize(("ranked", "feeds", "share"), [(0, 0, 0.0), (0, 4, 0.0), (3, 4, 0.75), (4, 4, 1.0)])
def test_the_ranked_share_is_the_share_of_feeds_the_reader_ranked(ranked, feeds, share):
    assert SimResult(feeds=feeds, ranked=ranked).ranked_share == share


def test_an_empty_page_counts_its_regret_against_the_variant_the_reader_named():
    """The variant was read from a page's items only, so an arm that served empty pages showed less regret than it
    had (its empty pages counted overall and in no arm)."""
    ledger = Ledger(tiny_world(), start_ms=START, limit=2)
    rng = np.random.default_rng(0)
    record(ledger, 0, [Shown(0, "personal", "exp:a")], START + HOUR_MS, rng, "exp:a")
    record(ledger, 0, [], START + HOUR_MS, rng, "exp:a")
    r = ledger.finish(START + HOUR_MS)
    assert r.feeds == 2 and r.by_variant["exp:a"].feeds == 2
    assert r.by_variant["exp:a"].regret == pytest.approx(r.regret) and r.by_variant["exp:a"].impressions == 1


def test_two_runs_of_one_seed_report_other_event_ids():
    """Feed n of a run had ids sim<seed>-<n>-…: a demo run again within the workers' de-duplication window (5
    minutes) had every view and click dropped as a resend of the first run's."""
    from recstream.sim.simulator import event_prefix

    first, second = (event_prefix(7, start, 17) for start in (START, START + 60_000))
    assert first != second and event_prefix(7, START, 1) != event_prefix(7, START, 11)


@pytest.mark.parametrize(
    ("answers", "posts", "raises"),
    [([503, 202], 2, False), ([429, 503, 202], 3, False), ([503, 503, 503], 3, True), ([400], 1, True)],
    ids=["503 then 202", "429, 503, 202", "three 503s", "400 not resent"],
)
async def test_a_refused_events_post_is_sent_again_with_the_same_body(answers, posts, raises):
    """A 503 or a 429 lost the feed's views and clicks (README: send the same body again); up to three attempts."""
    bodies: list[bytes] = []
    statuses = iter(answers)

    async def events(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=next(statuses), headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_post("/v1/events", events)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        if raises:
            with pytest.raises(aiohttp.ClientResponseError):
                await post_events(http, url, b'[{"x": 1}]')
        else:
            await post_events(http, url, b'[{"x": 1}]')
    assert bodies == [b'[{"x": 1}]'] * posts


@pytest.mark.parametrize(
    ("events_status", "feeds", "failed"), [(202, 1, 0), (400, 0, 1)], ids=["events accepted", "events refused"]
)
async def test_a_feed_whose_events_post_fails_counts_once_as_failed_and_not_as_a_feed(events_status, feeds, failed):
    """A page scored and then lost at its events POST counted as a feed and as a failure: bench/policies.py's
    validity check takes feeds + failed as the requests and failed + degraded as the failures, so it counted that
    request twice. Now each request is either a feed (scored, counted) or a failure."""
    page = {"items": [{"item_id": "i000000", "source": "personal"}, {"item_id": "i000002", "source": "popular"}],
            "degraded": True, "ranked": True, "session": "0123456789abcdef"}  # fmt: skip

    async def feed(request: web.Request) -> web.Response:
        return web.json_response(page)

    async def events(request: web.Request) -> web.Response:
        return web.Response(status=events_status)

    app = web.Application()
    app.router.add_get("/v1/feed/{user}", feed)
    app.router.add_post("/v1/events", events)
    world = tiny_world()
    ledger, in_flight = Ledger(world, start_ms=START, limit=2), asyncio.Semaphore(1)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        await in_flight.acquire()
        await Simulator(world, url, load_settings())._one_feed(http, ledger, 0, 0, in_flight)
    r = ledger.result
    assert (r.feeds, r.failed, r.degraded, r.ranked) == (feeds, failed, feeds, feeds)
    assert r.totals.impressions == 2 * feeds and r.by_source["personal"].impressions == feeds
    assert r.events_posted == r.totals.impressions + r.totals.clicks  # a view per item, a click per click
    assert (r.oracle_value > 0) == bool(feeds)  # its regret counted only with it
    assert not in_flight.locked()
