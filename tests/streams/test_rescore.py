"""A moved prior rescores the catalogue in bounded passes (apply_batch.lua, step 4), never the whole of it in one
batch, and a finished pass leaves every score f(final counters, final prior), as one whole rescore did. An idle
processor finishes what its batches left undone: a rescore pass, a fold-in that failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import redis
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

T0 = 1_700_000_000_000
BUDGET = 100  # items a batch rescores of a pass, about (HSCAN's COUNT)
USERS = {"u1": "a", "u2": "b"}  # user → segment


def message(topic: str, offset: int, events: list[tuple[str, str, str]]) -> Message:
    value = orjson.dumps([{"type": t, "user_id": u, "item_id": i, "ts": T0 + offset} for t, u, i in events])
    return Message(topic, 0, offset, value, T0 + offset)


@asynccontextmanager
async def batches(settings: Settings) -> AsyncIterator[tuple[redis.Redis, AsyncRedis, BatchProcessor]]:
    """A batch processor with a rescore budget of BUDGET items on the test's Redis (both users in their segments),
    and a synchronous client to read what it wrote; both closed after."""
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
    settings = isolated_settings.replace(require_announced_items=False)  # counted items are ranked at once
    topic = settings.kafka.events_topic
    async with batches(settings) as (sync, client, processor):
        catalogue = [(("view", u, f"i{n}")) for n in range(1_000) for u in USERS]  # 1,000 items, both segments
        first = await processor.process([message(topic, 0, catalogue)])
        assert first.full_rescore  # the first prior: every item is touched by this batch anyway
        assert await processor.finish_pending() > 0 and not processor.rescore_pending
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}

        clicks = await processor.process([message(topic, 1, [("click", "u1", "i0")] * 200)])  # the CTR moves
        assert clicks.full_rescore and clicks.rescore_pending and sync.exists("rs:rescore")
        stale = stale_scores(sync, settings)
        assert 1_000 - 2 * BUDGET <= stale["rank"] < 1_000, "one batch rescored a bounded share, not all, not none"
        assert stale["a"] == stale["rank"] and stale["b"] == stale["rank"]

        calls = await processor.finish_pending()
        assert calls >= 1_000 // (2 * BUDGET) and not processor.rescore_pending and not sync.exists("rs:rescore")
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}

        sync.set("rs:prior", "-1")  # the same counters rescored whole in one batch give the same scores
        whole = StateStore(client, settings, rescore_items=2**31 - 1)
        done = await whole.apply(Effect())
        assert done.full_rescore and not done.rescore_pending
        assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}


async def test_a_catalogue_within_the_budget_is_rescored_in_the_batch_that_moved_the_prior(isolated_settings):
    """HSCAN returns a small hash (listpack-encoded, at most 128 fields here) whole: no pass outlives its batch."""
    settings = isolated_settings.replace(require_announced_items=False)  # counted items are ranked at once
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
    wait_until(lambda: not sync.exists("rs:rescore"), 30, "the idle worker to end the pass")
    assert stale_scores(sync, settings) == {"rank": 0, "a": 0, "b": 0}
    sync.close()


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
