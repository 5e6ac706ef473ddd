"""The worker on a Redis Cluster (``--clusters``): a batch is one script call per hash slot, and the state stays
effectively-once when a worker dies between those calls; a cluster run's state equals a run's on one Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis
from recstream.models.artifacts import read_model
from recstream.streams.processor import BatchProcessor, DeadLetter
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream.contracts.events import Event, encode, partition_for
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message
from recstream.jobs import training
from recstream.shell import infra
from recstream.store.state import Applied, Effect, StateStore
from recstream.store.state_dump import differing_keys, dump_state, settled
from tests.conftest import wait_until
from tests.streams.scenario import T0, for_prefix, publish, trained, world

pytestmark = pytest.mark.integration


@pytest.fixture
def on_cluster(clusters: infra.Clusters) -> Settings:
    """Topics of their own on the replicated Kafka, keys under a prefix of their own on the Redis Cluster."""
    suffix = uuid.uuid4().hex[:8]
    settings = clusters.settings.on_topics(suffix, worker_group=f"worker-{suffix}", redis_prefix=f"t{suffix}")
    asyncio.run(infra.ensure_topics(settings))
    return settings


def cluster_client(settings: Settings) -> redis.RedisCluster:
    return redis.RedisCluster.from_url(settings.redis.url)


def applied_events(client: redis.Redis | redis.RedisCluster, settings: Settings) -> int:
    totals = client.hgetall(Keys.of(settings)("totals"))
    return int(totals.get(b"views", 0)) + int(totals.get(b"clicks", 0))


def users_with_segment(client: redis.Redis | redis.RedisCluster, settings: Settings) -> int:
    keys = Keys.of(settings)
    return sum(client.hlen(f"{keys.slot(p)}:user:seg") for p in range(keys.partitions or 1))


def slots_agree(client: redis.RedisCluster, settings: Settings) -> bool:
    """Whether every events partition's slot holds the watermark the shared slot holds for it. A batch is one script
    call per slot, sent together: the shared slot's totals can show a batch whose partition slot's call (the users'
    histories, vectors, seen sets, the partition's ids and ranker) has not been applied yet."""
    keys, topic = Keys.of(settings), settings.kafka.events_topic
    shared = client.hgetall(keys.watermarks(None))  # first: a batch the shared slot shows has its other calls sent
    return all(
        client.hget(keys.watermarks(p), f"{topic}:{p}") == shared.get(f"{topic}:{p}".encode())
        for p in range(keys.partitions or 1)
    )


class DiesBetweenSlots(StateStore):
    """A store whose first batch reaches one slot only (``survivor``) before the worker "dies": the call to
    the other slot never happens and the batch fails as a lost connection does."""

    survivor: str | None = None

    def _payloads(self, effect: Effect) -> dict:
        parts = super()._payloads(effect)
        return {slot: part for slot, part in parts.items() if slot == self.survivor} if self.survivor else parts

    async def apply(self, effect: Effect) -> Applied:
        applied = await super().apply(effect)
        if self.survivor is not None:
            self.survivor = None
            raise RedisConnectionError("the worker died between its slots' calls")
        return applied


@pytest.mark.parametrize("ids", [False, True], ids=["no-event-ids", "event-ids"])
@pytest.mark.parametrize("survivor", ["shared", "partition"])
async def test_a_batch_that_reached_one_slot_only_is_completed_once(on_cluster: Settings, survivor: str, ids: bool):
    """The first batch (offsets 0-1) reaches one slot only; the retry comes with more messages (0-3): the
    processor applies 0-1 alone (the slot that has them answers "done"), then 2-3. Counters (shared slot) and
    seen sets (partition slot) hold every event once. With event ids, the partition slot that got the batch stored
    them: re-applied to the shared slot, the events are not their own duplicates (they were, and the counters
    lost them: the redis-failover fault run, where the shared slot's new master lost a window)."""
    settings, topic = on_cluster, on_cluster.kafka.events_topic
    keys = Keys.of(settings)
    partition = 1
    users = [u for u in (f"u{k}" for k in range(100)) if partition_for(u, keys.partitions or 1) == partition][:3]
    kinds = ("click", "view", "view")
    batches = [
        [
            Event(
                type=kinds[(offset + k) % 3],
                user_id=user,
                item_id=f"i{offset * k % 5}",
                ts=T0 + 10 * offset + k,
                event_id=f"e{offset}.{k}" if ids else None,
            )
            for k, user in enumerate(users)
        ]
        for offset in range(4)
    ]
    messages = [Message(topic, partition, offset, encode(batch), T0 + offset) for offset, batch in enumerate(batches)]
    events = [e for batch in batches for e in batch]

    async def no_dead_letters(letters: list[DeadLetter]) -> None:
        raise AssertionError(letters)

    client = AsyncRedisCluster.from_url(settings.redis.url)
    store = DiesBetweenSlots(client, settings)
    store.survivor = keys.slot(None) if survivor == "shared" else keys.slot(partition)
    processor = BatchProcessor("event", store, settings, no_dead_letters)
    try:
        await processor.process(messages[:2])  # dies after one slot, retried: the retry completes it
        assert store.survivor is None
        await processor.process(messages)  # redelivered with more: 0-1 are dropped, 2-3 applied
        watermarks = [await client.hget(keys.watermarks(slot), f"{topic}:{partition}") for slot in (None, partition)]
        views = {k.decode(): int(v) for k, v in (await client.hgetall(keys("views"))).items()}
        clicks = {k.decode(): int(v) for k, v in (await client.hgetall(keys("clicks"))).items()}
        seen = {u: {i.decode() for i in await client.zrange(keys.user(u, "seen"), 0, -1)} for u in users}
    finally:
        await client.aclose()
    assert watermarks == [b"3", b"3"]
    assert views == {e.item_id: 0 for e in events} | dict(Counter(e.item_id for e in events if e.type == "view"))
    assert clicks == dict(Counter(e.item_id for e in events if e.type == "click"))
    assert seen == {u: {e.item_id for e in events if e.user_id == u} for u in users}


async def test_a_killed_worker_on_the_cluster_ends_with_the_state_of_a_clean_single_redis_run(
    on_cluster: Settings, services: Settings, worker_factory, tmp_path: Path
):
    """The same stream applied by a clean worker on one Redis and, on the Redis Cluster, by a worker SIGKILLed
    twice mid-stream (a kill can land between a batch's slot calls): the two states are equal key for key
    (tags removed), user vectors to 1e-6."""
    users, items, events = world(n_users=300, n_items=150, n_events=30_000, seed=5)
    base = on_cluster.replace(batch_max=40, worker_session_timeout_s=6)
    single = for_prefix(base.replace(redis_url=services.redis.url.rsplit("/", 1)[0] + "/3", redis_cluster=False),
                        "clean")  # fmt: skip
    single_client = redis.Redis.from_url(single.redis.url)
    single_client.flushdb()
    single, version = await trained(single, tmp_path, events[:5_000], items)
    cluster = for_prefix(
        base, f"{base.redis.prefix}c", model_dir=single.model.dir, candidates_m=single.model.candidates_m
    )
    await training.activate(cluster, read_model(single.model.dir, version), version)
    client = cluster_client(cluster)
    await publish(base, users=users, items=items)
    worker_factory(single)
    worker = worker_factory(cluster)
    wait_until(lambda: users_with_segment(single_client, single) == len(users), what="segments (one Redis)")
    wait_until(lambda: users_with_segment(client, cluster) == len(users), what="segments (cluster)")
    published = 0
    for k in range(2):
        before, published = published, len(events) * (k + 1) // 3
        await publish(base, events=events[before:published], batch_events=20)
        wait_until(lambda b=before: applied_events(client, cluster) > b, timeout_s=90, what=f"kill {k + 1}'s worker")
        worker.kill()
        worker = worker_factory(cluster)
    await publish(base, events=events[published:], batch_events=20)
    for c, s in ((client, cluster), (single_client, single)):
        wait_until(lambda c=c, s=s: applied_events(c, s) == len(events), timeout_s=180, what=f"{s.redis.prefix} run")
        wait_until(lambda c=c, s=s: settled(c, Keys.of(s)), what=f"{s.redis.prefix} run's rankings final")
    wait_until(lambda: slots_agree(client, cluster), what="every slot's call of the cluster run's last batches")
    cluster_state, single_state = dump_state(client, cluster.redis.prefix), dump_state(single_client, "clean")
    assert sum(key.endswith(":vec") for key in single_state) == len(users)
    assert differing_keys(cluster_state, single_state) == []
    single_client.flushdb()
