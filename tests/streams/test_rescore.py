"""A moved prior rescores the catalogue in bounded passes (apply_batch.lua, step 4), never the whole of it in one
batch, and a finished pass leaves every score f(final counters, final prior), as one whole rescore did. The
per-segment scores are rescored about twice a second, for a bounded share of the items waiting (step 4b). An idle
processor finishes what its batches left undone: a rescore pass, items waiting for their segment scores, a fold-in
that failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import redis
from prometheus_client import REGISTRY
from recstream.models.ctr import smoothed_ctr
from recstream.streams.processor import BatchProcessor
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream.contracts.events import Event, ItemEvent, encode
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message
from recstream.store.state import Effect, StateStore
from tests.conftest import wait_until
from tests.streams.scenario import applied_events, no_dead_letters, publish

pytestmark = pytest.mark.integration  # real Redis (and Kafka): out of a `-m 'not integration'` run

T0 = 1_700_000_000_000
BUDGET = 100  # items a batch rescores of a pass, about (HSCAN's COUNT)
USERS = {"u1": "a", "u2": "b"}  # user → segment


def message(topic: str, offset: int, events: list[tuple[str, str, str]]) -> Message:
    value = orjson.dumps([{"type": t, "user_id": u, "item_id": i, "ts": T0 + offset} for t, u, i in events])
    return Message(topic, 0, offset, value, T0 + offset)


@asynccontextmanager
async def batches(settings: Settings) -> AsyncIterator[tuple[redis.Redis, AsyncRedis, BatchProcessor]]:
    """A batch processor with a rescore budget of BUDGET items on the test's Redis (both users in their segments),
    and a synchronous client to read what it wrote; both closed after. Unless ``settings`` say otherwise, every
    batch ranks segments (``segment_rank_s`` 0), so what stays stale is the prior's pass and the budget's rest."""
    sync = redis.Redis.from_url(settings.redis.url)
    sync.hset("rs:user:seg", mapping=USERS)
    client = AsyncRedis.from_url(settings.redis.url)
    processor = BatchProcessor("event", StateStore(client, settings, rescore_items=BUDGET), settings, no_dead_letters)
    try:
        yield sync, client, processor
    finally:
        await client.aclose()
        sync.close()


def stale_scores(client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Per ranking, how many items' scores are not f(their counters, the stored prior) (models.ctr.smoothed_ctr)."""
    m = settings.model.ctr_prior_mass
    prior = float(client.get("rs:prior"))
    views = {k.decode(): int(v) for k, v in client.hgetall("rs:views").items()}
    clicks = {k.decode(): int(v) for k, v in client.hgetall("rs:clicks").items()}
    glob = {i: float(smoothed_ctr(clicks.get(i, 0), v, prior, m)) for i, v in views.items()}
    stale = {"rank": sum(client.zscore("rs:rank", i) != pytest.approx(g, rel=1e-12) for i, g in glob.items())}
    for segment in set(USERS.values()):
        sv = {k.decode(): int(v) for k, v in client.hgetall(f"rs:seg:{segment}:views").items()}
        sc = {k.decode(): int(v) for k, v in client.hgetall(f"rs:seg:{segment}:clicks").items()}
        want = {i: float(smoothed_ctr(sc.get(i, 0), v, glob[i], m)) for i, v in sv.items()}
        stale[segment] = sum(
            client.zscore(f"rs:rank:{segment}", i) != pytest.approx(w, rel=1e-12) for i, w in want.items()
        )
    return stale


async def test_a_moved_prior_rescores_a_bounded_share_per_batch_and_a_finished_pass_matches_a_whole_rescore(
    isolated_settings,
):
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=0)  # ranked at once
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, processor):
        catalogue = [(("view", u, f"i{n}")) for n in range(1_000) for u in USERS]  # 1,000 items, both segments
        first = await processor.process([message(topic, 0, catalogue)])
        assert first.full_rescore  # the first prior: every item is touched by this batch anyway
        assert first.segments_pending == 0, "a call ranks the segment scores of every item its batch touched"
        assert await processor.finish_pending() > 0 and not processor.pending
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}

        clicks = await processor.process([message(topic, 1, [("click", "u1", "i0")] * 200)])  # the CTR moves
        assert clicks.full_rescore and clicks.rescore_pending and sync.exists("rs:rescore")
        stale = stale_scores(sync, settings)
        assert 1_000 - 2 * BUDGET <= stale["rank"] < 1_000, "one batch rescored a bounded share, not all, not none"
        # the items the pass rescored beyond the budget of segment scores wait, with their segment scores stale
        assert stale["a"] == stale["b"] == stale["rank"] + clicks.segments_pending
        assert sync.scard("rs:segments:rescore") == clicks.segments_pending

        calls = await processor.finish_pending()
        assert calls >= 1_000 // (2 * BUDGET) and not processor.pending and not sync.exists("rs:rescore")
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}

        sync.set("rs:prior", "-1")  # the same counters rescored whole in one batch give the same scores
        whole = StateStore(client, settings, rescore_items=2**31 - 1)
        done = await whole.apply(Effect())
        assert done.full_rescore and not done.rescore_pending
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}


async def test_a_processor_that_starts_finishes_what_the_worker_before_it_left(isolated_settings):
    """A worker stopped between a batch that left items waiting for their segment scores and its next idle tick: the
    one that starts knew nothing of them until a script answered, so with no traffic they waited for good. Its first
    idle tick now asks with an empty call, and one with nothing left asks once."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=60)
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, before):
        await before.process([message(topic, 0, [("view", "u1", "i0")])])  # the first call ranks (none before it)
        await before.process([message(topic, 1, [("view", u, f"i{n}") for n in range(10) for u in USERS])])
        assert sync.scard("rs:segments:rescore") == 10, "the second call, within segment_rank_s, left them"
        started = BatchProcessor("event", StateStore(client, settings, rescore_items=BUDGET), settings, no_dead_letters)
        assert started.pending and await started.finish_pending() >= 1 and not started.pending
        assert sync.scard("rs:segments:rescore") == 0 and stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
        again = BatchProcessor("event", StateStore(client, settings, rescore_items=BUDGET), settings, no_dead_letters)
        assert await again.finish_pending() == 1 and await again.finish_pending() == 0


async def test_a_catalogue_within_the_budget_is_rescored_in_the_batch_that_moved_the_prior(isolated_settings):
    """HSCAN returns a small hash (listpack-encoded, at most 128 fields here) whole: no pass outlives its batch."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=0)  # ranked at once
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, _client, processor):
        await processor.process([message(topic, 0, [("view", "u1", f"i{n}") for n in range(BUDGET)])])
        moved = await processor.process([message(topic, 1, [("click", "u2", "i0")] * 20)])
        assert moved.full_rescore and not moved.rescore_pending and await processor.finish_pending() == 0
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}


async def test_an_idle_worker_finishes_the_pass_its_last_batch_left(isolated_settings, worker_factory):
    """3,000 items, then a batch of clicks that moves the prior, then nothing: the worker's idle timer ends the pass
    (about 1,000 items a batch, streams/app.py), so the rankings do not wait for the next event to be consistent."""
    settings = isolated_settings.replace(require_announced_items=False)
    sync = redis.Redis.from_url(settings.redis.url)
    sync.hset("rs:user:seg", mapping=USERS)
    worker_factory(settings)
    views = [Event(type="view", user_id=u, item_id=f"i{n}", ts=T0 + n) for n in range(3_000) for u in USERS]
    await publish(settings, events=views, batch_events=10_000)
    wait_until(lambda: applied_events(sync, "rs") == 6_000 and not sync.exists("rs:rescore"), 120, "the catalogue")
    prior = sync.get("rs:prior")
    clicks = [Event(type="click", user_id="u1", item_id="i0", ts=T0 + 5_000)] * 300
    await publish(settings, events=clicks, batch_events=10_000)  # one message: one batch, then idle
    wait_until(lambda: applied_events(sync, "rs") == 6_300, 60, "the clicks")
    assert sync.get("rs:prior") != prior, "the clicks moved the prior"
    wait_until(lambda: not sync.exists("rs:rescore") and not sync.scard("rs:segments:rescore"), 30,
               "the idle worker to end the pass")  # fmt: skip
    assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
    sync.close()


@pytest.mark.parametrize("waiting", [BUDGET - 1, BUDGET, BUDGET + 1])
async def test_a_call_ranks_the_segment_scores_of_at_most_the_budget_of_waiting_items(isolated_settings, waiting):
    """Around the budget: a call that ranks segments takes at most BUDGET of the items waiting (SPOP), leaves the
    rest waiting and says how many; the next call ranks them, and every score is the formula's."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=60)
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, processor):
        processor.segments_ranked_at = float("inf")  # no batch of this test is due: they only list their items
        views = [("view", u, f"i{n}") for n in range(waiting) for u in USERS]
        listed = await processor.process([message(topic, 0, views)])
        assert listed.segments_pending == waiting and sync.zcard("rs:rank") == waiting
        assert sync.zcard("rs:rank:a") == sync.zcard("rs:rank:b") == 0, "a batch not due ranks no segment"
        store = StateStore(client, settings, rescore_items=BUDGET)
        ranked = await store.apply(Effect())
        assert ranked.segments_pending == max(0, waiting - BUDGET)
        assert sync.zcard("rs:rank:a") == sync.zcard("rs:rank:b") == min(waiting, BUDGET)
        assert (await store.apply(Effect())).segments_pending == 0
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}


async def test_segments_are_ranked_once_per_interval_and_an_idle_processor_ranks_the_rest(isolated_settings):
    """The first batch ranks segments; a batch within ``segment_rank_s`` after it only lists its items (the global
    ranking moves at once, the segment scores wait), one at or past the interval ranks them, and so does the idle
    processor. The interval is 60 s and the last ranking's time is set, so no step depends on how fast a batch is."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=60)
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, _client, processor):
        await processor.process([message(topic, 0, [("view", u, f"i{n}") for n in range(10) for u in USERS])])
        assert processor.segments_pending == 0 and stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
        ranked_at = processor.segments_ranked_at
        assert time.monotonic() - 60 < ranked_at <= time.monotonic(), "the first batch ranked segments"
        clicked = await processor.process([message(topic, 1, [("click", "u1", "i0")])])
        waiting = {m.decode() for m in sync.smembers("rs:segments:rescore")}
        assert "i0" in waiting and clicked.segments_pending == len(waiting), "within the interval: its items wait"
        assert processor.segments_ranked_at == ranked_at
        assert REGISTRY.get_sample_value("recstream_worker_segment_scores_waiting") == len(waiting)
        assert stale_scores(sync, settings)["rank"] == 0 and stale_scores(sync, settings)["a"] > 0
        due = {}
        for offset in (-1.0, 0.0, 1.0):  # the interval minus a second, the interval, plus a second
            processor.segments_ranked_at = time.monotonic() - 60 - offset
            due[offset] = processor.segments_due()
        assert due == {-1.0: False, 0.0: True, 1.0: True}
        processed = await processor.process([message(topic, 2, [("click", "u2", "i1")])])
        assert processed.segments_pending == 0 and stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
        await processor.process([message(topic, 3, [("click", "u2", "i2")])])
        assert processor.pending and await processor.finish_pending() == 1 and not processor.pending
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
        assert REGISTRY.get_sample_value("recstream_worker_segment_scores_waiting") == 0


async def test_an_item_made_unavailable_while_it_waits_leaves_every_segment_ranking(isolated_settings):
    """Listed, then hidden by the items topic before a call ranks segments: the call skips it (it is in no ranking
    any more, step 2 took it out of all of them) and ranks the others; nothing fails after the first write."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=60)
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, processor):
        processor.segments_ranked_at = float("inf")
        await processor.process([message(topic, 0, [("view", u, f"i{n}") for n in range(3) for u in USERS])])
        assert sync.scard("rs:segments:rescore") == 3 and sync.zcard("rs:rank:a") == 0
        hide = encode(ItemEvent(op="update", item_id="i1", ts=T0 + 1, available=False))
        items = BatchProcessor("item", StateStore(client, settings), settings, no_dead_letters)
        items.segments_ranked_at = float("inf")
        await items.process([Message(settings.kafka.items_topic, 0, 0, hide, T0 + 1)])
        assert sync.zscore("rs:rank", "i1") is None and sync.sismember("rs:segments:rescore", "i1")
        ranked = await StateStore(client, settings).apply(Effect())
        assert ranked.segments_pending == 0
        for segment in ("a", "b"):
            assert {m.decode() for m in sync.zrange(f"rs:rank:{segment}", 0, -1)} == {"i0", "i2"}


class OthersListing(StateStore):
    """A store whose every call first lists more items than a call takes, as busy workers sharing the set would."""

    async def apply(self, effect: Effect):  # type: ignore[override]
        await self.redis.sadd("rs:segments:rescore", *(f"other{k}" for k in range(2 * BUDGET)))
        return await super().apply(effect)


async def test_an_idle_processor_stops_when_others_list_items_faster_than_it_takes_them(isolated_settings):
    """The items waiting are shared: when empty calls do not make them fewer, the idle turn ends (once no rescore
    pass is open) instead of ranking the others' items forever."""
    settings = isolated_settings.replace(require_announced_items=False, segment_rank_s=60)
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, processor):
        processor.segments_ranked_at = float("inf")
        await processor.process([message(topic, 0, [("view", "u1", "i0")])])
        processor.store = OthersListing(client, settings, rescore_items=BUDGET)
        calls = await asyncio.wait_for(processor.finish_pending(), timeout=30)
        assert calls == 1 and processor.segments_pending == 1 + 2 * BUDGET - BUDGET  # i0, the others', less a take
        assert sync.scard("rs:segments:rescore") == processor.segments_pending


class FoldInFailingOnce:
    """A model whose first fold-in fails, as Redis going away right after the batch's script applied would. Its item
    feed is caught up and it serves no version, so an items batch asks nothing else of it."""

    current = None

    def __init__(self) -> None:
        self.items_caught_up = asyncio.Event()
        self.items_caught_up.set()
        self.calls: list[list[str]] = []

    async def ensure(self, version: str | None) -> None:
        return None

    async def fold_in(self, items: list[str]) -> None:
        self.calls.append(items)
        if len(self.calls) == 1:
            raise RedisConnectionError("Redis went away after the script")


async def test_a_fold_in_that_failed_after_its_batch_applied_is_retried_by_the_idle_processor(isolated_settings):
    """The announcement that graduates an item applies and its fold-in fails; the retried batch finds itself applied
    and skips, so the item waits in foldin:pending. The idle processor's empty batch lists it again and folds it in,
    without waiting for the next event."""
    settings = isolated_settings.replace(pool_graduate_views=10)
    sync = redis.Redis.from_url(settings.redis.url)
    sync.hset("rs:views", "fresh", 10)  # counted before its announcement: it graduates on entering the pool
    sync.hset("rs:foldin:users:fresh", "u1", 5)
    client = AsyncRedis.from_url(settings.redis.url)
    model = FoldInFailingOnce()
    processor = BatchProcessor("item", StateStore(client, settings), settings, no_dead_letters, model)  # type: ignore[arg-type]
    announce = encode(ItemEvent(op="new", item_id="fresh", ts=T0, created_ts=T0, categories=["news"]))
    try:
        await processor.process([Message(settings.kafka.items_topic, 0, 0, announce, T0)])
        assert model.calls == [["fresh"]] and processor.fold_ins_pending
        assert sync.sismember("rs:graduated", "fresh") and sync.smembers("rs:foldin:pending") == {b"fresh"}
        assert await processor.finish_pending() == 1
        assert model.calls == [["fresh"], ["fresh"]] and not processor.fold_ins_pending
        assert await processor.finish_pending() == 0, "nothing left to finish"
    finally:
        await client.aclose()
        sync.close()
