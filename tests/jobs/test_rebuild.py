"""``recstream rebuild`` against the real broker and Redis: the log alone reproduces the live state."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import orjson
import pytest
import redis
from recstream.streams.processor import BatchProcessor, DeadLetter
from redis.asyncio import Redis

from recstream.contracts.events import Event
from recstream.contracts.keys import Keys
from recstream.eventlog.log import Message, committed_offsets, open_log, whole_topic
from recstream.jobs.rebuild import rebuild
from recstream.store.state import StateStore
from recstream.store.state_dump import differing_keys, dump_state, settled
from tests.conftest import REPO, wait_until
from tests.streams.scenario import applied_events, publish, publish_raw, trained, world

pytestmark = pytest.mark.integration


async def test_rebuild_from_the_log_equals_the_live_state(isolated_settings, worker_factory, tmp_path):
    """A worker applies a stream; the rebuild deletes its state and replays the topics: counters,
    rankings, pool, seen sets and item neighbours exactly, user vectors to 1e-6, the same candidates."""
    users, items, events = world(n_users=200, n_items=120, n_events=20_000, seed=5)
    small_batches = isolated_settings.replace(batch_max=100)
    settings, _ = await trained(small_batches, tmp_path, events[:5_000], items)
    client = redis.Redis.from_url(settings.redis.url)
    await publish(settings, users=users, items=items)
    worker = worker_factory(settings)
    wait_until(lambda: client.hlen("rs:user:seg") == len(users), what="user segments")
    await publish(settings, events=events, batch_events=50)
    await publish_raw(settings, b"{oops", key=b"u1")  # skipped by the rebuild (the live worker dead-lettered it)
    wait_until(lambda: applied_events(client, "rs") == len(events), timeout_s=120, what="the live run")
    wait_until(lambda: settled(client, Keys("rs")), what="the live run's rankings final")
    worker.stop()
    client.rpush("rs:user:u1:feed:s1", '[["i1", "popular"]]')  # a reader's session: not derived, kept
    live = dump_state(client, "rs")
    client.set("rs:user:u1:vec", b"\0" * 64)  # damaged derived state is recomputed, stray keys go
    client.set("rs:stray", "x")

    report = await rebuild(settings)

    rebuilt = dump_state(client, "rs")
    assert sum(key.endswith(":vec") for key in live) == len(users)
    # new items' users are tracked (exactly: fewer than the cap), but none graduates: a graduated new item's
    # fold-in (recstream/store/fold_ins.py) reads its users' vectors as they stand then, which depends on how far
    # each partition got
    assert [key for key in live if key.startswith("foldin:users:")]
    assert not [key for key in live if key.startswith("foldin:") and not key.startswith("foldin:users:")]
    assert differing_keys(rebuilt, live) == []
    assert (report.events, report.invalid) == (len(events), 1)
    async with open_log(settings) as consumer:
        ends = {}
        for topic in (settings.kafka.events_topic, settings.kafka.items_topic, settings.kafka.users_topic):
            ends.update({tp: end for tp, (_, end) in (await whole_topic(consumer, topic)).items()})
    assert await committed_offsets(settings, list(ends)) == ends, "restarted workers go on after the replay"


async def test_rebuild_of_a_log_with_every_feedback_type_equals_the_live_state(
    isolated_settings, worker_factory, tmp_path
):
    """Likes, ratings, purchases and dislikes mixed into the stream: histories (a dislike outweighing the rest),
    signed user steps, new items' fold-in users and counters come out of the replay as the live worker left them,
    however the batches were cut (the live run in batches of 100 messages, the rebuild in batches of 5,000)."""
    users, items, events = world(n_users=150, n_items=100, n_events=4_000, seed=6)
    rng = random.Random(6)
    kinds = [("like", None), ("purchase", None), ("rating", 2.0), ("rating", 5.0), ("dislike", None)]
    mixed = []
    for e in events:
        kind, value = rng.choice(kinds) if rng.random() < 0.3 else (e.type, None)
        mixed.append(e.model_copy(update={"type": kind, "value": value}))
    last = max(e.ts for e in events)  # each user's last event a view: all CTR views applied ⇒ everything applied
    mixed += [
        Event(type="view", user_id=u.user_id, item_id="i1", ts=last + 1, event_id=f"end-{u.user_id}") for u in users
    ]
    ctr = sum(e.type in ("view", "click") for e in mixed)
    assert sum(e.type == "dislike" for e in mixed) > 100
    settings, _ = await trained(isolated_settings.replace(batch_max=100), tmp_path, mixed[:1_000], items[:70])
    client = redis.Redis.from_url(settings.redis.url)
    await publish(settings, users=users, items=items)
    worker = worker_factory(settings)
    wait_until(lambda: client.hlen("rs:user:seg") == len(users), what="user segments")
    await publish(settings, events=mixed, batch_events=50)
    wait_until(lambda: applied_events(client, "rs") == ctr, timeout_s=120, what="the live run")
    wait_until(lambda: settled(client, Keys("rs")), what="the live run's rankings final")
    worker.stop()
    live = dump_state(client, "rs")
    assert any(weight < 0 for key, value in live.items() if key.endswith(":hist") for _, weight in orjson.loads(value))

    await rebuild(settings.replace(batch_max=5_000))

    assert differing_keys(dump_state(client, "rs"), live) == []


async def test_rebuild_refuses_while_a_worker_runs(isolated_settings, worker_factory):
    """``recstream rebuild`` (the command) exits 1 naming the group's members and changes nothing."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    users, items, _ = world(n_users=5, n_items=5, n_events=0)
    await publish(settings, users=users, items=items)
    # and items: the items agent applies its topic beside the users agent, maybe after the dump below
    announced = [f"rs:item:{i.item_id}" for i in items]
    wait_until(lambda: client.hlen("rs:user:seg") == len(users) and client.exists(*announced) == len(items),
               what="the worker to apply users and items")  # fmt: skip
    before = dump_state(client, "rs")
    env = settings.environment(os.environ)
    rebuild_command = [sys.executable, "-m", "recstream.shell.cli", "rebuild"]
    command = subprocess.run(rebuild_command, env=env, capture_output=True, text=True, cwd=REPO)
    assert command.returncode == 1
    assert f"consumer group {settings.worker.group} has 1 active member" in " ".join(command.stderr.split())
    assert dump_state(client, "rs") == before


async def test_a_replay_rejects_what_was_too_far_in_the_future_when_published(isolated_settings):
    """Being "more than a day in the future" is measured from the record's Kafka timestamp (never later than the clock):
    an event two days ahead of its publication stays rejected when the log is replayed later, when it is past."""
    settings = isolated_settings
    published = int(time.time() * 1000) - 3 * 86_400_000
    event = b'{"type":"view","user_id":"u1","item_id":"i1","ts":%d}' % (published + 2 * 86_400_000)
    letters: list[DeadLetter] = []

    async def collect(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    client = Redis.from_url(settings.redis.url)
    try:
        processor = BatchProcessor("event", StateStore(client, settings), settings, collect)
        await processor.process([Message(settings.kafka.events_topic, 0, 0, event, published)])
        await processor.process([Message(settings.kafka.events_topic, 0, 1, event, None)])  # no timestamp: the clock
    finally:
        await client.aclose()
    assert [letter.source.offset for letter in letters] == [0]
    assert "in the future" in letters[0].rejected.reason
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 1
