"""Reading the log outside faust (recstream/eventlog/log.py): exact offset ranges, whole topics, training's read."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from recstream.eventlog.log import MissingTopic, open_log, read, whole_topic
from recstream.jobs import training
from tests.streams.scenario import publish, publish_raw, world

pytestmark = pytest.mark.integration


async def test_a_range_yields_exactly_its_offsets_in_bounded_chunks(isolated_settings):
    settings = isolated_settings
    topic = settings.kafka.events_topic
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for k in range(10):
            await producer.send_and_wait(topic, str(k).encode(), partition=0, timestamp_ms=1_700_000_000_000 + k)
    finally:
        await producer.stop()
    async with open_log(settings) as consumer:
        chunks = [chunk async for chunk in read(consumer, {(topic, 0): (3, 7)}, max_records=2)]
        whole = [m async for chunk in read(consumer, await whole_topic(consumer, topic), 100) for m in chunk]
        empty = [chunk async for chunk in read(consumer, {(topic, 0): (5, 5), (topic, 1): (None, 0)}, 100)]
    assert [[m.offset for m in chunk] for chunk in chunks] == [[3, 4], [5, 6]]
    assert [(m.value, m.timestamp_ms) for m in chunks[0]] == [(b"3", 1_700_000_000_003), (b"4", 1_700_000_000_004)]
    assert [(m.partition, m.offset) for m in whole] == [(0, k) for k in range(10)]
    assert empty == []


async def test_training_reads_every_valid_record_of_items_and_events(isolated_settings):
    settings = isolated_settings
    _, items, events = world(n_users=20, n_items=10, n_events=500)
    await publish(settings, items=items, events=events, batch_events=30)
    await publish_raw(settings, b"{oops", key=b"u1")
    chunks = [chunk async for chunk in training.read_log(settings)]
    records = [record for chunk in chunks for record in chunk]
    assert max(len(chunk) for chunk in chunks) <= 30  # a message's events at a time, never the whole log
    assert [r.value for r in records if r.kind == "item"] == items
    assert sorted(r.value.event_id for r in records if r.kind == "event") == sorted(e.event_id for e in events)
    log = await training.collect_log(settings)
    assert len(log) == len(events) and log.content == {item.item_id: item for item in items}
    assert sorted(log.ts.tolist()) == sorted(e.ts for e in events)


async def test_a_missing_topic_is_an_error_naming_it_unless_it_may_be_missing(isolated_settings):
    """Read as an empty topic, a mistyped name made ``rebuild`` wipe the state and ``train`` hang. The erasures topic
    may be missing (nothing was ever erased, on a broker set up before it existed): training reads on without it."""
    settings = isolated_settings.replace(erasures_topic=f"no-such-topic-{uuid.uuid4().hex[:8]}")
    _, items, events = world(n_users=5, n_items=4, n_events=30)
    await publish(settings, items=items, events=events)
    async with open_log(settings) as consumer:
        with pytest.raises(MissingTopic, match=f"^topic '{settings.kafka.erasures_topic}' does not exist$"):
            await whole_topic(consumer, settings.kafka.erasures_topic)
        assert await whole_topic(consumer, settings.kafka.erasures_topic, missing_ok=True) == {}
    assert len(await training.collect_log(settings)) == len(events)
