"""The async producer client a real producer service imports.

Events are grouped per partition (Kafka's default partitioner on ``user_id``, over the topic's partition
count as the broker reports it: a setting that disagrees would scatter a user's events) into
micro-batch messages of up to ``batch_events`` events and the contract's message size
(contracts/events.micro_batches): one Kafka message per ~100 events
is what lets a faust agent apply 100k+ events/s (ARCHITECTURE.md, performance notes),
and one user's events stay ordered because they always share a partition. Items and
users go one message each to their compacted topics: an item keyed by its id, a user record by
contracts/events.user_record_key (a record of the preferences alone has a key of its own) on its user's
partition.

Delivery is confirmed: :meth:`EventProducer.flush` returns once the broker acknowledged
everything sent so far (``acks=all``, idempotent producer, so a retry never duplicates).
A server that answers each request for its own records uses :meth:`EventProducer.deliver`,
:meth:`EventProducer.deliver_user`, :meth:`EventProducer.deliver_items` and :meth:`EventProducer.erase_user`
instead: they send only the caller's messages, never a buffer shared with other callers, and return once the
broker acknowledged exactly those (the Kafka client still batches concurrent callers' messages into one
produce request per partition).
A message waits up to ``DELIVERY_TIMEOUT_MS`` (Kafka's own default ``delivery.timeout.ms``)
for a partition leader before its send fails: a broker restart takes seconds, but over 30 s
on a loaded machine (tests/reliability measured 37 s), and aiokafka fails a batch without a
leader once it is older than the request timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType

from aiokafka import AIOKafkaProducer

from recstream.contracts.events import (
    USER_RECORD_KEYS,
    Erasure,
    Event,
    ItemEvent,
    UserEvent,
    encode,
    micro_batches,
    partition_for,
    user_parts,
    user_record_key,
)
from recstream.contracts.settings import Settings
from recstream.eventlog.connection import client_options

MAX_IN_FLIGHT = 2_000  # unacknowledged messages before send() waits for the oldest
DELIVERY_TIMEOUT_MS = 120_000


class EventProducer:
    """Publish validated events, items and users with delivery confirmation.

    ``async with EventProducer(settings) as producer: await producer.send_events(events)``;
    leaving the block flushes.
    """

    def __init__(self, settings: Settings, *, batch_events: int | None = None) -> None:
        self.settings = settings
        self.batch_events = batch_events or settings.kafka.producer_batch_events
        self._kafka = AIOKafkaProducer(
            **client_options(settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.kafka.producer_linger_ms,
            max_batch_size=1 << 20,
            max_request_size=4 << 20,
            request_timeout_ms=DELIVERY_TIMEOUT_MS,  # also each batch's time to live in aiokafka
        )
        self._buffers: dict[int, list[Event]] = {}
        self._partitions = 0  # the events topic's partition count, read from the broker at the start
        self._user_partitions = 0  # the users topic's, read when the first user record or erasure goes out
        self._in_flight: list[asyncio.Future] = []
        self.events_sent = 0
        self.messages_sent = 0

    async def __aenter__(self) -> EventProducer:
        try:
            await self._kafka.start()
            self._partitions = len(await self._kafka.partitions_for(self.settings.kafka.events_topic))
        except BaseException:
            await self._kafka.stop()  # a start that failed (no broker) leaves the client half-open
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self._kafka.stop()

    async def send_events(self, events: Iterable[Event]) -> None:
        """Buffer events per partition; a full buffer becomes one micro-batch message."""
        for event in events:
            part = partition_for(event.user_id, self._partitions)
            buffer = self._buffers.setdefault(part, [])
            buffer.append(event)
            if len(buffer) >= self.batch_events:
                await self._send_buffer(part)

    async def deliver(self, events: Sequence[Event]) -> None:
        """Send these events as micro-batches of their own and return once the broker acknowledged all of them.

        A caller that is cancelled midway leaves what it already sent to be delivered, and nobody
        else's events: they were never in its hands.
        """
        partitions, size = self._partitions, self.batch_events
        by_partition: dict[int, list[Event]] = {}
        for event in events:
            by_partition.setdefault(partition_for(event.user_id, partitions), []).append(event)
        topic = self.settings.kafka.events_topic
        delivered = []
        for part, mine in by_partition.items():
            for first, body in micro_batches(mine, size):
                delivered.append(await self._kafka.send(topic, body, key=mine[first].user_id.encode(), partition=part))
        self.messages_sent += len(delivered)
        await asyncio.gather(*delivered)
        self.events_sent += len(events)

    async def deliver_user(self, user: UserEvent) -> None:
        """Send one user event and return once the broker acknowledged it (see :meth:`deliver`)."""
        key, partition = await self._user_placement(user)
        topic = self.settings.kafka.users_topic
        await (await self._kafka.send(topic, encode(user), key=key.encode(), partition=partition))

    async def send_item(self, item: ItemEvent) -> None:
        await self._send(self.settings.kafka.items_topic, item.item_id, encode(item))

    async def send_user(self, user: UserEvent) -> None:
        key, partition = await self._user_placement(user)
        await self._send(self.settings.kafka.users_topic, key, encode(user), partition)

    async def _user_placement(self, user: UserEvent) -> tuple[str, int]:
        """The record's key (contracts/events.user_record_key) and its user's partition."""
        return user_record_key(user.user_id, user_parts(user)), await self._user_partition(user.user_id)

    async def _user_partition(self, user_id: str) -> int:
        """The user's partition of the users topic, whose partition count is asked of the broker once, here: a
        producer of events alone never needs that topic (nor a permission on it)."""
        if not self._user_partitions:
            self._user_partitions = len(await self._kafka.partitions_for(self.settings.kafka.users_topic))
        return partition_for(user_id, self._user_partitions)

    async def deliver_items(self, items: Iterable[ItemEvent]) -> None:
        """Send the items and return once the broker acknowledged each of them."""
        topic = self.settings.kafka.items_topic
        await asyncio.gather(*[await self._kafka.send(topic, encode(i), key=i.item_id.encode()) for i in items])

    async def erase_user(self, erasure: Erasure) -> None:
        """The erasure on ``erasures`` (what rebuild and train honour), then a tombstone for the user on ``users``
        (compaction then drops the user's records); returns once both were acknowledged, in that order."""
        key, users = erasure.user_id.encode(), self.settings.kafka.users_topic
        await (await self._kafka.send(self.settings.kafka.erasures_topic, encode(erasure), key=key))
        partition = await self._user_partition(erasure.user_id)
        tombstones = [await self._kafka.send(users, None, key=key + suffix.encode(), partition=partition)
                      for suffix in USER_RECORD_KEYS]  # fmt: skip
        await asyncio.gather(*tombstones)

    async def flush(self) -> int:
        """Send partial micro-batches and wait until the broker acknowledged every message."""
        for part in list(self._buffers):
            await self._send_buffer(part)
        pending, self._in_flight = self._in_flight, []
        await asyncio.gather(*pending)
        return self.events_sent

    async def _send_buffer(self, part: int) -> None:
        buffer = self._buffers.pop(part, [])
        for first, body in micro_batches(buffer, self.batch_events):
            await self._send(self.settings.kafka.events_topic, buffer[first].user_id, body, partition=part)
        self.events_sent += len(buffer)

    async def _send(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            oldest, self._in_flight = (
                self._in_flight[: MAX_IN_FLIGHT // 2],
                self._in_flight[MAX_IN_FLIGHT // 2 :],
            )
            await asyncio.gather(*oldest)
        self._in_flight.append(await self._kafka.send(topic, value, key=key.encode(), partition=partition))
        self.messages_sent += 1
