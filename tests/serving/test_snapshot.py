"""The reader's snapshot of the new-item pool (real Redis): the explore shortlist a feed's Thompson draw runs over."""

from __future__ import annotations

import asyncio
import heapq
import random
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from recstream.serving import snapshot as snapshot_module
from recstream.serving.redis_client import RedisClient
from recstream.serving.service import FeedService
from recstream.serving.snapshot import Categories, Pool, Snapshot, SnapshotLoader

from recstream.contracts.blend_settings import RANKER_STALE_MIN_S
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from tests.serving.conftest import reader_client

LIMIT = 20
READ = 3 * LIMIT
STAR = "star"
"""A pool item clicked on 45 of its 50 views: any Thompson draw puts it far above unviewed items."""


async def pool_of(settings: Settings, n: int, reloads: int = 2, others_views: int = 0) -> list[Pool]:
    """The pool after each of ``reloads`` reloads (the first asks for the items' categories, the next have them)
    of ``n − 1`` items viewed ``others_views`` times without a click plus :data:`STAR` (the newest), read up to
    :data:`READ`, shortlisted at :data:`LIMIT`."""
    settings = settings.replace(pool_explore_max=LIMIT, pool_read_max=READ)
    k = Keys.of(settings)
    client = redis.Redis.from_url(settings.redis.url)
    items = [f"new{i}" for i in range(n - 1)]
    client.zadd(k("pool"), {item: 1_000 + i for i, item in enumerate([*items, STAR])})
    client.hset(k("views"), mapping={STAR: 50, **dict.fromkeys(items, others_views)})
    client.hset(k("clicks"), STAR, 45)
    for item in [*items, STAR]:
        client.hset(k.item(item), mapping={"categories": "news", "created_ts": 1_000})
    client.close()
    snapshot = Snapshot()
    feeds = RedisClient(settings.redis.url, timeout_s=5.0, connections=1)
    loader = SnapshotLoader(feeds, settings, snapshot)
    pools = []
    for _ in range(reloads):
        await loader.refresh()
        pools.append(snapshot.pool)
    await feeds.close()
    return pools[1:]


@pytest.mark.integration  # a real Redis
@pytest.mark.parametrize("n", [LIMIT - 1, LIMIT])
async def test_a_pool_within_the_limit_is_shortlisted_whole(isolated_settings: Settings, n: int) -> None:
    (pool,) = await pool_of(isolated_settings, n)
    assert sorted(pool.items) == sorted(pool.created) and len(pool.items) == n
    assert len(pool.alpha) == len(pool.beta) == n and sorted(pool.by_category["news"].tolist()) == list(range(n))


@pytest.mark.integration  # a real Redis
async def test_past_the_limit_feeds_draw_over_a_shortlist_and_the_posterior_decides_who_is_on_it(
    isolated_settings: Settings,
) -> None:
    (pool,) = await pool_of(isolated_settings, LIMIT + 1)
    assert len(pool.items) == len(pool.alpha) == len(pool.beta) == LIMIT and len(pool.created) == LIMIT + 1
    assert [pool.items[k] for k in pool.by_category["news"].tolist()] == list(pool.items)
    assert len(pool.fresh["news"]) == LIMIT + 1 and len(pool.ctr_logits) == LIMIT + 1, "fresh lists keep every item"
    assert pool.alpha[pool.index[STAR]] > pool.alpha.min(), "the shortlist's arrays follow its items"


@pytest.mark.integration  # a real Redis
async def test_an_unviewed_items_prior_is_the_pools_own_ctr(isolated_settings: Settings) -> None:
    """Empirical Bayes (models/bandit.BetaPrior.of_pool): STAR's 45 clicks in 50 views are the pool's counters, so an
    unviewed item's Beta prior has their smoothed CTR as its mean, not the global CTR (no prior stored: the default),
    and STAR's posterior adds its own counters to the same prior."""
    (pool,) = await pool_of(isolated_settings, 5)
    p, m = isolated_settings.model.ctr_default, isolated_settings.model.ctr_prior_mass
    mean, n = (45 + m * p) / (50 + m), isolated_settings.pool.bandit_prior_mass
    unviewed = pool.index["new0"]
    assert pool.alpha[unviewed] == pytest.approx(mean * n) and pool.beta[unviewed] == pytest.approx((1 - mean) * n)
    star = pool.index[STAR]
    assert (pool.alpha[star], pool.beta[star]) == pytest.approx((mean * n + 45, (1 - mean) * n + 5))


@pytest.mark.integration  # a real Redis
async def test_an_item_users_click_stays_on_the_shortlist_and_the_others_take_turns(
    isolated_settings: Settings,
) -> None:
    """READ items: a shortlist drawn uniformly would miss STAR in 2 reloads of 3; the posterior keeps it. The others
    were viewed 5 times each without a click, so the pool's own CTR, the prior's mean, is ~0.13 (models/bandit.of_pool);
    were they all unviewed, STAR alone would set it at ~0.66, and an unviewed item's prior, that high and that broad,
    would push STAR off about one reload in 90 (a Monte Carlo of the two priors: 0 in 400,000 draws here)."""
    pools = await pool_of(isolated_settings, READ, reloads=9, others_views=5)
    assert all(STAR in pool.index for pool in pools)
    assert len(set().union(*(pool.items for pool in pools))) > 2 * LIMIT, "unviewed items rotate through it"


@pytest.mark.integration  # a real Redis
@pytest.mark.parametrize("n", [READ - 1, READ, READ + 1])
async def test_a_reload_reads_the_newest_pool_items_up_to_the_limit(isolated_settings: Settings, n: int) -> None:
    (pool,) = await pool_of(isolated_settings, n)
    newest = [*[f"new{i}" for i in range(n - 1)][-(READ - 1) :], STAR]
    assert sorted(pool.created) == sorted(newest) and len(pool.fresh["news"]) == min(n, READ)


class HeldAfterFirstReply:
    """The real client, but the first reload to get a reply waits at its next round trip until ``go`` is set."""

    def __init__(self, client: RedisClient) -> None:
        self.client, self.held, self.go = client, asyncio.Event(), asyncio.Event()
        self.first: asyncio.Task | None = None

    async def execute(self, *commands: Any) -> list[Any]:
        me = asyncio.current_task()
        if me is self.first:
            self.held.set()
            await self.go.wait()
        replies = await self.client.execute(*commands)
        self.first = self.first or me
        return replies


@pytest.mark.integration  # a real Redis
async def test_a_reload_forced_while_another_awaits_redis_is_not_undone_by_it(isolated_settings: Settings) -> None:
    """The background reload read the unavailable set before the item left; a reload forced after that must win."""
    k = Keys.of(isolated_settings)
    client = redis.Redis.from_url(isolated_settings.redis.url)
    client.zadd(k("pool"), {"gone": 1_000, "kept": 1_001})
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=5.0, connections=2)
    held = HeldAfterFirstReply(feeds)
    snapshot = Snapshot()
    loader = SnapshotLoader(held, isolated_settings, snapshot)  # type: ignore[arg-type]
    background = asyncio.create_task(loader.refresh())
    await held.held.wait()
    client.sadd(k("unavailable"), "gone")
    forced = asyncio.create_task(loader.refresh(force_popular=True))
    await asyncio.sleep(0.2)
    held.go.set()
    await asyncio.wait_for(asyncio.gather(background, forced), 10)
    assert snapshot.unavailable == {"gone"} and list(snapshot.pool.created) == ["kept"]
    client.close()
    await feeds.close()


def test_feature_row_lookups_are_counted_by_whether_the_items_categories_were_cached() -> None:
    """What the ranker scores without categories (a cold cache after a restart) is visible, and the unknown items
    are named for the next reload."""
    categories = Categories()
    categories.put("cached", ("news",), now=0.0, created=1_000)
    before = {label: _feature_rows(label) for label in ("known", "unknown")}
    found = categories.entries(["cached", "new1", "new2"], now=1.0)
    assert [entry is not None for entry in found] == [True, False, False]
    assert _feature_rows("known") - before["known"] == 1
    assert _feature_rows("unknown") - before["unknown"] == 2
    assert categories.wanted == {"new1", "new2"}


T_STANDS = 1_700_000_000_000


@pytest.mark.parametrize("standing", [False, True])
@pytest.mark.parametrize("lookup", ["entry", "entries", "stale"])
def test_while_the_clock_stands_an_item_without_a_first_event_is_read_again_within_a_second(
    standing: bool, lookup: str
) -> None:
    """An item cached before its first event (announced, then viewed) would read new in events for a minute: while
    the clock stands it is due again once FIRSTS_MAX_AGE_S old (not at it, past it), if it was created at the
    standing instant (only those are aged in events); one with a first event, one created before the instant, or any
    item while the clock moves, once CATEGORY_MAX_AGE_S old. Every lookup names the same items."""
    categories = Categories()
    categories.put("unseen", ("news",), now=0.0, created=T_STANDS)
    categories.put("seen", ("news",), now=0.0, created=T_STANDS, first=3)
    categories.put("older", ("news",), now=0.0, created=T_STANDS - 1)
    categories.standing(T_STANDS if standing else None)

    def due(now: float) -> set[str]:
        categories.wanted.clear()
        if lookup == "stale":
            return set(categories.stale(["unseen", "seen", "older"], now))
        for item in ("unseen", "seen", "older"):
            categories.entries([item], now) if lookup == "entries" else categories.entry(item, now)
        return set(categories.wanted)

    short = snapshot_module.FIRSTS_MAX_AGE_S
    assert due(short) == set()
    assert due(short + 0.01) == ({"unseen"} if standing else set())
    assert due(snapshot_module.CATEGORY_MAX_AGE_S) == ({"unseen"} if standing else set())
    assert due(snapshot_module.CATEGORY_MAX_AGE_S + 0.01) == {"unseen", "seen", "older"}


def _feature_rows(label: str) -> float:
    return REGISTRY.get_sample_value("recstream_reader_feature_rows_total", {"categories": label}) or 0.0


@pytest.mark.integration  # a real Redis
@pytest.mark.parametrize("prior", ["10.07", "not a number"])
async def test_a_stored_prior_outside_a_ctr_still_loads_the_pool(isolated_settings: Settings, prior: str) -> None:
    """The workers' prior is clicks per view, above 1 where clicks outnumber views (a log of clicks only, as an
    import of (user, item, ts) rows is), and a bad key may hold anything: the pool still loads with a proper
    Beta prior (the loader once raised on either, and its background task died)."""
    k = Keys.of(isolated_settings)
    client = redis.Redis.from_url(isolated_settings.redis.url)
    client.zadd(k("pool"), {"new": 1_000})
    client.set(k("prior"), prior)
    client.close()
    snapshot = Snapshot()
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=5.0, connections=1)
    await SnapshotLoader(feeds, isolated_settings, snapshot).refresh()
    await feeds.close()
    assert list(snapshot.pool.items) == ["new"]
    assert 0 < snapshot.pool.alpha[0] < isolated_settings.pool.bandit_prior_mass and snapshot.pool.beta[0] > 0


@pytest.mark.integration  # a real Redis
async def test_the_background_loader_outlives_a_reload_that_fails_on_what_it_read(isolated_settings: Settings) -> None:
    """An error other than Redis's in one reload is counted and the next tick reloads again: a dead loader would
    leave the reader on its last copy for good."""
    settings = isolated_settings.replace(pool_cache_s=0.05)
    feeds = RedisClient(settings.redis.url, timeout_s=5.0, connections=1)
    loader = SnapshotLoader(feeds, settings, Snapshot())
    reload, calls = loader.refresh, []

    async def fails_once(**kwargs: Any) -> None:
        calls.append(None)
        if len(calls) == 1:
            raise ValueError("a value the loader cannot read")
        await reload(**kwargs)

    loader.refresh = fails_once  # type: ignore[method-assign]
    task = asyncio.create_task(loader.run())
    for _ in range(100):
        await asyncio.sleep(0.05)
        if loader.healthy:
            break
    assert not task.done() and loader.healthy and len(calls) >= 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await feeds.close()


@pytest.mark.integration  # a real Redis
async def test_the_pool_names_the_shortlisted_items_whose_categories_are_not_loaded_yet(
    isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload loads the categories of at most CATEGORY_BATCH items (1 here), its pool's first: the others are named
    for a feed to hold back from a user with a refused category (serving/feed.explore), until the next reload."""
    monkeypatch.setattr(snapshot_module, "CATEGORY_BATCH", 1)
    settings = isolated_settings.replace(pool_explore_max=LIMIT, pool_read_max=READ)
    client = redis.Redis.from_url(settings.redis.url)
    client.zadd(Keys.of(settings)("pool"), {"new0": 1_000, "new1": 1_001})
    client.close()
    snapshot = Snapshot()
    feeds = RedisClient(settings.redis.url, timeout_s=5.0, connections=1)
    loader = SnapshotLoader(feeds, settings, snapshot)
    named = []
    for _ in range(3):
        await loader.refresh()
        named.append([snapshot.pool.items[k] for k in snapshot.pool.uncategorized.tolist()])
    await feeds.close()
    assert [len(n) for n in named] == [1, 0, 0]


@pytest.mark.integration  # a real Redis
@pytest.mark.parametrize("created_ts", ["1.7e12", "soon", "inf"])
async def test_an_item_with_a_malformed_creation_time_does_not_stop_the_reloads(
    isolated_settings: Settings, created_ts: str
) -> None:
    """``int()`` of a stored "1.7e12" raised before the item was cached, so every later reload asked for it again and
    failed again: the unavailable set froze (a withdrawn item stayed on every feed) while the ranker, refreshed first,
    still looked fresh. A category stored twice is cached once (it weighed twice in a user's taste)."""
    k = Keys.of(isolated_settings)
    client = redis.Redis.from_url(isolated_settings.redis.url)
    client.zadd(k("pool"), {"bad": 1_000, "kept": 1_001})
    client.hset(k.item("bad"), mapping={"categories": "news,news", "created_ts": created_ts})  # stored before dedup
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=5.0, connections=1)
    snapshot = Snapshot()
    loader = SnapshotLoader(feeds, isolated_settings, snapshot)
    await loader.refresh()
    client.sadd(k("unavailable"), "kept")
    await loader.refresh()
    client.close()
    await feeds.close()
    expected = 1_700_000_000_000 if created_ts == "1.7e12" else None
    assert snapshot.unavailable == {"kept"} and list(snapshot.pool.created) == ["bad"]
    assert snapshot.categories.entry("bad", 0.0)[::2] == (("news",), expected)  # type: ignore[index]


STANDING = 5  # pool_graduate_standing_events of the test below


@pytest.mark.integration  # a real Redis
@pytest.mark.parametrize(("at_clock", "standing"), [(STANDING - 1, False), (STANDING, True), (STANDING + 1, True)])
async def test_a_reload_reads_the_partitions_counts_while_the_clock_stands(
    isolated_settings: Settings, at_clock: int, standing: bool
) -> None:
    """Once ``pool_graduate_standing_events`` events were applied at the clock's instant (the limit, not one fewer),
    the snapshot holds the events applied, the sum of the partitions' counts (one that is no count: 0), the now of
    item ages in events; and
    each item read holds its first event, and one never in an event (a bad stored value counts as none) holds none."""
    settings = isolated_settings.replace(pool_graduate_standing_events=STANDING)
    k = Keys.of(settings)
    client = redis.Redis.from_url(settings.redis.url)
    client.mset({k("clock"): 1_000, k("clock:events"): at_clock})
    client.hset(k("counted"), mapping={"0": 40, "2": 7, "3": "x"})
    client.zadd(k("pool"), {"seen": 1_000, "announced": 1_000})
    for item in ("seen", "announced"):
        client.hset(k.item(item), mapping={"categories": "news", "created_ts": 1_000})
    client.hset(k("first"), mapping={"seen": 12, "announced": "x"})
    client.close()
    feeds = RedisClient(settings.redis.url, timeout_s=5.0, connections=1)
    snapshot = Snapshot()
    await SnapshotLoader(feeds, settings, snapshot).refresh()
    await feeds.close()
    assert snapshot.counted == (47 if standing else None)
    assert snapshot.categories.first("seen") == 12 and snapshot.categories.first("announced") is None


class FailsOnSegments:
    """A Redis client whose segment reads (``call``) fail once ``failing`` is set, after ``entered`` is set."""

    def __init__(self, client: RedisClient) -> None:
        self.client, self.failing = client, False
        self.entered = asyncio.Event()

    async def execute(self, *commands: tuple) -> list:
        return await self.client.execute(*commands)

    async def call(self, *command: Any) -> Any:
        self.entered.set()
        if self.failing:
            raise redis.exceptions.ConnectionError("the segment read failed")
        await asyncio.sleep(0.2)
        return await self.client.call(*command)


@pytest.mark.integration  # a real Redis
async def test_a_reload_is_swapped_in_whole_and_one_that_fails_half_way_changes_nothing(
    isolated_settings: Settings,
) -> None:
    """The loader set the new global list and CTR floor before it awaited the segment lists: while they were read a
    feed saw the new global list beside the old segments, and a segment read that failed left that mix until a later
    reload succeeded. The popular lists are swapped in whole; the ranker's weights, read before, stay fresh."""
    k = Keys.of(isolated_settings)
    client = redis.Redis.from_url(isolated_settings.redis.url)
    client.zadd(k.rank(), {"old": 0.5})
    client.zadd(k.rank("s"), {"old": 0.5})
    client.sadd(k("segments"), "s")
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=5.0, connections=1)
    slow = FailsOnSegments(feeds)
    snapshot = Snapshot()
    loader = SnapshotLoader(slow, isolated_settings, snapshot)  # type: ignore[arg-type]
    await loader.refresh(force_popular=True)
    first = snapshot.ranker.refreshed_at
    client.delete(k.rank(), k.rank("s"))
    client.zadd(k.rank(), {"new": 0.5})
    client.zadd(k.rank("s"), {"new": 0.5})
    slow.entered.clear()
    reload = asyncio.create_task(loader.refresh(force_popular=True))
    await slow.entered.wait()
    mid = (snapshot.overall, snapshot.segments["s"].warm)
    await reload
    after, good = (snapshot.overall, snapshot.segments["s"].warm), snapshot.ranker.refreshed_at
    slow.failing = True
    client.zadd(k.rank(), {"newer": 0.9})
    with pytest.raises(redis.exceptions.ConnectionError):
        await loader.refresh(force_popular=True)
    client.close()
    await feeds.close()
    assert mid == (("old",), ("old",)) and after == (("new",), ("new",))
    assert first is not None and good is not None and good > first
    assert snapshot.overall == ("new",) and snapshot.segments["s"].warm == ("new",)  # as the last good reload left them
    assert snapshot.ranker.refreshed_at > good  # type: ignore[operator]


def test_a_healthy_loader_s_weights_never_age_past_the_least_staleness_the_settings_allow() -> None:
    """Two reloads of up to the background timeout each, the refresh period between them: the settings' floor on
    ``ranker_stale_s`` must cover it, or a reader whose every reload succeeds falls back to the fixed blend."""
    worst = 2 * snapshot_module.BACKGROUND_TIMEOUT_S + snapshot_module.RANKER_REFRESH_S
    assert worst <= RANKER_STALE_MIN_S


def test_the_categories_known_are_those_cached_items_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    """``known`` kept every tag an item ever carried, evicted or replaced: it grew past the cache's bound under
    catalogue churn, and ``names()`` said a category some cached item carries when none did."""
    monkeypatch.setattr(snapshot_module, "CATEGORY_CACHE_MAX", 3)
    categories = Categories()
    for k in range(10):
        categories.put(f"i{k}", (f"tag{k}", "shared"), now=0.0)
    assert dict(categories.known) == {"tag7": 1, "tag8": 1, "tag9": 1, "shared": 3}
    assert not categories.names("tag0") and categories.names("tag9")
    categories.put("i9", ("comedy",), now=1.0)  # moved: its old tag goes with it
    assert not categories.names("tag9") and categories.names("comedy") and categories.known["shared"] == 2


@pytest.mark.integration  # a real Redis and the reader app
async def test_stored_names_no_id_can_be_and_unreadable_totals_leave_every_route_answering(
    isolated_settings: Settings,
) -> None:
    """Bytes that are not UTF-8 where the workers store ids, categories and the model version (written by something
    else) reached the answers and failed their JSON encoding: every feed, /readyz and /metrics answered 500; they now
    read as absent. Totals and a clock that are not integers made /v1/stats answer 500; they now read as the number
    they spell (1.5: 1) or, spelling none, as absent."""
    k, bad = Keys.of(isolated_settings), b"\xff\xfe\x80"
    client = redis.Redis.from_url(isolated_settings.redis.url)
    client.set(k("model:current"), bad)
    client.zadd(k.rank(), {bad: 0.9, "good": 0.5})
    client.zadd(k("pool"), {bad: 1_000, "new1": 1_001})
    client.hset(k.item("good"), mapping={"categories": b"news,\xff\xfe"})
    client.set(k("clock"), "1.5")
    client.hset(k("totals"), mapping={"views": "abc", "clicks": "2"})
    client.close()
    async with reader_client(isolated_settings) as reader:
        page = await reader.get("/v1/feed/u1", params={"limit": 5})
        assert page.status_code == 200, page.text
        assert {i["item_id"] for i in page.json()["items"]} == {"good", "new1"}
        assert [i["categories"] for i in page.json()["items"] if i["item_id"] == "good"] == [["news"]]
        assert page.json()["model_version"] is None
        ready = await reader.get("/readyz")
        assert ready.status_code == 503 and ready.json()["model_version"] is None, "as without a model pointer"
        assert (await reader.get("/metrics")).status_code == 200
        stats = await reader.get("/v1/stats")
        assert stats.status_code == 200, stats.text


@pytest.mark.integration  # a real Redis
async def test_a_reader_whose_first_load_succeeded_is_healthy_before_its_background_loader_runs(
    isolated_settings: Settings,
) -> None:
    """The start-up load did not mark the loader healthy: /v1/stats said ``redis: false`` until the background
    loader's first reload ended, on a loaded machine seconds after the reader answered feeds."""
    service = FeedService(isolated_settings)
    await service.start()  # the background loader is scheduled, not run: nothing was awaited since
    try:
        assert service.loader.healthy and service.snapshot.loaded
    finally:
        await service.close()


def _tagged_merge(pool: Pool, categories: list[str]) -> list[tuple[int, str, str]]:
    """Independently: every (−created_ts, item, category) of the categories, merged by heapq as fresh() merged."""
    lists = [[(neg, item, c) for neg, item in pool.fresh.get(c, ())] for c in categories]
    return list(heapq.merge(*lists))


@pytest.mark.parametrize(
    "size", [snapshot_module.NEWEST_HEAD - 1, snapshot_module.NEWEST_HEAD, snapshot_module.NEWEST_HEAD + 1, 200]
)
def test_the_newest_pool_items_of_some_categories_are_their_merge_whatever_the_head(size: int) -> None:
    """Pool.newest's head (merged once, kept) and its lazy rest are the categories' k-way merge, row for row: items in
    two categories (twice, ordered by category), ties of creation time (by item), a category with no pool items."""
    rng = random.Random(size)
    fresh: dict[str, list[tuple[int, str]]] = {c: [] for c in ("film", "kids", "news")}
    for k in range(size * 2):
        for category in rng.sample(sorted(fresh), rng.choice([1, 1, 2, 3])):
            fresh[category].append((-rng.randrange(0, size), f"n{k}"))  # few creation times: many ties
    pool = Pool(fresh={c: tuple(sorted(rows)) for c, rows in fresh.items()})
    for categories in (["kids", "film", "news"], ["news"], ["film", "music"], ["music"], [], ["news", "film"]):
        expected = _tagged_merge(pool, categories)
        for _ in range(2):  # made, then from the pool's own copy
            head, rest = pool.newest(categories)
            assert [*head, *rest] == expected, categories
            assert len(head) == min(snapshot_module.NEWEST_HEAD, len(expected))


@pytest.mark.parametrize("kept", [snapshot_module.NEWEST_MAX - 1, snapshot_module.NEWEST_MAX])
def test_the_newest_heads_a_pool_keeps_start_over_past_their_bound(kept: int) -> None:
    pool = Pool(fresh={"news": ((-2, "n2"), (-1, "n1"))})
    for k in range(kept):
        pool.newest([f"c{k}"])
    head, _ = pool.newest(["news"])  # the bound's own set: limit − 1 kept → limit; at the limit → starts over
    assert head == ((-2, "n2", "news"), (-1, "n1", "news"))
    assert len(pool._newest) == (kept + 1 if kept < snapshot_module.NEWEST_MAX else 1)
