"""The stream worker against the real broker and Redis: exact counters, kills, DLQ, pool rules, the ranker."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple
from urllib.request import urlopen

import numpy as np
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from recstream.models.ctr import quantized_global_ctr
from recstream.models.ranker import FTRLConfig, FTRLRanker, auc
from recstream.streams.app import check_assignment
from recstream.streams.processor import BatchProcessor
from redis.asyncio import Redis as AsyncRedis

from recstream.contracts.events import Event, ItemEvent, UserEvent, encode, partition_for, segment_of
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import CONTEXT_KEY, FEATURE_VERSION, FEATURES, decode_features, prior_weights
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message, read_ranges
from recstream.shell.demo import metric_sum
from recstream.shell.infra import free_port
from recstream.store.state import StateStore
from recstream.store.state_dump import differing_keys, dump_state, settled
from tests.conftest import wait_until
from tests.streams.scenario import (
    T0,
    applied_events,
    dead_letters,
    events_applied,
    for_prefix,
    no_dead_letters,
    publish,
    served,
    served_vector,
    trained,
    world,
)

pytestmark = pytest.mark.integration

KILLS = 3


class Kill(NamedTuple):
    """The applied-events counter just before a SIGKILL. Above ``before`` (the events published before the
    previous kill, the most the worker killed then can have applied): the worker started after it applied a
    batch. Below ``published`` (the events published so far): the killed worker was still applying."""

    before: int
    applied: int
    published: int


async def test_counters_and_smoothed_ctr_equal_an_independent_computation(isolated_settings, worker_factory):
    settings = isolated_settings
    users, items, events = world(n_users=60, n_items=40, n_events=4_000)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    await publish(settings, users=users, items=items)
    wait_until(lambda: client.hlen("rs:user:seg") == len(users), what="user segments")
    await publish(settings, events=events)
    wait_until(lambda: applied_events(client, "rs") == len(events), what="all events applied")
    wait_until(lambda: settled(client, Keys("rs")), what="the segment scores of the last batches")

    segment = {u.user_id: segment_of(u.attributes) for u in users}
    views = Counter(e.item_id for e in events if e.type == "view")
    clicks = Counter(e.item_id for e in events if e.type == "click")
    seg_views = Counter((segment[e.user_id], e.item_id) for e in events if e.type == "view")
    seg_clicks = Counter((segment[e.user_id], e.item_id) for e in events if e.type == "click")
    assert {k.decode(): int(v) for k, v in client.hgetall("rs:views").items()} == dict(views)
    assert {k.decode(): int(v) for k, v in client.hgetall("rs:clicks").items()} == dict(clicks)

    m = settings.model.ctr_prior_mass
    q = quantized_global_ctr(
        sum(clicks.values()), sum(views.values()), rel_step=settings.model.ctr_prior_step,
        default_ctr=settings.model.ctr_default, default_mass=settings.model.ctr_default_mass,
    )  # fmt: skip
    expected = {i: (clicks[i] + m * q) / (views[i] + m) for i in views}
    assert {k.decode(): v for k, v in client.zrange("rs:rank", 0, -1, withscores=True)} == expected
    for seg in set(segment.values()):
        stored = {k.decode(): v for k, v in client.zrange(f"rs:rank:{seg}", 0, -1, withscores=True)}
        want = {i: (seg_clicks[s, i] + m * expected[i]) / (seg_views[s, i] + m) for (s, i) in seg_views if s == seg}
        assert stored == want


@pytest.mark.parametrize("pipeline", [False, True], ids=["one-at-a-time", "pipelined"])
async def test_killed_worker_leaves_all_state_exact(isolated_settings, worker_factory, tmp_path, pipeline):
    """SIGKILL a worker three times during a replay of 40k views and their clicks; its state equals a clean
    run's: counters, rankings, pool and every partition's online ranker exactly, user vectors to 1e-6, the same
    candidate lists but for exactly tied items at their ends (store/state_dump.same_neighbours).

    The replay is published a quarter at a time (as bench/faults.py holds its stream per injection), and each
    kill lands once the counter passed the events published before the previous kill and before it reaches
    the events published so far: every kill hits a worker applying its quarter, each after the replacement
    started at the previous kill got partitions and applied a batch (see :class:`Kill`). A 6 s consumer
    session (``worker_session_timeout_s``, the broker's minimum; 10 s by default) is how long each
    replacement waits for the dead member's partitions."""
    users, items, events = world(n_users=500, n_items=300, n_events=40_000, seed=2)
    events = served(events)  # 14 items graduate from the pool during the replay, as many as 100k events at 300 views
    base = isolated_settings.replace(batch_max=40, pool_graduate_views=120, worker_session_timeout_s=6)
    client = redis.Redis.from_url(base.redis.url)
    clean, killed = await clean_and_other(base, "killed", tmp_path, events[:8_000], items, client)
    clean, killed = clean.replace(worker_pipeline=False), killed.replace(worker_pipeline=pipeline)
    await publish(base, users=users, items=items)
    worker = worker_factory(killed)
    worker_factory(clean)
    for prefix in ("clean", "killed"):  # segments first, so both runs count events in the same segments
        wait_until(lambda p=prefix: client.hlen(f"{p}:user:seg") == len(users), what=f"{prefix} segments")

    kills: list[Kill] = []
    published = 0
    for k in range(KILLS):
        before, published = published, len(events) * (k + 1) // (KILLS + 1)
        await publish(base, events=events[before:published], batch_events=20)
        wait_until(lambda b=before: applied_events(client, "killed") > b, timeout_s=90,
                   what=f"a batch of kill {k + 1}'s worker")  # fmt: skip
        kills.append(Kill(before, applied_events(client, "killed"), published))
        worker.kill()
        worker = worker_factory(killed)
    await publish(base, events=events[published:], batch_events=20)
    for prefix in ("killed", "clean"):
        wait_until(lambda p=prefix: applied_events(client, p) == len(events), timeout_s=180, what=f"{prefix} run")
        wait_until(lambda p=prefix: settled(client, Keys(p)), what=f"{prefix} run's rankings final")
    assert len([kill for kill in kills if kill.before < kill.applied < kill.published]) >= KILLS, kills
    killed_state, clean_state = dump_state(client, "killed"), dump_state(client, "clean")
    assert sum(key.endswith(":vec") for key in clean_state) == len(users)
    assert sum(key.startswith("ranker:") for key in clean_state) == base.kafka.events_partitions
    assert differing_keys(killed_state, clean_state) == []


async def clean_and_other(
    base: Settings, other: str, tmp_path: Path, history: list[Event], items: list[ItemEvent], client: redis.Redis
) -> tuple[Settings, Settings]:
    """Settings of a clean run (prefix ``clean``) and of another (prefix ``other``) serving the same model version."""
    clean, version = await trained(for_prefix(base, "clean"), tmp_path, history, items)
    copy = for_prefix(base, other, model_dir=clean.model.dir, candidates_m=clean.model.candidates_m)
    for key in client.scan_iter(match="clean:item:*"):
        client.set(other.encode() + key[len("clean") :], client.get(key))
    client.set(f"{other}:model:current", version)
    return clean, copy


@pytest.mark.parametrize("restart", [True, False], ids=["worker-restarted", "worker-running"])
async def test_redis_losing_a_window_is_repaired_from_the_log(isolated_settings, worker_factory, tmp_path, restart):
    """Redis comes back without its last writes (AOF everysec after a crash; here: an older snapshot restored)
    while Kafka holds the offsets committed after them. Whether the worker restarts (repair at partition
    assignment, before any new message) or keeps running (repair when the next batch finds the watermark
    behind), the lost window is re-applied from the log and the final state equals a clean run's."""
    users, items, events = world(n_users=150, n_items=80, n_events=9_000, seed=6)
    client = redis.Redis.from_url(isolated_settings.redis.url)
    clean, lossy = await clean_and_other(isolated_settings, "lossy", tmp_path, events[:3_000], items, client)
    await publish(isolated_settings, users=users, items=items)
    worker = worker_factory(lossy)
    worker_factory(clean)
    for prefix in ("clean", "lossy"):
        wait_until(lambda p=prefix: client.hlen(f"{p}:user:seg") == len(users), what=f"{prefix} segments")
    parts = events[:3_000], events[3_000:6_000], events[6_000:]
    # settled too: an idle worker's empty call ranks the segment scores its last batch left about a second later, and
    # one landing while the keys are dumped, or deleted and restored, mixes two states (or makes RESTORE find a key)
    await publish(isolated_settings, events=parts[0])
    wait_until(
        lambda: applied_events(client, "lossy") == 3_000 and settled(client, Keys("lossy")), what="the first part"
    )
    snapshot = {key: (client.dump(key), max(client.pttl(key), 0)) for key in client.scan_iter(match="lossy:*")}
    await publish(isolated_settings, events=parts[1])
    wait_until(
        lambda: applied_events(client, "lossy") == 6_000 and settled(client, Keys("lossy")), what="the second part"
    )
    if restart:
        worker.stop()  # commits the offsets of the second part
    client.delete(*client.scan_iter(match="lossy:*"))
    for key, (value, ttl_ms) in snapshot.items():
        client.restore(key, ttl_ms, value)
    assert applied_events(client, "lossy") == 3_000
    if restart:
        worker = worker_factory(lossy)
        wait_until(lambda: applied_events(client, "lossy") == 6_000, what="the repair at partition assignment")
    await publish(isolated_settings, events=parts[2])
    for prefix in ("clean", "lossy"):
        wait_until(lambda p=prefix: applied_events(client, p) == len(events), timeout_s=120, what=f"{prefix} run")
        wait_until(lambda p=prefix: settled(client, Keys(p)), what=f"{prefix} run's rankings final")
    assert differing_keys(dump_state(client, "lossy"), dump_state(client, "clean")) == []
    scraped = urlopen(f"http://127.0.0.1:{worker.port}/metrics").read().decode()
    gap = sum(
        float(line.split()[-1])
        for line in scraped.splitlines()
        if line.startswith("recstream_worker_gap_messages_total{")
    )
    assert gap > 0


async def test_malformed_events_go_to_the_dlq_and_the_worker_keeps_going(isolated_settings, worker_factory):
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    good = b'{"type":"view","user_id":"u1","item_id":"i1","ts":%d}' % T0
    bad_json = b"{oops"
    unsafe_id = b'{"type":"view","user_id":"u 1","item_id":"i1","ts":%d}' % T0
    click = b'{"type":"click","user_id":"u1","item_id":"i1","ts":%d}' % T0
    mixed = b"[%s, %s, %s]" % (good, unsafe_id, click)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for value in (bad_json, mixed, b"[]", b'"text"'):
            await producer.send_and_wait(settings.kafka.events_topic, value, key=b"u1")
        wait_until(lambda: applied_events(client, "rs") == 2, what="valid events of the mixed batch")
        await producer.send_and_wait(settings.kafka.events_topic, good, key=b"u1")
        wait_until(lambda: applied_events(client, "rs") == 3, what="the worker to keep consuming")
    finally:
        await producer.stop()

    letters = await dead_letters(settings, expected=3, timeout_s=30)
    reasons = sorted(dict(m.headers)["reason"].decode().split(",")[0] for m in letters)
    assert len(letters) == 3
    assert reasons[0].startswith("event: Input should be an object")
    assert reasons[1].startswith("json: invalid JSON")
    assert reasons[2].startswith("user_id: String should match pattern")
    assert {m.value for m in letters} >= {bad_json, b'"text"'}


async def test_pool_graduation_and_unavailability(isolated_settings, worker_factory):
    settings = isolated_settings.replace(pool_graduate_views=5, pool_graduate_age_s=3600)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    items = [ItemEvent(op="new", item_id=i, ts=T0, created_ts=T0, categories=["news"]) for i in ("hot", "old", "gone")]
    await publish(settings, users=[UserEvent(user_id="u1", ts=T0, attributes={"age": 30, "gender": "F"})], items=items)
    wait_until(lambda: client.zcard("rs:pool") == 3, what="three items in the pool")
    views = [Event(type="view", user_id="u1", item_id=i, ts=T0 + 1) for i in ["hot"] * 5 + ["old", "gone"]]
    await publish(settings, events=views)
    wait_until(lambda: client.sismember("rs:graduated", "hot"), what="graduation after 5 views")
    assert {m.decode() for m in client.zrange("rs:pool", 0, -1)} == {"old", "gone"}

    await publish(settings, items=[ItemEvent(op="update", item_id="gone", ts=T0 + 2, available=False)])
    wait_until(lambda: client.sismember("rs:unavailable", "gone"), what="unavailability")
    assert client.zscore("rs:rank", "gone") is None and client.zscore("rs:rank:age25-34.F", "gone") is None
    assert client.zscore("rs:pool", "gone") is None and client.zscore("rs:rank", "hot") is not None

    later = T0 + 3600 * 1000 + 5
    await publish(settings, events=[Event(type="click", user_id="u1", item_id="hot", ts=later)])
    wait_until(lambda: client.sismember("rs:graduated", "old"), what="graduation by age (event time)")
    await publish(settings, items=[ItemEvent(op="update", item_id="gone", ts=later, available=True)])
    wait_until(lambda: client.zscore("rs:rank", "gone") is not None, what="back in the ranking when available")
    assert client.zscore("rs:pool", "gone") is None, "a returning item does not re-enter the pool after its age"


async def test_an_item_announced_after_its_views_graduates_on_them_at_once(isolated_settings, worker_factory):
    """Graduation does not depend on which was applied first, an item's views or its announcement: items with
    N − 1, N and N + 1 views counted before the items topic announced them (N = 5) enter the pool, graduate,
    graduate."""
    settings = isolated_settings.replace(pool_graduate_views=5, pool_graduate_age_s=3600)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    counts = {"four": 4, "five": 5, "six": 6}
    views = [Event(type="view", user_id=f"u{k}", item_id=i, ts=T0 + 1) for i, n in counts.items() for k in range(n)]
    await publish(settings, events=views)
    wait_until(lambda: client.hget("rs:totals", "views") == b"15", what="the views counted")
    assert client.zcard("rs:pool") == 0 and client.scard("rs:graduated") == 0, "unannounced: hidden, not pooled"
    items = [ItemEvent(op="new", item_id=i, ts=T0 + 2, created_ts=T0, categories=["news"]) for i in counts]
    await publish(settings, items=items)
    wait_until(lambda: client.scard("rs:unavailable") == 0, what="the announcements applied")
    assert [m.decode() for m in client.zrange("rs:pool", 0, -1)] == ["four"]
    assert client.smembers("rs:graduated") == {b"five", b"six"}


async def test_a_standing_clock_graduates_the_pool_and_says_so(isolated_settings, worker_factory):
    """Events whose timestamps were filled in (every one at T0): once RECSTREAM_POOL_GRADUATE_STANDING_EVENTS (at its
    limit here) were applied at that instant, the pool empties, ``recstream_worker_event_clock_standing`` reads 1 and
    the log says why; one event at a later instant ends it, and a new item then stays in the pool."""
    standing = 20
    settings = isolated_settings.replace(pool_graduate_standing_events=standing, pool_graduate_views=1_000)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    items = [ItemEvent(op="new", item_id=f"i{k}", ts=T0, created_ts=T0, categories=["news"]) for k in range(3)]
    await publish(settings, items=items)
    wait_until(lambda: client.zcard("rs:pool") == 3, what="three items in the pool")
    await publish(
        settings, events=[Event(type="view", user_id=f"u{k}", item_id="i0", ts=T0) for k in range(standing - 1)]
    )
    wait_until(lambda: client.hget("rs:totals", "views") == str(standing - 1).encode(), what="the limit - 1 applied")
    assert client.zcard("rs:pool") == 3 and metric_sum(worker.metrics(), "recstream_worker_event_clock_standing") == 0
    await publish(settings, events=[Event(type="view", user_id="u-last", item_id="i1", ts=T0)])
    wait_until(lambda: client.zcard("rs:pool") == 0, what="the pool graduated at the limit")
    assert metric_sum(worker.metrics(), "recstream_worker_event_clock_standing") == 1
    assert "the event clock has stood at one instant for 20 events" in worker.log.read_text()
    # what ages an item while the clock stands (serving/features.py): each partition's events, and each item's first
    # event: i0 first in every partition its viewers are in, i1 after its partition's share of them (viewers[last])
    n = settings.kafka.events_partitions
    viewers = Counter(partition_for(f"u{k}", n) for k in range(standing - 1))
    last = partition_for("u-last", n)
    assert client.hgetall("rs:first") == {b"i0": b"0", b"i1": str(n * viewers[last]).encode()}
    viewers[last] += 1
    assert client.hgetall("rs:counted") == {str(p).encode(): str(c).encode() for p, c in viewers.items()}
    await publish(settings, events=[Event(type="view", user_id="u1", item_id="i2", ts=T0 + 1)])
    await publish(
        settings, items=[ItemEvent(op="new", item_id="new", ts=T0 + 1, created_ts=T0 + 1, categories=["news"])]
    )
    wait_until(lambda: client.zscore("rs:pool", "new") is not None, what="a new item pooled once the clock moved")
    assert metric_sum(worker.metrics(), "recstream_worker_event_clock_standing") == 0
    assert "the event clock moves again" in worker.log.read_text()


async def test_two_workers_share_partitions_and_match_one(isolated_settings, worker_factory):
    users, items, events = world(n_users=200, n_items=100, n_events=20_000, seed=4)
    one, two = for_prefix(isolated_settings, "one"), for_prefix(isolated_settings, "two")
    client = redis.Redis.from_url(isolated_settings.redis.url)
    await publish(isolated_settings, users=users, items=items)
    worker_factory(one)
    wait_until(lambda: client.hlen("one:user:seg") == len(users), what="segments (one)")
    pair = [worker_factory(two), worker_factory(two)]
    wait_until(lambda: client.hlen("two:user:seg") == len(users), what="segments (two)")
    topic = isolated_settings.kafka.events_topic
    for start in range(0, len(events), 500):  # dribbled until both hold partitions: the second joins seconds late
        await publish(isolated_settings, events=events[start : start + 500], batch_events=25)
        if min(events_applied(worker, topic) for worker in pair) == 0:
            await asyncio.sleep(0.5)
    for prefix in ("one", "two"):
        wait_until(lambda p=prefix: applied_events(client, p) == len(events), timeout_s=120, what=f"{prefix} done")
        wait_until(lambda p=prefix: settled(client, Keys(p)), what=f"{prefix} rankings final")
    # a call's counters are exported after Redis answers its script: the last batch's may lag the totals
    wait_until(lambda: sum(events_applied(worker, topic) for worker in pair) >= len(events), what="both counters")
    partitions = {k.decode() for k in client.hgetall("two:wm")}
    assert len([p for p in partitions if p.startswith("events")]) == isolated_settings.kafka.events_partitions
    one_state, two_state = dump_state(client, "one"), dump_state(client, "two")
    assert differing_keys(one_state, two_state) == []
    assert np.isfinite(float(client.get("two:prior")))
    applied = [events_applied(worker, topic) for worker in pair]
    assert min(applied) > 0 and sum(applied) == len(events), f"both workers applied, each event once: {applied}"


async def test_a_gap_repair_waits_out_an_unreachable_kafka_and_then_applies_the_gap_first(isolated_settings):
    """The consumer is at offset 2 of a partition Redis knows nothing of: offsets 0 and 1 are read from the log
    first. While the log cannot be read the batch is retried, never applied without its gap."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    values = [b'{"type":"view","user_id":"u1","item_id":"i%d","ts":%d}' % (k, T0 + k) for k in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()

    client = AsyncRedis.from_url(settings.redis.url)
    unreachable = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters,
                               read_log=partial(read_ranges, unreachable))  # fmt: skip
    try:
        batch = asyncio.create_task(processor.process([Message(topic, 0, 2, values[2])]))
        await asyncio.sleep(1.0)
        assert not batch.done() and await client.hget("rs:wm", f"{topic}:0") is None
        processor.read_log = partial(read_ranges, settings)
        await asyncio.wait_for(batch, timeout=30)
        seen = await client.zrange("rs:user:u1:seen", 0, -1)
    finally:
        await client.aclose()
    assert sorted(seen) == [b"i0", b"i1", b"i2"]
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 3


async def test_the_gap_check_on_assignment_waits_out_a_redis_error_reply(isolated_settings):
    """On a partition assignment the worker re-applies what Redis lost (committed offset past the watermark + 1).
    It waited out a lost connection but gave up on an error reply, such as a Redis Cluster's CLUSTERDOWN while a
    failed master's replica takes over, just when a window may be lost. A WRONGTYPE reply on the watermarks
    stands in for it here: the check retries until Redis answers, then applies the gap."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    await publish(settings, events=[Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k) for k in range(3)])

    client = AsyncRedis.from_url(settings.redis.url)
    await client.set("rs:wm", "not a hash")
    partition = partition_for("u1", settings.kafka.events_partitions)
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters,
                               read_log=partial(read_ranges, settings))  # fmt: skip
    try:
        check = asyncio.create_task(processor.repair_behind([(topic, partition)], {(topic, partition): 1}))
        await asyncio.sleep(1.0)
        assert not check.done(), "the check gave up"
        await client.delete("rs:wm")
        await asyncio.wait_for(check, timeout=30)
    finally:
        await client.aclose()
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 3


async def test_the_gap_check_on_assignment_waits_out_a_failed_log_read(isolated_settings):
    """The check gave up on anything but a Redis error: a Kafka error while reading the lost window ended it, and a
    quiet partition's window waited for its next message. It retries whatever failed."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    await publish(settings, events=[Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k) for k in range(3)])
    reads: list[object] = []

    def flaky_read(ranges):  # the broker away at the first read
        reads.append(ranges)
        if len(reads) == 1:
            raise KafkaConnectionError("the broker went away")
        return read_ranges(settings, ranges)

    client = AsyncRedis.from_url(settings.redis.url)
    partition = partition_for("u1", settings.kafka.events_partitions)
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters, read_log=flaky_read)
    try:
        await asyncio.wait_for(processor.repair_behind([(topic, partition)], {(topic, partition): 1}), timeout=30)
    finally:
        await client.aclose()
    assert len(reads) == 2 and applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 3


async def test_the_gap_check_ends_once_the_worker_is_stopping_and_the_next_assignment_repairs(
    isolated_settings, caplog
):
    """A worker told to stop while Redis is unreachable went on retrying its gap check. Now it waits Redis out only
    while running: the first failed attempt after the stop ends the check, naming the partition it left, and the
    worker assigned the partition next (a processor on the reachable Redis) applies the gap."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    await publish(settings, events=[Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k) for k in range(3)])
    tp = (topic, partition_for("u1", settings.kafka.events_partitions))
    stopping = False
    away = AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    stopped = BatchProcessor("event", StateStore(away, settings), settings, no_dead_letters,
                             read_log=partial(read_ranges, settings), stopping=lambda: stopping)  # fmt: skip
    client = AsyncRedis.from_url(settings.redis.url)
    following = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters,
                               read_log=partial(read_ranges, settings))  # fmt: skip
    try:
        check = asyncio.create_task(stopped.repair_behind([tp], {tp: 1}))
        await asyncio.sleep(1.0)
        assert not check.done(), "a running worker's check gave up on an unreachable Redis"
        stopping = True
        await asyncio.wait_for(check, timeout=10)  # the old check retried until cancelled
        await asyncio.wait_for(following.repair_behind([tp], {tp: 1}), timeout=30)
    finally:
        await away.aclose()
        await client.aclose()
    assert f"the gap check of {tp[0]}:{tp[1]} is left to the partitions' next assignment" in caplog.text
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 3


def assignment(settings: Settings) -> list[tuple[str, int]]:
    """One partition of each topic the worker consumes, in the order of its processors (and of their names)."""
    return [(settings.kafka.events_topic, 0), (settings.kafka.items_topic, 0), (settings.kafka.users_topic, 0)]


def gap_checkers(settings: Settings, client: AsyncRedis, stopping: Callable[[], bool]) -> list[BatchProcessor]:
    """The worker's three processors (streams/app.py) on ``client``, stopping when ``stopping`` says so."""
    store, read_log = StateStore(client, settings), partial(read_ranges, settings)
    return [
        BatchProcessor(kind, store, settings, no_dead_letters, read_log=read_log, stopping=stopping)
        for kind in ("event", "item", "user")
    ]


async def test_an_assignments_check_ends_once_the_worker_is_stopping_while_the_broker_is_unreachable(
    isolated_settings, caplog
):
    """An assignment's check read the group's committed offsets until the broker answered, whether or not the worker
    was told to stop. A running worker still waits the broker out; once it is stopping, the first failed read ends
    the check, naming every partition it left to their next assignment."""
    settings = isolated_settings
    unreachable = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    stopping = False
    client = AsyncRedis.from_url(settings.redis.url)
    try:
        processors = gap_checkers(settings, client, lambda: stopping)
        check = asyncio.create_task(check_assignment(unreachable, processors, assignment(settings), lambda: stopping))
        await asyncio.sleep(1.0)
        assert not check.done(), "a running worker's check gave up on an unreachable broker"
        stopping = True
        await asyncio.wait_for(check, timeout=10)  # the old check retried until cancelled
    finally:
        await client.aclose()
    named = ", ".join(f"{topic}:{partition}" for topic, partition in assignment(settings))
    assert f"the gap check of {named} is left to the partitions' next assignment" in caplog.text


async def test_an_assignments_check_starts_no_processors_part_once_the_worker_is_stopping(isolated_settings, caplog):
    """When the events processor's part of the check ended at the stop (Redis unreachable), the items' and the users'
    parts still started, each making one more failed attempt: up to the Redis socket timeout (30 s) each on a Redis
    that hangs. Now the check ends with the part that saw the stop and names the partitions it left."""
    settings = isolated_settings
    events, items, users = assignment(settings)
    stopping = False
    away = AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there

    def attempts(tp: tuple[str, int]) -> float:
        sample = {"topic": tp[0], "reason": "redis_unavailable"}
        return REGISTRY.get_sample_value("recstream_worker_batch_retries_total", sample) or 0.0

    try:
        processors = gap_checkers(settings, away, lambda: stopping)
        check = asyncio.create_task(check_assignment(settings, processors, [events, items, users], lambda: stopping))
        await asyncio.sleep(1.0)
        assert not check.done(), "a running worker's check gave up on an unreachable Redis"
        stopping = True
        await asyncio.wait_for(check, timeout=10)
    finally:
        await away.aclose()
    assert attempts(events) > 1 and attempts(items) == attempts(users) == 0, "a part started after the stop"
    assert f"the gap check of {events[0]}:0 is left to the partitions' next assignment" in caplog.text
    assert f"the gap check of {items[0]}:0, {users[0]}:0 is left to the partitions' next assignment" in caplog.text


async def test_the_gap_check_and_the_agents_batch_apply_one_at_a_time_and_count_the_gap_once(isolated_settings):
    """An assignment's gap check runs in a task of its own beside the agent. Both moved the in-memory watermarks before
    their call applied and cached histories only after, so a batch built meanwhile could pass the watermark check on
    a history that lacked the other's events (a review's replay lost one), and both counted the same gap. The
    agent's batch now waits for the check, and the gap counts the messages Redis lacked, once."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    await publish(settings, events=[Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k) for k in range(5)],
                  batch_events=1)  # fmt: skip
    tp = (topic, partition_for("u1", settings.kafka.events_partitions))
    log = [m async for chunk in read_ranges(settings, {tp: (0, 5)}) for m in chunk]
    reads: list[object] = []
    opened = asyncio.Event()

    async def gated_read(ranges):  # the gap check's read waits for the test; any other goes through
        reads.append(ranges)
        if len(reads) == 1:
            await opened.wait()
        async for chunk in read_ranges(settings, ranges):
            yield chunk

    def gap_messages() -> float:
        return REGISTRY.get_sample_value("recstream_worker_gap_messages_total", {"topic": topic}) or 0.0

    client = AsyncRedis.from_url(settings.redis.url)
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters, read_log=gated_read)
    try:
        await processor.process(log[:1])  # Redis holds offset 0; offsets 1 and 2 are the gap (committed: 3)
        counted = gap_messages()
        processor.forget_watermarks()  # the assignment
        check = asyncio.create_task(processor.repair_behind([tp], {tp: 3}))
        await asyncio.sleep(0.5)
        agent = asyncio.create_task(processor.process(log[3:]))
        await asyncio.sleep(1.5)
        assert not agent.done(), "the agent's batch applied beside the gap check"
        opened.set()
        await asyncio.wait_for(asyncio.gather(check, agent), timeout=30)
        seen = await client.zrange("rs:user:u1:seen", 0, -1)
    finally:
        await client.aclose()
    assert sorted(seen) == [f"i{k}".encode() for k in range(5)]
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 5
    assert gap_messages() - counted == 2 and len(reads) == 1


def duplicates_dropped(worker) -> float:
    return metric_sum(worker.metrics(), "recstream_worker_duplicate_events_total{")


async def test_a_repeated_event_id_is_applied_once_also_across_a_worker_restart(isolated_settings, worker_factory):
    """A client that retries a request whose first try reached the broker sends its events again; the worker
    applies a user's event_id once within dedup_window_s, however the copies are cut into messages and whichever
    worker reads them. Another user's same id is another event."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    now_ms = int(time.time() * 1000)
    click = Event(type="click", user_id="u1", item_id="i1", ts=now_ms, event_id="e1")
    worker = worker_factory(settings)
    await publish(settings, events=[click])
    await publish(settings, events=[click, click.model_copy(update={"user_id": "u2"})])  # another message
    wait_until(  # a call's counters are exported after Redis answers its script, so wait for both
        lambda: client.hlen("rs:wm") == 2 and applied_events(client, "rs") >= 2 and duplicates_dropped(worker) >= 1,
        what="both messages",
    )
    assert applied_events(client, "rs") == 2 and duplicates_dropped(worker) == 1
    worker.stop()
    worker = worker_factory(settings)
    view = Event(type="view", user_id="u1", item_id="i2", ts=now_ms, event_id="e2")
    await publish(settings, events=[click, view])
    wait_until(
        lambda: client.hget("rs:views", "i2") is not None and duplicates_dropped(worker) >= 1,
        what="the message after the restart",
    )
    assert applied_events(client, "rs") == 3 and client.hget("rs:clicks", "i1") == b"2"
    assert duplicates_dropped(worker) == 1
    ttls = [client.pttl(key) for key in client.scan_iter(match="rs:eids:*")]
    assert ttls and all(ttl == -1 for ttl in ttls), "trimmed by arrival time at each batch, never by the wall clock"


async def test_a_copy_resent_during_an_outage_longer_than_the_window_is_still_dropped(
    isolated_settings, worker_factory
):
    """The ids were kept with a wall-clock expiry of one window while the window is measured in record time: a
    copy a client resent one second after the first try, read by a worker restarted three windows later, found no
    id and was applied twice."""
    settings = isolated_settings.replace(dedup_window_s=2)
    first = int(time.time() * 1000)
    value = Event(type="click", user_id="u1", item_id="i1", ts=first, event_id="e1").model_dump_json().encode()
    client = redis.Redis.from_url(settings.redis.url)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        worker = worker_factory(settings)
        await producer.send_and_wait(settings.kafka.events_topic, value, key=b"u1", timestamp_ms=first)
        wait_until(lambda: applied_events(client, "rs") == 1, what="the first try applied")
        worker.stop()
        await producer.send_and_wait(settings.kafka.events_topic, value, key=b"u1", timestamp_ms=first + 1_000)
        time.sleep(3 * settings.worker.dedup_window_s)  # the workers are down three windows of wall time
    finally:
        await producer.stop()
    worker = worker_factory(settings)
    worker.wait_ready()
    wait_until(lambda: duplicates_dropped(worker) == 1, what="the resent copy dropped")
    assert applied_events(client, "rs") == 1 and client.hget("rs:clicks", "i1") == b"1"


async def test_an_event_id_repeated_after_the_window_is_applied_again(isolated_settings, worker_factory):
    """The window is measured between the records' arrival (their Kafka timestamps): a copy at most
    dedup_window_s after the applied one is dropped, a later one is a new event."""
    settings = isolated_settings
    window_ms = settings.worker.dedup_window_s * 1000
    first = int(time.time() * 1000) - 2 * window_ms
    value = Event(type="view", user_id="u1", item_id="i1", ts=first, event_id="e1").model_dump_json().encode()
    worker = worker_factory(settings)
    worker.wait_ready()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for arrival in (first, first + window_ms - 1, first + window_ms, first + window_ms + 1):
            await producer.send_and_wait(settings.kafka.events_topic, value, key=b"u1", timestamp_ms=arrival)
    finally:
        await producer.stop()
    client = redis.Redis.from_url(settings.redis.url)
    wait_until(  # the last copy may come in a later batch than the drops
        lambda: duplicates_dropped(worker) == 2 and applied_events(client, "rs") == 2,
        what="the two copies within the window dropped, the first and the last applied",
    )


def ranker_states(client: redis.Redis, settings: Settings) -> dict[int, bytes | None]:
    keys = Keys(settings.redis.prefix)
    topic = settings.kafka.events_topic
    return {p: client.get(keys.ranker(topic, p)) for p in range(settings.kafka.events_partitions)}


def broken(events: list[Event], seed: int) -> tuple[list[Event], Counter[str]]:
    """``events`` with about one in ten followed by a copy the ranker must skip, and how many of each reason."""
    rng = random.Random(seed)
    values = {
        "no_features": None,
        "other_version": "00000000:" + ",".join(["1"] * len(FEATURES)),
        "malformed": FEATURE_VERSION + ":" + ",".join(["1"] * (len(FEATURES) + 1)),
    }
    mixed, skipped = [], Counter()
    for k, e in enumerate(events):
        mixed.append(e)
        if rng.random() < 0.1:
            reason = rng.choice(sorted(values))
            context = None if values[reason] is None else {CONTEXT_KEY: values[reason]}
            mixed.append(e.model_copy(update={"context": context, "event_id": f"x{k}"}))
            skipped[reason] += 1
    return mixed, skipped


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_ranker_learns_each_partitions_served_rows_once_and_counts_the_rest(
    isolated_settings, worker_factory
):
    """Views and clicks carrying served vectors (clicked items were served as personal, the rest as popular),
    mixed with events the ranker must skip. Each partition's stored ranker equals one trained independently on
    that partition's valid rows in offset order (the skipped events changed nothing); the states averaged score
    personal above popular; the worker counts rows by label and skips by reason, and its online AUC is the
    AUC of the independent run's progressive predictions. With a prior (RECSTREAM_RANKER_PRIOR_CTR), which the
    stored states carry."""
    settings = isolated_settings.replace(batch_max=30, ranker_prior_ctr=1.0, ranker_standardize=False)
    _, _, events = world(n_users=80, n_items=50, n_events=3_000, seed=7)
    events, skipped = broken(served(events), seed=8)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, events=events, batch_events=7)
    wait_until(lambda: applied_events(client, "rs") == len(events), what="all events applied")

    r = settings.ranker
    config = FTRLConfig(alpha=r.alpha, beta=r.beta, l1=r.l1, l2=r.l2, prior=prior_weights(r.prior_ctr))
    expected = {p: FTRLRanker(len(FEATURES), config) for p in range(settings.kafka.events_partitions)}
    predictions, labels = [], []
    for p, ranker in expected.items():
        mine = [e for e in events if partition_for(e.user_id, settings.kafka.events_partitions) == p]
        rows = [(decode_features(e.context.get(CONTEXT_KEY)), e.type == "click") for e in mine if e.context]
        rows = [(x, y) for x, y in rows if x is not None]
        ranker.update(np.array([x for x, _ in rows]), [y for _, y in rows], predictions)
        labels += [y for _, y in rows]
    stored = ranker_states(client, settings)
    assert stored == {p: ranker.to_bytes() for p, ranker in expected.items()}
    assert all(FTRLRanker.from_bytes(state).config.prior == prior_weights(1.0) for state in stored.values())

    vectors = np.array([served_vector("personal"), served_vector("popular")])
    personal, popular = np.mean([FTRLRanker.from_bytes(state).score(vectors) for state in stored.values()], axis=0)
    assert personal > popular

    clicks = sum(labels)
    want = {("recstream_worker_ranker_rows_total", (("label", "click"),)): clicks,
            ("recstream_worker_ranker_rows_total", (("label", "view"),)): len(labels) - clicks}  # fmt: skip
    want |= {("recstream_worker_ranker_rows_skipped_total", (("reason", k),)): n for k, n in skipped.items()}
    topic = settings.kafka.events_topic
    want |= {
        ("recstream_worker_ranker_updates", (("partition", str(p)), ("topic", topic))): ranker.n_updates
        for p, ranker in expected.items()
    }
    wait_until(lambda: {k: scraped(worker.metrics()).get(k) for k in want} == want, what="the ranker's counters")
    assert scraped(worker.metrics())[("recstream_worker_ranker_online_auc", ())] == pytest.approx(
        auc(predictions, labels), abs=1e-9
    )


@pytest.mark.parametrize("train", [True, False], ids=["training-on", "training-off"])
async def test_training_off_reads_and_writes_no_ranker_state(isolated_settings, train):
    settings = isolated_settings.replace(ranker_train=train)
    topic = settings.kafka.events_topic
    _, _, events = world(n_users=5, n_items=5, n_events=20, seed=9)

    client = AsyncRedis.from_url(settings.redis.url)
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters)
    try:
        await processor.process([Message(topic, 2, 0, encode(served(events)))])
    finally:
        await client.aclose()
    state = ranker_states(redis.Redis.from_url(settings.redis.url), settings)[2]
    assert (state is not None) == train
