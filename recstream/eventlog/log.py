"""The Kafka log read directly, outside faust: whole topics (training, rebuild) and offset ranges (gap repair).

A group-less consumer (``enable_auto_commit=False``) is assigned the partitions it reads, so reading
never joins or disturbs the workers' consumer group. A range's start below the partition's log start
(deleted by retention) reads from the log start; offsets missing inside a range (compacted away) are
simply absent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from recstream.contracts.settings import Settings
from recstream.eventlog.connection import client_options

METADATA_TRIES, METADATA_RETRY_S = 3, 0.5
Ranges = Mapping[tuple[str, int], tuple[int | None, int]]
"""(topic, partition) → (first offset, or None for the log start; end offset, exclusive)."""


@dataclass(frozen=True, slots=True)
class Message:
    """What the processor needs of a Kafka message (faust's ``EventT`` and aiokafka's record are adapted to this).

    ``timestamp_ms`` is the record's Kafka timestamp: validation measures "too far in the future" from
    it (never later than the wall clock), so a replay of the log accepts exactly what the live worker did.
    """

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int | None = None


@asynccontextmanager
async def _consumer(settings: Settings, **options: object) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer with the configured connection and no auto-commit, stopped on the way out."""
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), enable_auto_commit=False, **options)
    try:
        await consumer.start()  # inside: a consumer that failed to start is closed too
        yield consumer
    finally:
        await consumer.stop()


def open_log(settings: Settings) -> AbstractAsyncContextManager[AIOKafkaConsumer]:
    """A consumer that reads the topics from the earliest offset, outside any group."""
    return _consumer(settings, auto_offset_reset="earliest")


class MissingTopic(LookupError):
    """The brokers have no topic of that name (a mistyped ``RECSTREAM_*_TOPIC``, topics never created): read as an
    empty topic, it made ``recstream rebuild`` wipe the state and report success, and ``recstream train`` hang."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


async def whole_topic(
    consumer: AIOKafkaConsumer, topic: str, *, missing_ok: bool = False
) -> dict[tuple[str, int], tuple[int | None, int]]:
    """Every partition of ``topic`` from its log start to its end as of now; :class:`MissingTopic` when there is no
    such topic, unless ``missing_ok`` (then none: a topic that only exists once something was written to it)."""
    for attempt in range(1, METADATA_TRIES + 1):
        # partitions_for_topic only knows subscribed topics; a full metadata fetch knows them all
        numbers = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        if numbers or missing_ok:
            break
        if attempt == METADATA_TRIES:
            raise MissingTopic(topic)
        await asyncio.sleep(METADATA_RETRY_S)  # a topic created a moment ago may not be in this broker's metadata yet
    partitions = [TopicPartition(topic, p) for p in sorted(numbers or ())]
    ends = await consumer.end_offsets(partitions) if partitions else {}
    return {(tp.topic, tp.partition): (None, ends[tp]) for tp in partitions}


async def read(consumer: AIOKafkaConsumer, ranges: Ranges, max_records: int) -> AsyncIterator[list[Message]]:
    """The records of ``ranges`` in chunks of at most ``max_records``, each partition in offset order."""
    tps = {TopicPartition(*tp): end for tp, (_, end) in ranges.items()}
    consumer.assign(list(tps))
    for tp, (start, _) in ranges.items():
        if start is None:
            await consumer.seek_to_beginning(TopicPartition(*tp))
        else:
            consumer.seek(TopicPartition(*tp), start)
    pending = [tp for tp, end in tps.items() if await consumer.position(tp) < end]
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=max_records)
        chunk = [
            Message(r.topic, r.partition, r.offset, r.value, r.timestamp)
            for tp, records in batch.items()
            for r in records
            if r.offset < tps[tp]
        ]
        if chunk:
            yield chunk
        pending = [tp for tp in pending if await consumer.position(tp) < tps[tp]]


async def read_ranges(settings: Settings, ranges: Ranges) -> AsyncIterator[list[Message]]:
    """:func:`read` with a consumer of its own, in chunks of ``settings.worker.batch_max``."""
    async with open_log(settings) as consumer:
        async for chunk in read(consumer, ranges, settings.worker.batch_max):
            yield chunk


def _group_consumer(settings: Settings) -> AbstractAsyncContextManager[AIOKafkaConsumer]:
    """A consumer of the workers' group that never joins it (no subscription): it only reads and writes offsets."""
    return _consumer(settings, group_id=settings.worker.group)


async def committed_offsets(settings: Settings, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The worker group's committed offsets (the next offset to read) of ``tps`` that have one."""
    async with _group_consumer(settings) as consumer:
        found = {tp: await consumer.committed(TopicPartition(*tp)) for tp in tps}
    return {tp: offset for tp, offset in found.items() if offset is not None and offset >= 0}


async def commit_offsets(settings: Settings, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commit ``offsets`` for the worker group; the broker refuses while the group has members."""
    async with _group_consumer(settings) as consumer:
        consumer.assign([TopicPartition(*tp) for tp in offsets])
        await consumer.commit({TopicPartition(*tp): offset for tp, offset in offsets.items()})
