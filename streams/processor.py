"""One batch of Kafka messages → validated records → one atomic Redis effect (+ dead letters).

The same loop serves the three topics; what differs is how valid records become an
:class:`~recstream.store.state.Effect` (``build``). Messages at or below the partition's watermark
are dropped first (already applied, see recstream/store/state.py); a bad record goes to the
dead-letter topic with its reason and never stops the batch. An events batch also trains the online
ranker of each partition it holds (streams/ranker_training.py): the states are read with the batch's
users and written by the same script as the partitions' watermarks.

Gap repair: Redis persisted with ``appendfsync everysec`` can come back from a crash up to a
second behind what it acknowledged, while Kafka keeps the offsets the worker committed after
those batches. The watermark then lags the consumer: a partition's next message is past its
watermark + 1. Before applying such a batch the processor re-reads the missing offsets from the
log and applies them first (:meth:`BatchProcessor._repair`); on partition assignment it does the
same for every partition whose committed offset is past its watermark + 1
(:meth:`BatchProcessor.repair_behind`), so a quiet partition is repaired too. Offsets missing
from the log in that range (compacted away) cost one empty read and count as no gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from recstream.models.ranker import FTRLConfig
from recstream.streams import metrics
from recstream.streams.live_model import LiveModel
from recstream.streams.personalize import Personalizer
from recstream.streams.ranker_training import BatchTraining, Partition, RecentRows, batch_rows, train_batch
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recstream.contracts.events import Event, ItemEvent, Kind, Rejected, UserEvent, decode, segment_of
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message, Ranges
from recstream.store.aggregate import aggregate
from recstream.store.state import Applied, Effect, StaleWatermark, StateStore

MAX_STALE_RETRIES = 20
# Retries while Redis or Kafka is unreachable back off 0.1 s, 0.2 s, … up to this: a restarted Redis is
# back in the worker's hands within a second (recovery time in bench/reliability.py), not five.
RETRY_DELAY_MAX_S = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: Message
    rejected: Rejected


@dataclass(frozen=True, slots=True)
class Built:
    """What building a batch's effect leaves to observe once it is applied."""

    refreshed_ts: list[int]  # ts of the events that refreshed a candidate list
    training: BatchTraining | None = None  # what the online ranker learned (events only)


Records = list[Event] | list[ItemEvent] | list[UserEvent]
Build = Callable[[Records, list[Partition], Effect], Awaitable[Built]]  # records, the partition of each, effect
SendDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]
ReadLog = Callable[[Ranges], AsyncIterator[list[Message]]]  # recstream.eventlog.log.read_ranges with the settings bound


class BatchProcessor:
    """Applies batches of one topic's messages with effectively-once semantics."""

    def __init__(
        self,
        kind: Kind,
        store: StateStore,
        settings: Settings,
        send_dead_letters: SendDeadLetters,
        model: LiveModel | None = None,
        read_log: ReadLog | None = None,
    ) -> None:
        self.kind = kind
        self.read_log = read_log  # None: no gap repair (a reader of the log that has no gaps, like the rebuild)
        self.model = model
        self.store = store
        self.settings = settings
        self.send_dead_letters = send_dead_letters
        self._watermarks: dict[str, int] | None = None
        r = settings.ranker
        self.ranker_config = FTRLConfig(alpha=r.alpha, beta=r.beta, l1=r.l1, l2=r.l2)
        self.recent_rows = RecentRows()  # this worker's last rows learned: the online AUC and logloss
        if kind == "event":
            metrics.watch_ranker(self.recent_rows)
        self.build: Build = {
            "event": self._build_events,
            "item": self._build_items,
            "user": self._build_users,
        }[kind]

    def forget_watermarks(self) -> None:
        """Re-read watermarks (and histories) before the next batch: after a rebalance another worker
        may have moved them."""
        self._watermarks = None
        self.store.forget_histories()

    async def reload_watermarks(self) -> None:
        self._watermarks = await self.store.watermarks()

    async def process(self, messages: Sequence[Message]) -> Applied | None:
        """Apply a batch; while Redis (or, for a gap repair, Kafka) is unreachable, wait and retry the whole
        batch (never return without applying it: faust would commit its offsets and a restart would skip it)."""
        delay = 0.1
        while True:
            try:
                return await self._process_once(messages)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                metrics.REDIS_RETRIES.inc()
                log.warning("redis unavailable (%s); retrying the batch in %.1f s", exc, delay)
                self.forget_watermarks()
            except KafkaError as exc:  # only the gap repair reads Kafka here
                log.warning("cannot read the log to repair a gap (%r); retrying the batch in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_DELAY_MAX_S)

    async def repair_behind(self, tps: Sequence[tuple[str, int]], committed: Mapping[tuple[str, int], int]) -> None:
        """Re-apply from the log what Redis lost of ``tps``: offsets from the watermark + 1 up to the
        committed offset (the worker group had applied them, or it would not have committed past them)."""
        delay = 0.1
        while True:
            try:
                await self.reload_watermarks()
                assert self._watermarks is not None
                behind = {tp: committed[tp] for tp in tps if committed.get(tp, 0) > self._watermark(*tp) + 1}
                await self._repair(behind)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                metrics.REDIS_RETRIES.inc()
                log.warning("redis unavailable (%s); retrying the gap check in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_DELAY_MAX_S)

    def _watermark(self, topic: str, partition: int) -> int:
        assert self._watermarks is not None
        return self._watermarks.get(f"{topic}:{partition}", -1)

    async def _repair(self, ends: Mapping[tuple[str, int], int]) -> None:
        """Apply each partition's offsets from its watermark + 1 up to ``ends`` (exclusive), read from the log."""
        if not ends or self.read_log is None:
            return
        ranges = {tp: (self._watermark(*tp) + 1, end) for tp, end in ends.items()}
        replayed = 0
        async for chunk in self.read_log(ranges):
            await self._process_once(chunk, repair=False)
            replayed += len(chunk)
            metrics.GAP_MESSAGES.labels(chunk[0].topic).inc(len(chunk))
        if replayed:  # else the range was compacted away: no gap
            where = ", ".join(f"{t}:{p} from {start} to {end}" for (t, p), (start, end) in sorted(ranges.items()))
            log.warning("redis was behind the log (%s): re-applied %d messages", where, replayed)

    async def _process_once(self, messages: Sequence[Message], repair: bool = True) -> Applied | None:
        started = time.perf_counter()
        if self._watermarks is None:
            await self.reload_watermarks()
        for _ in range(MAX_STALE_RETRIES):
            assert self._watermarks is not None
            fresh = [m for m in messages if m.offset > self._watermarks.get(f"{m.topic}:{m.partition}", -1)]
            if len(fresh) < len(messages):
                metrics.MESSAGES_SKIPPED.labels(messages[0].topic).inc(len(messages) - len(fresh))
            if not fresh:
                return None
            if repair:
                first: dict[tuple[str, int], int] = {}
                for m in fresh:
                    first.setdefault((m.topic, m.partition), m.offset)
                await self._repair({tp: offset for tp, offset in first.items() if offset > self._watermark(*tp) + 1})
                if self._watermarks is None:  # a rebalance during the repair: re-read, then filter again
                    await self.reload_watermarks()
                    continue
            now_ms = int(time.time() * 1000)
            records: list = []
            partitions: list[Partition] = []
            dead: list[DeadLetter] = []
            effect = Effect()
            for message in fresh:
                # "too far in the future" is measured from the record's Kafka timestamp when it is earlier than
                # the wall clock: a replay of the log (rebuild, gap repair) then accepts what the live worker did
                at_ms = now_ms if message.timestamp_ms is None else min(now_ms, message.timestamp_ms)
                valid, rejected = decode(message.value, self.kind, at_ms)
                records.extend(valid)
                partitions.extend([(message.topic, message.partition)] * len(valid))
                dead.extend(DeadLetter(message, r) for r in rejected)
                tp = f"{message.topic}:{message.partition}"
                effect.watermarks[tp] = (self._watermarks.get(tp, -1), message.offset)
            built = await self.build(records, partitions, effect)
            if dead:
                await self.send_dead_letters(dead)  # before the watermark moves: at least once
            try:
                applied = await self.store.apply(effect)
            except StaleWatermark:
                metrics.STALE_RETRIES.inc()
                self.store.forget_histories()
                await self.reload_watermarks()
                continue
            self.store.remember_histories(effect.histories)
            if self._watermarks is not None:  # None: a rebalance meanwhile, re-read before the next batch
                self._watermarks.update({tp: new for tp, (_, new) in effect.watermarks.items()})
            self._observe(fresh[0].topic, records, dead, applied, started, built)
            metrics.count_experiment_events(effect.counters.variants, self.settings.experiment)
            if applied.fold_ins and self.model is not None:
                await self.model.fold_in(applied.fold_ins)
            return applied
        raise RuntimeError(f"watermarks kept moving under this worker {MAX_STALE_RETRIES} times in a row")

    def _observe(
        self,
        topic: str,
        records: list,
        dead: list[DeadLetter],
        applied: Applied,
        started: float,
        built: Built,
    ) -> None:
        now_ms = time.time() * 1000
        for letter in dead:
            metrics.DEAD_LETTERS.labels(topic, letter.rejected.code).inc()
        metrics.observe_many(metrics.CANDIDATE_REFRESH, _ages_s(now_ms, built.refreshed_ts))
        if built.training is not None:
            for trained in built.training.trained.values():
                self.recent_rows.add(trained.predictions, trained.labels)
            metrics.count_ranker_rows(built.training)
        if self.kind == "event":
            views = sum(1 for e in records if e.type == "view")
            metrics.EVENTS.labels(topic, "view").inc(views)
            metrics.EVENTS.labels(topic, "click").inc(len(records) - views)
            metrics.observe_many(metrics.FRESHNESS, _ages_s(now_ms, [e.ts for e in records]))
        else:
            metrics.EVENTS.labels(topic, self.kind).inc(len(records))
        metrics.BATCH_SIZE.labels(topic).observe(len(records))
        metrics.BATCH_SECONDS.labels(topic).observe(time.perf_counter() - started)
        metrics.PRIOR.set(applied.prior)
        metrics.RESCORES.inc(applied.full_rescore)
        metrics.GRADUATIONS.inc(len(applied.graduated))

    async def _build_events(self, events: list[Event], partitions: list[Partition], effect: Effect) -> Built:
        users = list(dict.fromkeys(e.user_id for e in events))
        s = self.settings
        rows = batch_rows(events, partitions) if s.ranker.train else None
        context = await self.store.read_users(users, rankers=list(rows.by_partition) if rows else ())
        effect.counters = aggregate(
            events, context.segments, s.model.trend_half_life_s * 1000, s.model.trend_epoch_half_lives
        )
        training = None if rows is None else train_batch(rows, context.rankers, self.ranker_config)
        if training is not None:
            effect.rankers = {partition: trained.state for partition, trained in training.trained.items()}
        personalizer = await self._personalizer(context.model_version)
        if personalizer is None:
            return Built([], training)
        started = time.perf_counter()
        update = personalizer.update_users(events, context.histories)
        effect.blobs += update.blobs
        effect.histories = update.histories
        effect.item_users = update.item_users
        metrics.USER_STEPS.inc(len(users))
        metrics.USER_STEP_SECONDS.observe(time.perf_counter() - started)
        return Built(update.refreshed_ts, training)

    async def _build_items(self, items: list[ItemEvent], _: list[Partition], effect: Effect) -> Built:
        personalizer = await self._personalizer((await self.store.read_users([], with_histories=False)).model_version)
        for item in items:
            available = item.available and item.op != "remove"
            features = orjson.dumps(item.features).decode()
            effect.meta.append((item.item_id, ",".join(item.categories), item.created_ts, item.ts, available, features))
            if personalizer is not None:
                self.model.apply_item(item)  # type: ignore[union-attr]  # idempotent; the item feed may be behind
                similar = personalizer.similar(item.item_id)
                if similar is not None:
                    effect.blobs.append((f"item:{item.item_id}:similar", similar))
        return Built([])

    async def _build_users(self, users: list[UserEvent], _: list[Partition], effect: Effect) -> Built:
        context = await self.store.read_users([u.user_id for u in users if u.preferred_categories])
        picks: dict[str, list[str]] = {}
        for user in users:
            if user.attributes:
                effect.user_segments[user.user_id] = segment_of(user.attributes)
            if user.preferred_categories or user.not_interested:
                prefs = {"categories": user.preferred_categories, "not_interested": user.not_interested}
                effect.blobs.append((f"user:{user.user_id}:prefs", orjson.dumps(prefs)))
            if user.preferred_categories and user.user_id not in context.histories:
                picks[user.user_id] = user.preferred_categories
        personalizer = await self._personalizer(context.model_version)
        if personalizer is None or not picks:
            return Built([])
        effect.blobs += personalizer.onboard(picks)
        return Built(list({user.user_id: user.ts for user in users if user.user_id in picks}.values()))

    async def _personalizer(self, version: str | None) -> Personalizer | None:
        if self.model is None:
            return None
        await self.model.items_caught_up.wait()
        await self.model.ensure(version)
        return self.model.current


def _ages_s(now_ms: float, ts_ms: list[int]) -> np.ndarray:
    """Seconds from each timestamp to ``now_ms`` (clock skew clipped at 0)."""
    return np.maximum(0.0, now_ms - np.asarray(ts_ms, dtype=np.float64)) / 1000
