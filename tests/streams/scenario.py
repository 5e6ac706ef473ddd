"""Streams the stream-worker tests share: a small world, publishing through Kafka, a trained model."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from recstream.models.als import ALSConfig
from recstream.streams.live_model import LiveModel
from recstream.streams.processor import DeadLetter

from recstream.contracts.events import Event, ItemEvent, UserEvent, partition_for
from recstream.contracts.ranking import CONTEXT_KEY, FEATURES, encode_features
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.jobs.sources import Record
from recstream.shell.demo import metric_sum
from recstream.shell.infra import Child

T0 = 1_700_000_000_000
CATEGORIES = ["news", "sport", "music", "film"]


async def no_dead_letters(letters: list[DeadLetter]) -> None:
    """A BatchProcessor's dead-letter sender for a batch that must have none."""
    raise AssertionError(letters)


def world(n_users: int, n_items: int, n_events: int, seed: int = 1):
    rng = random.Random(seed)
    users = [
        UserEvent(user_id=f"u{k}", ts=T0, attributes={"age": rng.randint(15, 70), "gender": rng.choice("MF")})
        for k in range(n_users)
    ]
    items = [
        ItemEvent(op="new", item_id=f"i{k}", ts=T0, created_ts=T0 + k, categories=rng.sample(CATEGORIES, 2))
        for k in range(n_items)
    ]
    events = []
    for k in range(n_events):
        user, item = f"u{rng.randrange(n_users)}", f"i{int(rng.paretovariate(1.2)) % n_items}"
        events.append(Event(type="view", user_id=user, item_id=item, ts=T0 + 10 * k, event_id=f"v{k}"))
        if rng.random() < 0.1 + 0.3 * (int(item[1:]) % 3 == 0):
            events.append(Event(type="click", user_id=user, item_id=item, ts=T0 + 10 * k + 1, event_id=f"c{k}"))
    return users, items, events


def served_vector(generator: str, als_rank: float = 0.0) -> list[float]:
    """A feature vector as the reader serves it: the proposing generator's flag set, a user vector, an ALS rank."""
    values = dict.fromkeys(FEATURES, 0.0) | {generator: 1.0, "warm": 1.0, "als_rank": als_rank}
    return [values[name] for name in FEATURES]


def served(events: list[Event]) -> list[Event]:
    """:func:`world`'s events as the reader logs them, each with the vector its item was served with: a view
    that was clicked (``v<k>`` then ``c<k>``) was served as personal, the others as popular. So personal items
    are always clicked and popular ones never, and a ranker learning from them must score personal above popular."""
    clicked = {e.event_id[1:] for e in events if e.type == "click"}  # type: ignore[index]
    stamped = []
    for e in events:
        k = e.event_id[1:]  # type: ignore[index]
        vector = served_vector("personal" if k in clicked else "popular", als_rank=int(k) % 10 / 10)
        stamped.append(e.model_copy(update={"context": {CONTEXT_KEY: encode_features(vector)}}))
    return stamped


async def publish(settings: Settings, users=(), items=(), events=(), batch_events: int = 100) -> None:
    async with EventProducer(settings, batch_events=batch_events) as producer:
        for user in users:
            await producer.send_user(user)
        for item in items:
            await producer.send_item(item)
        await producer.send_events(events)


async def publish_raw(settings: Settings, value: bytes, key: bytes) -> None:
    """Bytes onto the events topic as they are (the producer would refuse invalid ones): a message to dead-letter."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka.events_topic, value, key=key)
    finally:
        await producer.stop()


def events_applied(worker: Child, topic: str) -> float:
    """Events of ``topic`` one worker process applied to Redis (its recstream_worker_events_total, every type)."""
    return metric_sum(worker.metrics(), f'recstream_worker_events_total{{topic="{topic}"')


async def until_every_worker_applies(
    settings: Settings, workers: list[Child], item: str, timeout_s: float = 90.0
) -> None:
    """A view of ``item`` on every events partition each second until each worker applied one: workers started
    together join the group seconds apart, and until the rebalance one alone applies everything."""
    n, topic = settings.kafka.events_partitions, settings.kafka.events_topic
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        worker.wait_ready(timeout_s)
    for turn in itertools.count():
        if min(events_applied(worker, topic) for worker in workers) > 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"a worker applied no event in {timeout_s:.0f} s: it never got a partition")
        users = {partition_for(f"join{turn}-{k}", n): f"join{turn}-{k}" for k in range(20 * n)}
        await publish(settings, events=[Event(type="view", user_id=u, item_id=item, ts=T0) for u in users.values()])
        await asyncio.sleep(1.0)


def applied_events(client: redis.Redis, prefix: str) -> int:
    totals = client.hgetall(f"{prefix}:totals")
    return int(totals.get(b"views", 0)) + int(totals.get(b"clicks", 0))


def for_prefix(settings: Settings, prefix: str, **more) -> Settings:
    return settings.replace(redis_prefix=prefix, worker_group=f"{settings.worker.group}-{prefix}", **more)


async def trained(
    settings: Settings, tmp_path: Path, events: list[Event], items: list[ItemEvent], candidates_m: int = 20
) -> tuple[Settings, str]:
    settings = settings.replace(model_dir=tmp_path / "models", candidates_m=candidates_m)
    log = training.collect([Record("item", i) for i in items] + [Record("event", e) for e in events])
    artifacts, _ = training.train(log, ALSConfig(factors=16, iterations=15, random_state=1), holdout=0)
    return settings, await training.publish(settings, artifacts)


async def model_for(settings: Settings, items: list[ItemEvent]) -> LiveModel:
    """The worker's live model of ``settings``' current version, with ``items`` as its item feed delivered them."""
    model = LiveModel(settings)
    for item in items:
        model.apply_item(item)
    model.items_caught_up.set()
    return model


async def dead_letters(settings: Settings, expected: int, timeout_s: float = 60.0) -> list:
    """The dead-letter topic's messages, read until at least ``expected`` came and a poll found no more (so one
    letter too many is seen), or the time ran out."""
    consumer = AIOKafkaConsumer(settings.kafka.dlq_topic, bootstrap_servers=settings.kafka.bootstrap,
                                auto_offset_reset="earliest", fetch_max_bytes=64 << 20)  # fmt: skip
    await consumer.start()
    letters: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            letters += [m for part in batch.values() for m in part]
            if len(letters) >= expected and not batch:
                break
    finally:
        await consumer.stop()
    return letters
