"""Which model version this worker serves, hot-swapped, and the item stream every worker follows.

Items are broadcast: each worker reads *all* partitions of ``items`` from the beginning
(a compacted topic, so that is one message per item) with its own group-less consumer, and
appends new items to its index at once. The faust ``items`` agent, by contrast, is
partitioned across the group and writes the shared Redis item state.

Fold-ins (recstream/store/fold_ins.py) are broadcast too: each worker tails the fold-in log and
replaces a graduated item's content vector in its own index; the worker whose batch graduated
the item computes it.

Hot swap: when ``model:current`` names a version other than the one served, the next batch
loads it in a thread (the event loop keeps running), replays the known items and the
version's stored fold-ins into it and only then swaps, so a batch sees the old model or the
new one, never half of one. Fold-ins stored under an older version are not carried over:
the new version was trained on the events that graduated those items.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from recstream.models.artifacts import read_model
from recstream.streams import metrics
from recstream.streams.personalize import Personalizer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recstream.contracts.events import ItemEvent, decode
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.connection import client_options
from recstream.runtime.backoff import RetryDelays
from recstream.runtime.garbage_collector import freeze_long_lived
from recstream.store.connection import connect
from recstream.store.fold_ins import FoldInStore

log = logging.getLogger(__name__)
FOLD_IN_POLL_S = 0.1  # how often a worker looks for new fold-ins in the log (a fold-in is rare; this is cheap)


class LiveModel:
    """The current :class:`Personalizer` (None before the first model), every item seen and the fold-ins."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Personalizer | None = None
        self.items: dict[str, ItemEvent] = {}
        self.fold_ins = FoldInStore(connect(settings, socket_timeout=30), Keys.of(settings))
        self._early: dict[str, dict[str, np.ndarray]] = {}  # version not served yet → item → logged fold-in
        self._log_position: str | None = None  # the fold-in log's last id this worker has read
        self._failed: str | None = None
        self._loading = asyncio.Lock()  # three agents ask; one loads
        self._building: tuple[str, asyncio.Future[Personalizer]] | None = None  # a build outlives a cancelled wait
        # Set once the item feed has applied every item that existed when the worker started:
        # until then a user step would miss items a clean run knows, so personalization waits.
        self.items_caught_up = asyncio.Event()

    def apply_item(self, item: ItemEvent) -> None:
        self.items[item.item_id] = item
        if self.current is not None:
            self.current.apply_item(item)
            metrics.INDEX_SIZE.set(len(self.current.index))

    async def ensure(self, version: str | None) -> None:
        """Serve ``version`` from now on (loaded off the event loop); a broken version is logged once."""
        async with self._loading:
            if version is None or version == self._failed or (self.current and self.current.version == version):
                return
            await self._load(version)

    async def _load(self, version: str) -> None:
        """Build ``version`` off the loop and swap it in. A batch attempt that hangs past its stuck limit cancels its
        wait, not the thread: the next attempt waits for the same build instead of starting another beside it (each
        would take longer than the last, and none would finish within the limit)."""
        if self._building is None or self._building[0] != version:
            self._building = (version, asyncio.ensure_future(asyncio.to_thread(self._build, version)))
        building = self._building[1]
        try:
            fresh = await asyncio.shield(building)  # a cancelled wait leaves the build to the next attempt
        except Exception as exc:  # any error of the version's own (a manifest without a key, a singular gram)
            self._building = None
            log.error("cannot load model %s, keeping %s: %r", version, self.current and self.current.version, exc)
            self._failed = version  # raised, every batch of every agent would retry it forever
            metrics.MODEL_LOAD_FAILURES.inc()
            return
        self._building = None
        await self._start_log()  # before reading the stored fold-ins: the follower takes every later one
        stored, unreadable = await self.fold_ins.stored(version)
        metrics.count_unreadable({"fold_in": unreadable})
        # no await from here to the swap: no item or fold-in can slip in between
        for item in self.items.values():
            fresh.apply_item(item)
        # the log follower kept what it read meanwhile for this version (stored after the read above)
        early = self._early.pop(version, {})
        for item, vector in (_fitting(fresh, stored, "fold_in") | _fitting(fresh, early, "fold_in_log")).items():
            fresh.apply_fold_in(item, vector)
        self._early = {v: early for v, early in self._early.items() if v > version}  # versions sort by time
        self.current = fresh
        freeze_long_lived()  # after the swap: the old version is collected unless still referenced
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(version).set(1)
        metrics.INDEX_SIZE.set(len(fresh.index))
        log.warning("serving model %s (%d items in the index)", version, len(fresh.index))

    def _build(self, version: str) -> Personalizer:
        """The version's personalizer, off the event loop (reading the artifacts and factoring the gram take seconds
        at scale); items and fold-ins are applied to it on the loop."""
        m = self.settings.model
        return Personalizer(
            version, read_model(m.dir, version), m.history_cap, m.candidates_m, m.feedback_types, m.batch_candidates_m
        )

    def apply_fold_in(self, version: str, item: str, vector: np.ndarray) -> None:
        """A logged fold-in: applied now if ``version`` is served, kept for when it is if it is newer."""
        if self.current is not None and self.current.version == version:
            if _fitting(self.current, {item: vector}, "fold_in_log"):
                self.current.apply_fold_in(item, vector)
        elif self.current is None or version > self.current.version:
            self._early.setdefault(version, {})[item] = vector

    async def fold_in(self, items: list[str]) -> None:
        """Fold in graduated items (a batch returned them as pending): each one's vector from its users'
        vectors, applied here at once, then stored and logged for every worker (recstream/store/fold_ins.py)."""
        personalizer = self.current
        if personalizer is None or not items:
            return
        inputs, unreadable = await self.fold_ins.users(items, personalizer.step.dim)
        metrics.count_unreadable({"fold_in_user": unreadable})
        results = []
        for item in items:
            users = inputs[item]
            vector = personalizer.fold_in(users.vectors, users.weights)
            if vector is not None and personalizer.apply_fold_in(item, vector):
                results.append((item, vector, personalizer.similar(item)))
            else:  # no user has a vector, or the model knows the item: it keeps its vector
                results.append((item, None, None))
        metrics.FOLD_INS.inc(await self.fold_ins.save(personalizer.version, results))

    async def follow_fold_ins(self) -> None:
        """Apply every fold-in any worker logs, for as long as the worker runs, waiting out Redis outages and Redis
        errors alike: a Redis Cluster answers CLUSTERDOWN while a failed master's replica takes over, a restarted
        Redis LOADING, a demoted master READONLY. Any of them escaping ended the item feed, which crashed the
        faust app: the worker stopped applying while its process lived."""
        backoff = RetryDelays()
        while True:
            try:
                await self._start_log()
                assert self._log_position is not None
                self._log_position, fold_ins, unreadable = await self.fold_ins.read_log(self._log_position)
                _raise_if_cancelled()
                metrics.count_unreadable({"fold_in_log": unreadable})
                for fold_in in fold_ins:
                    self.apply_fold_in(fold_in.version, fold_in.item, fold_in.vector)
                metrics.FOLD_INS_FOLLOWED.inc(len(fold_ins))
                backoff.reset()
                if not fold_ins:
                    await asyncio.sleep(FOLD_IN_POLL_S)
            except RedisError as exc:
                unavailable = isinstance(exc, RedisConnectionError | RedisTimeoutError)
                reason = "redis_unavailable" if unavailable else "redis_error"
                metrics.FOLD_IN_LOG_RETRIES.labels(reason).inc()
                log.warning("%s (%r); reading the fold-in log again in %.1f s", reason, exc, backoff.delay)
                await backoff.wait()

    async def _start_log(self) -> None:
        """Follow the log from its end, once: every earlier fold-in is in the hash a version load reads."""
        if self._log_position is None:
            end = await self.fold_ins.log_end()
            if self._log_position is None:  # the follower or a load may have set it during the await
                self._log_position = end


def _fitting(personalizer: Personalizer, fold_ins: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The fold-ins whose vector fits ``personalizer`` (one finite value per factor); the others, written by something
    else than a worker of this version, are logged, counted and left out: the item keeps the vector it has (its
    content vector, or an earlier fold-in)."""
    dim, fitting, unfit = personalizer.step.dim, {}, []
    for item, vector in fold_ins.items():
        if vector.shape != (dim,):
            unfit.append(f"item {item} of model {personalizer.version}: {vector.size} values, not {dim}")
        elif not np.isfinite(vector).all():
            unfit.append(f"item {item} of model {personalizer.version}: a value that is not finite")
        else:
            fitting[item] = vector
    metrics.count_unreadable({kind: unfit})
    return fitting


def _raise_if_cancelled() -> None:
    """Stop a task that was cancelled during a Redis command: redis-py 8.1's asyncio client can retry the
    command and return normally instead of raising (a loop cancelled at random moments hit it within a few
    tries), which left the fold-in follower running for good and whoever awaited it (a shutdown, the rebuild)
    hung."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def follow_items(settings: Settings, model: LiveModel) -> None:
    """Apply every item event and every fold-in, for as long as the worker runs."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_follow_item_topic(settings, model))
        group.create_task(model.follow_fold_ins())


async def _follow_item_topic(settings: Settings, model: LiveModel) -> None:
    """Apply every item event of every partition, from the beginning.

    Caught up means the consumer's position reached each partition's end offset as of the start, not that a
    record at end − 1 arrived: that offset may hold no record (a transaction's commit marker, records deleted
    by ``kafka-delete-records`` or retention, compaction), and waiting for it held every user step for good.
    """
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        # partitions_for_topic only knows subscribed topics; a full metadata fetch knows them all
        cluster = await consumer._client.fetch_all_metadata()
        topic = settings.kafka.items_topic
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        behind = await consumer.end_offsets(partitions)
        while True:
            if not model.items_caught_up.is_set():  # position: past every record and marker returned so far
                behind = {tp: end for tp, end in behind.items() if await consumer.position(tp) < end}
                if not behind:
                    model.items_caught_up.set()
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    # the items agent's clock (streams/processor.py): what it dead-letters stays out of the index
                    now_ms = int(time.time() * 1000)
                    at_ms = now_ms if message.timestamp < 0 else min(now_ms, message.timestamp)  # -1: none recorded
                    valid, _ = decode(message.value, "item", at_ms)
                    for item in valid:
                        model.apply_item(item)
    finally:
        await consumer.stop()
