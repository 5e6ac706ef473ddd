"""An erased user stays erased in the worker's state (recstream/store/erasure.py): an event of the user applied after
the erasure, published before it (a batch built before, its script run after) or after it, writes nothing under the
id, while the batch's other events apply as they would without the erasure; and a Redis that lost the erasure (a
window of writes lost, here: an older snapshot restored) gets it back from the erasures topic when the worker finds
the lost window or starts, before the lost batches are applied again.

Real Kafka and Redis, and the worker's own processor, store and live model."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import redis
from recstream.streams.processor import BatchProcessor

from recstream.contracts.events import Erasure, Event, ItemEvent, UserEvent, encode
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message, open_log, read_ranges, whole_topic
from recstream.eventlog.producer import EventProducer
from recstream.shell import infra
from recstream.store.connection import connect
from recstream.store.erasure import Commands, erase_user, erase_users
from recstream.store.state import Applied, Effect, StateStore
from recstream.store.state_dump import differing_keys, dump_state
from tests.jobs.test_erasure import traces
from tests.streams.scenario import T0, applied_events, model_for, no_dead_letters, publish, trained, world

pytestmark = pytest.mark.integration

NEW_ITEM = "i39"
"""An item the model was not trained on: the users of its events get fold-in fields (``foldin:users:i39``)."""


class ErasingStore(StateStore):
    """The real store; when ``victim`` is set, the next script call first erases that user as ``DELETE
    /v1/users/{id}`` does: the batch was built (the user's history read) before the erasure, its script runs after."""

    victim: str | None = None

    async def apply(self, effect: Effect) -> Applied:
        if self.victim is not None:
            await erase_user(Commands(self.redis), self.keys, self.victim)
            self.victim = None
        return await super().apply(effect)


@asynccontextmanager
async def processors(
    settings: Settings, items: list[ItemEvent], gap_repair: bool = False
) -> AsyncIterator[tuple[BatchProcessor, BatchProcessor, ErasingStore]]:
    """A worker's users and events processors on one store (with gap repair: reading the log)."""
    client = connect(settings)
    store = ErasingStore(client, settings)
    model = await model_for(settings, items)
    read_log = partial(read_ranges, settings) if gap_repair else None
    try:
        yield (
            BatchProcessor("user", store, settings, no_dead_letters, model, read_log),
            BatchProcessor("event", store, settings, no_dead_letters, model, read_log),
            store,
        )
    finally:
        await client.aclose()
        await model.fold_ins.redis.aclose()


def on_partition_0(topic: str, batches: list[list[Event]] | list[list[UserEvent]]) -> list[list[Message]]:
    """Each batch as one message of ten records at a time, on partition 0 of ``topic``, offsets in a row."""
    out, offset = [], 0
    for records in batches:
        out.append([])
        for first in range(0, len(records), 10):
            chunk = records[first : first + 10]
            out[-1].append(Message(topic, 0, offset, encode(chunk), max(r.ts for r in chunk) + 1))
            offset += 1
    return out


def without(state: dict[str, object], user: str) -> dict[str, object]:
    """A state dump without what names ``user``: its keys, its fields, and the erasure's own keys."""
    out: dict[str, object] = {}
    for key, value in state.items():
        if key.startswith(f"user:{user}:") or key in ("erased", "erased:count"):
            continue
        if isinstance(value, dict) and (key == "user:seg" or key.startswith("foldin:users:")):
            value = {field: v for field, v in value.items() if field != user.encode()}
            if not value:
                continue
        out[key] = value
    return out


async def test_events_applied_after_an_erasure_write_nothing_of_the_user_and_the_others_apply_as_without_it(
    isolated_settings: Settings, tmp_path: Path
):
    """Batch 2 holds the victim's events (one on a new item) and the other users'; it is built, then the victim is
    erased, then its script runs: the victim's events were published before the erasure and are applied after it.
    Nothing of the victim is written (history, vector, candidates, seen set, segment, fold-in field), and every other
    key equals a run without the erasure (the other users' state, and the counters, which keep the victim's share
    until a rebuild, as the docs say: each event counted once). Batch 3 and a user record (segment, preferences,
    onboarding), published after the erasure, write nothing of the victim either: the id stays erased."""
    await erase_in_flight(isolated_settings, redis.Redis.from_url(isolated_settings.redis.url), tmp_path, "")


async def test_events_applied_after_an_erasure_write_nothing_of_the_user_on_a_redis_cluster(
    clusters: infra.Clusters, tmp_path: Path
):
    """The same on a Redis Cluster (``--clusters``): the user's keys are in the user's slot, whose script checks
    that slot's own ``erased``, which the erasure's first call marks; the fold-in fields are in the shared slot."""
    suffix = uuid.uuid4().hex[:8]
    settings = clusters.settings.on_topics(suffix, worker_group=f"worker-{suffix}")
    await infra.ensure_topics(settings)
    await erase_in_flight(settings, redis.RedisCluster.from_url(settings.redis.url), tmp_path, suffix)


async def erase_in_flight(
    settings: Settings, client: redis.Redis | redis.RedisCluster, tmp_path: Path, suffix: str
) -> None:
    users, items, events = world(n_users=12, n_items=40, n_events=300, seed=3)
    old_items = [i for i in items if i.item_id != NEW_ITEM]
    clean, erased = f"clean{suffix}", f"erased{suffix}"
    base, version = await trained(
        settings.replace(redis_prefix=clean), tmp_path, [e for e in events if e.item_id != NEW_ITEM], old_items
    )
    victim = Counter(e.user_id for e in events[:200]).most_common(1)[0][0]
    late = Event(type="view", user_id=victim, item_id=NEW_ITEM, ts=events[199].ts + 1, event_id="late")
    parts = [events[:100], [*events[100:200], late], events[200:]]
    [user_batch] = on_partition_0(base.kafka.users_topic, [users])
    batches = on_partition_0(base.kafka.events_topic, parts)
    other = base.replace(redis_prefix=erased)
    for key in client.scan_iter(match=f"{clean}:*"):  # the model version and its item neighbours (one slot's keys)
        client.copy(key, f"{erased}:".encode() + key[len(clean) + 1 :])
    assert client.get(Keys.of(other)("model:current")) == version.encode()

    for run in (base, other):
        async with processors(run, items) as (user_processor, event_processor, store):
            await user_processor.process(user_batch)
            await event_processor.process(batches[0])
            if run is other:
                before = traces(dump_state(client, erased), victim)
                assert {f"user:{victim}:{what}" for what in ("hist", "vec", "cand", "seen")} <= set(before)
                assert f"user:seg[{victim}]" in before
                store.victim = victim
            await event_processor.process(batches[1])
    assert store.victim is None, "the erasure ran between building batch 2 and its script"
    clean_state, erased_state = dump_state(client, clean), dump_state(client, erased)
    assert any(t.startswith(f"foldin:users:{NEW_ITEM}") for t in traces(clean_state, victim)), "a fold-in field"
    assert traces(erased_state, victim) == [f"erased ∋ {victim}"]
    assert differing_keys(without(erased_state, victim), without(clean_state, victim)) == []
    assert counted(client, other) == len(parts[0]) + len(parts[1]), "each event counted once"

    comeback = UserEvent(
        user_id=victim, ts=T0 + 1, attributes={"age": 30, "gender": "F"}, preferred_categories=["news"]
    )
    users_topic = other.kafka.users_topic
    async with processors(other, items) as (user_processor, event_processor, _):
        await event_processor.process(batches[2])
        await user_processor.process([Message(users_topic, 0, len(user_batch), encode(comeback), T0 + 2)])
    assert traces(dump_state(client, erased), victim) == [f"erased ∋ {victim}"]
    assert counted(client, other) == len(events) + 1
    applied_to = client.hget(Keys.of(other).watermarks(0), f"{users_topic}:0")
    assert applied_to == str(len(user_batch)).encode(), "the user record was applied"


def counted(client: redis.Redis | redis.RedisCluster, settings: Settings) -> int:
    """Views and clicks in the totals."""
    return sum(int(n or 0) for n in client.hmget(Keys.of(settings)("totals"), ["views", "clicks"]))


async def apply_log(processor: BatchProcessor, settings: Settings, topic: str, start: dict | None = None) -> dict:
    """Apply ``topic`` from ``start`` (per partition; the log start where none) to its end as of now; the ends."""
    async with open_log(settings) as consumer:
        ends = {tp: end for tp, (_, end) in (await whole_topic(consumer, topic)).items()}
    ranges = {tp: ((start or {}).get(tp), end) for tp, end in ends.items()}
    async for chunk in read_ranges(settings, ranges):
        await processor.process(chunk)
    return ends


@pytest.mark.parametrize(
    ("lost", "found_by"),
    [("batches-too", "restart"), ("batches-too", "next-batch"), ("erasure-only", "restart")],
    ids=["batches-lost-worker-restarted", "batches-lost-worker-running", "erasure-lost-worker-restarted"],
)
async def test_a_redis_that_lost_an_erasure_gets_it_back_from_the_erasures_topic(
    isolated_settings: Settings, tmp_path: Path, lost: str, found_by: str
):
    """The erasure was on the erasures topic and applied in Redis, then Redis came back without it (and without the
    batches applied around it, or only without it). When the worker finds the lost window (its next batch, or the gap
    check when it starts) or merely starts, it erases the user again from the topic before it applies the lost
    batches again: nothing of the user remains but ``erased``, and every event is counted once."""
    users, items, events = world(n_users=12, n_items=40, n_events=600, seed=5)
    settings, _ = await trained(isolated_settings, tmp_path, events, items)
    parts = events[:200], events[200:400], events[400:]
    victim = Counter(e.user_id for e in parts[0]).most_common(1)[0][0]
    client = redis.Redis.from_url(settings.redis.url)
    topic = settings.kafka.events_topic
    await publish(settings, users=users, items=items, events=parts[0])
    async with processors(settings, items, gap_repair=True) as (user_processor, event_processor, store):
        await apply_log(user_processor, settings, settings.kafka.users_topic)
        ends = await apply_log(event_processor, settings, topic)
        await event_processor.repair_behind(list(ends), ends)  # a worker's start: the erasures checked
        checked = {f"{settings.kafka.erasures_topic}:0".encode(): b"0"}  # none erased below offset 0
        assert client.hgetall(f"{settings.redis.prefix}:erased:checked") == checked
        snapshot = {key: (client.dump(key), max(client.pttl(key), 0)) for key in client.scan_iter(match="rs:*")}
        if lost == "batches-too":
            await publish(settings, events=parts[1])
            ends = await apply_log(event_processor, settings, topic, ends)
        async with EventProducer(settings) as producer:  # DELETE /v1/users/{victim}: the log first, then Redis
            await producer.erase_user(Erasure(user_id=victim, ts=T0))
        await erase_user(Commands(store.redis), store.keys, victim)
        assert traces(dump_state(client, "rs"), victim) == [f"erased ∋ {victim}"]

        client.delete(*client.scan_iter(match="rs:*"))
        for key, (value, ttl_ms) in snapshot.items():
            client.restore(key, ttl_ms, value)
        assert f"user:{victim}:hist" in traces(dump_state(client, "rs"), victim), "Redis lost the erasure"
        if found_by == "next-batch":
            await publish(settings, events=parts[2])
            await apply_log(event_processor, settings, topic, ends)
    if found_by == "restart":
        async with processors(settings, items, gap_repair=True) as (_, event_processor, _):
            await event_processor.repair_behind(list(ends), ends)
            await publish(settings, events=parts[2])
            await apply_log(event_processor, settings, topic, ends)
    assert traces(dump_state(client, "rs"), victim) == [f"erased ∋ {victim}"]
    assert applied_events(client, "rs") == len(events) - (len(parts[1]) if lost == "erasure-only" else 0)
    assert client.sismember(Keys.of(settings).erased(victim), victim)


class CountingCommands(Commands):
    """The worker's commands on the real Redis, counting the keyspace walks (each ``scan`` walks every key)."""

    walks = 0

    async def scan(self, pattern: str) -> list[str]:
        self.walks += 1
        return await super().scan(pattern)


@pytest.mark.parametrize("users", [1, 2, 5])
async def test_many_erasures_walk_the_keyspace_as_often_as_one_and_erase_exactly_their_users(
    isolated_settings: Settings, users: int
):
    """A worker re-erasing the erasures a Redis lost (``_restore_erasures``) walked the keyspace twice a user (its
    sessions, the new items' hashes), holding its batches for minutes on a large Redis with many lost erasures; the
    walks are now shared. Every key of the erased users goes, nothing of the user next to them does."""
    await erase_many(isolated_settings, redis.Redis.from_url(isolated_settings.redis.url, decode_responses=True), users)


async def test_many_erasures_walk_the_keyspace_as_often_as_one_on_a_redis_cluster(clusters: infra.Clusters):
    """The same on a Redis Cluster (``--clusters``): one pattern finds the sessions of every user's slot."""
    settings = clusters.settings.replace(redis_prefix=f"many{uuid.uuid4().hex[:8]}")
    await erase_many(settings, redis.RedisCluster.from_url(settings.redis.url, decode_responses=True), 5)


async def erase_many(settings: Settings, r: redis.Redis | redis.RedisCluster, users: int) -> None:
    keys = Keys.of(settings)
    victims, bystander = [f"u{k}" for k in range(users)], "u1x"  # u1x: u1's name is its prefix
    pipe = r.pipeline()
    for user in [*victims, bystander]:
        for what in ("hist", "vec", "cand", "seen", "prefs", "sessions"):
            pipe.set(keys.user(user, what), "x")
        pipe.set(keys.user(user, "feed:0123456789abcdef"), "[]")
        pipe.zadd(keys.anonymous_sessions(user), {keys.user(user, "feed:fedcba9876543210"): 1})
        pipe.hset(keys.user_segments(user), user, "seg")
        pipe.hset(keys("foldin:users:i9"), user, 1.0)
    for k in range(2_500):  # a walk takes several SCAN pages
        pipe.set(keys(f"filler:{k}"), 1)
    pipe.execute()
    client = CountingCommands(connect(settings))
    removed = await erase_users(client, keys, victims)
    assert client.walks == 2, "the sessions' walk and the new items' walk, shared by every user"
    assert removed == 10 * users, "6 fixed keys, 1 session, 1 listed session, the segment entry, the fold-in field"
    left = list(r.scan_iter(f"{keys.prefix}:*", count=1000))
    assert not [k for k in left if any(f":{v}:" in k for v in victims)]
    assert len([k for k in left if f":{bystander}:" in k]) == 7
    assert r.zrange(keys.anonymous_sessions(bystander), 0, -1) == [keys.user(bystander, "feed:fedcba9876543210")]
    assert r.hgetall(keys("foldin:users:i9")) == {bystander: "1.0"}
    assert r.hgetall(keys.user_segments(bystander)) == {bystander: "seg"}
    assert set(r.smembers(keys.erased())) == set(victims)
