from __future__ import annotations

from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer

from recstream.contracts.events import (
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    Event,
    ItemEvent,
    Kind,
    UserEvent,
    decode,
    encode,
    partition_for,
)
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000


async def consume_all(settings: Settings, topic: str, kind: Kind, expected: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    messages = []
    try:
        while sum(len(decode(m.value, kind, T0 * 2)[0]) for m in messages) < expected:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"timed out with {len(messages)} messages on {topic}"
            messages += [m for part in batch.values() for m in part]
    finally:
        await consumer.stop()
    return messages


async def test_round_trip_through_the_broker_keeps_per_user_order(isolated_settings: Settings):
    settings = isolated_settings
    events = [
        Event(type="click" if k % 7 == 0 else "view", user_id=f"u{k % 37}", item_id=f"i{k % 101}", ts=T0 + k,
              event_id=f"e{k}")
        for k in range(5_000)
    ]  # fmt: skip
    items = [ItemEvent(op="new", item_id=f"i{k}", ts=T0, categories=["a", "b"]) for k in range(50)]
    users = [UserEvent(user_id=f"u{k}", ts=T0, attributes={"age": 20 + k}) for k in range(40)]
    async with EventProducer(settings, batch_events=64) as producer:
        await producer.send_events(events)
        for item in items:
            await producer.send_item(item)
        for user in users:
            await producer.send_user(user)
        assert await producer.flush() == len(events)

    messages = await consume_all(settings, settings.kafka.events_topic, "event", len(events))
    got: dict[str, list[Event]] = defaultdict(list)
    for message in messages:
        valid, rejected = decode(message.value, "event", T0 * 2)
        assert rejected == []
        assert {partition_for(e.user_id, settings.kafka.events_partitions) for e in valid} == {message.partition}
        for event in valid:
            got[event.user_id].append(event)
    want: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        want[event.user_id].append(event)
    assert got == want

    item_messages = await consume_all(settings, settings.kafka.items_topic, "item", len(items))
    assert [decode(m.value, "item", T0 * 2)[0][0] for m in item_messages] == items
    user_messages = await consume_all(settings, settings.kafka.users_topic, "user", len(users))
    assert sorted((decode(m.value, "user", T0 * 2)[0][0] for m in user_messages), key=lambda u: u.user_id) == sorted(
        users, key=lambda u: u.user_id
    )
    assert all(m.key.decode() == decode(m.value, "user", T0 * 2)[0][0].user_id for m in user_messages)


@pytest.mark.parametrize("setting", [3, 4, 5])
async def test_a_users_events_go_to_its_partition_of_the_real_topic_whatever_the_setting(isolated_settings, setting):
    """The producer hashed users over the events_partitions setting: with a topic of another size, a user's events
    landed where neither Kafka's default partitioner nor the worker's partition check expects them (the worker
    dead-letters them). It uses the partition count the broker reports."""
    settings = isolated_settings.replace(events_partitions=setting)
    real = isolated_settings.kafka.events_partitions
    events = [Event(type="view", user_id=f"u{k}", item_id="i1", ts=T0 + k) for k in range(40)]
    async with EventProducer(settings, batch_events=1) as producer:
        await producer.send_events(events)
    messages = await consume_all(settings, settings.kafka.events_topic, "event", len(events))
    assert sorted((decode(m.value, "event", T0 * 2)[0][0].user_id, m.partition) for m in messages) == sorted(
        (e.user_id, partition_for(e.user_id, real)) for e in events
    )


@pytest.mark.parametrize("deliver", [False, True])
async def test_a_batch_of_large_events_is_cut_by_bytes_too_so_the_workers_accept_every_message(
    isolated_settings: Settings, deliver: bool
):
    """At the largest batch setting (10,000 events) events of the reader's size made one 2.5 MB message, refused
    whole by every worker (contracts/events.decode): each message now stays within MAX_MESSAGE_BYTES, in order."""
    settings = isolated_settings.replace(producer_batch_events=MAX_EVENTS_PER_MESSAGE)
    context = {f"c{j}": "x" * 200 for j in range(2)}
    events = [Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k, context=context) for k in range(5_000)]
    assert sum(len(encode(e)) + 1 for e in events) > 2 * MAX_MESSAGE_BYTES
    async with EventProducer(settings) as producer:
        if deliver:
            await producer.deliver(events)
        else:
            await producer.send_events(events)
    messages = await consume_all(settings, settings.kafka.events_topic, "event", len(events))
    decoded = [decode(m.value, "event", T0 * 2) for m in messages]
    assert all(rejected == [] for _, rejected in decoded) and len(messages) >= 3
    assert [e for valid, _ in decoded for e in valid] == events


async def test_a_producer_of_events_alone_needs_no_users_topic(isolated_settings: Settings):
    """The users topic's partition count was asked of the broker at start, so a producer of events with no users
    topic (or no permission on it) failed to start; it is asked when the first user record goes out."""
    settings = isolated_settings.replace(users_topic="no-such-users-topic")
    events = [Event(type="view", user_id=f"u{k}", item_id="i1", ts=T0 + k) for k in range(3)]
    async with EventProducer(settings, batch_events=1) as producer:
        await producer.send_events(events)
    assert len(await consume_all(settings, settings.kafka.events_topic, "event", len(events))) == 3
