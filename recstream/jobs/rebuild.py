"""``recstream rebuild``: every derived Redis key recomputed from the Kafka log and the current model.

The topics are the source of truth (``events`` kept forever, ``items`` and ``users`` compacted
to the latest value of each id), and every derived value is a function of the log applied in
order (recstream/store/state.py). So with the workers stopped the rebuild

1. refuses while the worker group has members (a worker would write while keys are deleted), and when a topic it
   replays does not exist (:class:`~recstream.eventlog.log.MissingTopic`: a mistyped name read as an empty topic
   wiped the state);
2. deletes every key under the prefix except :data:`recstream.contracts.keys.NOT_DERIVED`;
3. activates the current model version (``model:current``, else the newest on disk): its item
   neighbours, then the pointer, as ``recstream train`` publishes it;
4. replays ``users``, then ``items``, then ``events``, each from its log start to its end as of
   now, through the workers' own :class:`~streams.processor.BatchProcessor` and
   :class:`~recstream.store.state.StateStore`, with the same item feed (:func:`streams.live_model.follow_items`),
   leaving out the user records and events of every erased user (the ``erasures`` topic, which also
   refills ``erased`` and ``erased:checked``, how far it was read). Readers keep serving, ``DELETE
   /v1/users/{id}`` too: the erased set is refreshed before each chunk, the batch script writes nothing of a
   user once erased, and every user erased since the replay began is erased in Redis again once it ends (the
   user's share of the counters stays until the next rebuild, as after any erasure);
5. commits those end offsets for the worker group, so restarted workers go on from there.

The result is the state of a clean run of one worker that read the users and items before the
events (the order of ``tests/streams/scenario.py``'s runs) under the current model. Invalid
messages are counted, not dead-lettered again: the live workers already sent them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from recstream.contracts.events import Kind
from recstream.contracts.keys import NOT_DERIVED, Keys, pointed_version
from recstream.contracts.settings import Settings
from recstream.eventlog.connection import client_options
from recstream.eventlog.erasures import erased_between, without_users
from recstream.eventlog.log import commit_offsets, open_log, read, whole_topic
from recstream.jobs import training
from recstream.models.artifacts import ArtifactError, ModelArtifacts, latest_version, read_model
from recstream.store.connection import connect, unlink_scanned
from recstream.store.erasure import Commands, erase_users, mark_erased, note_checked
from recstream.store.state import StateStore
from recstream.streams.live_model import LiveModel, follow_items
from recstream.streams.processor import BatchProcessor, DeadLetter

Progress = Callable[[str, int, int], None]  # (topic, messages just replayed, messages in the topic at most)


class RebuildError(Exception):
    """The rebuild cannot run (workers are running, the current model cannot be read); nothing was changed."""


@dataclass
class RebuildReport:
    deleted_keys: int
    model_version: str | None
    messages: dict[str, int]  # per topic
    events: int  # views and clicks applied (the events counted in CTR: recstream/contracts/feedback.py)
    invalid: int
    seconds: float


async def active_members(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Client ids of the worker group's members (a killed worker stays one until its session times out).

    A broker that never had a consumer group answers "coordinator not available" until it has created
    its offsets topic (the first request starts that): retriable errors are retried for ``timeout_s``.
    """
    admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=10_000)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                responses = await admin.describe_consumer_groups([settings.worker.group])
                break
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    return [member[1] for response in responses for group in response.groups for member in group[5]]


async def rebuild(settings: Settings, progress: Progress | None = None) -> RebuildReport:
    started = time.perf_counter()
    members = await active_members(settings)
    if members:
        raise RebuildError(
            f"consumer group {settings.worker.group} has {len(members)} active member(s) ({', '.join(members)}): "
            "stop the workers first (a killed worker counts until its session times out)"
        )
    async with open_log(settings) as consumer:  # before deleting: a missing topic (a mistyped name) stops here
        for topic, _ in _replayed(settings):
            await whole_topic(consumer, topic)
    redis = connect(settings)
    try:
        version, artifacts = await _current_model(settings, redis)  # before deleting: a broken model stops here
        deleted = await delete_derived(redis, Keys.of(settings))
        if artifacts is not None:
            await training.activate(settings, artifacts, version)
        messages, invalid, ends = await _replay(settings, redis, progress)
        totals = await redis.hmget(Keys.of(settings)("totals"), "views", "clicks")
    finally:
        await redis.aclose()
    await commit_offsets(settings, ends)
    events = sum(int(n) for n in totals if n is not None)
    return RebuildReport(deleted, version, messages, events, invalid, time.perf_counter() - started)


async def delete_derived(redis: Redis | RedisCluster, keys: Keys) -> int:
    """Delete every key under the prefix but :data:`NOT_DERIVED` (on a cluster: in every slot, matched without
    their hash tag); returns how many."""
    kept = [keys.prefix + ":" + pattern for pattern in NOT_DERIVED]

    def derived(key: str) -> bool:
        return not any(fnmatch.fnmatchcase(re.sub(r":\{[^}]*\}", "", key, count=1), p) for p in kept)

    return len(await unlink_scanned(redis, f"{keys.prefix}:*", derived))


async def _current_model(settings: Settings, redis: Redis) -> tuple[str | None, ModelArtifacts | None]:
    """``model:current``, else the newest version on disk (Redis lost the pointer), else none; a version that cannot
    be read (not in this model folder, incomplete) stops the rebuild."""
    current = await redis.get(Keys.of(settings)("model:current"))
    version = pointed_version(current) if current else await asyncio.to_thread(latest_version, settings.model.dir)
    if version is None:
        return None, None
    try:
        return version, await asyncio.to_thread(read_model, settings.model.dir, version)
    except ArtifactError as exc:
        source = "model:current" if current else "the newest on disk"
        raise RebuildError(
            f"model {version} ({source}) cannot be read from {settings.model.dir} (RECSTREAM_MODEL_DIR): {exc}"
        ) from None


def _replayed(settings: Settings) -> tuple[tuple[str, Kind], ...]:
    """The topics replayed, in their order, each with the kind of its records."""
    kafka = settings.kafka
    return (kafka.users_topic, "user"), (kafka.items_topic, "item"), (kafka.events_topic, "event")


async def _replay(
    settings: Settings, redis: Redis, progress: Progress | None
) -> tuple[dict[str, int], int, dict[tuple[str, int], int]]:
    invalid = 0

    async def count_dead_letters(letters: list[DeadLetter]) -> None:
        nonlocal invalid
        invalid += len(letters)

    store, keys = StateStore(redis, settings), Keys.of(settings)
    model = LiveModel(settings)
    item_feed = asyncio.create_task(follow_items(settings, model))
    messages: dict[str, int] = {}
    ends: dict[tuple[str, int], int] = {}
    try:
        async with open_log(settings) as consumer, open_log(settings) as erasures_consumer:
            erasures = _Erasures(erasures_consumer, settings.kafka.erasures_topic)
            erased = await erasures.refresh()
            await mark_erased(redis, keys, erased)
            await note_checked(redis, keys, erasures.ends)
            for topic, kind in _replayed(settings):
                ranges = await whole_topic(consumer, topic)
                ends.update({tp: end for tp, (_, end) in ranges.items()})
                total = sum(end for _, end in ranges.values())
                processor = BatchProcessor(kind, store, settings, count_dead_letters, model, partitions=len(ranges))
                messages[topic] = 0
                async for chunk in read(consumer, ranges, settings.worker.batch_max):
                    await processor.process(without_users(chunk, await erasures.refresh()) if kind != "item" else chunk)
                    messages[topic] += len(chunk)
                    if progress is not None:
                        progress(topic, len(chunk), total)
                await processor.finish_pending()  # what the last batch left undone, as an idle worker does
            # erased by a reader during the replay: the erasure deleted what the chunks before it wrote and the batch
            # script wrote nothing of the user after it; once more for a new item's field its SCAN could not see
            await erase_users(Commands(redis), keys, sorted(await erasures.refresh() - erased))
    finally:
        item_feed.cancel()
        await asyncio.gather(item_feed, return_exceptions=True)
    return messages, invalid, ends


class _Erasures:
    """The erased users as of now: each call reads the erasures topic from where the last one ended (erasures are
    never withdrawn). Its own consumer: reading a topic reassigns the consumer, and the replay's is in the middle of
    one."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer, self.topic = consumer, topic
        self.users: frozenset[str] = frozenset()
        self.ends: dict[tuple[str, int], int] = {}
        """The end offsets :attr:`users` were read up to."""

    async def refresh(self) -> frozenset[str]:
        users, self.ends = await erased_between(self.consumer, self.topic, self.ends)
        self.users |= users
        return self.users
