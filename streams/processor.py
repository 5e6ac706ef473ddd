"""One batch of Kafka messages → validated records → one atomic Redis effect (+ dead letters).

The same loop serves the three topics; what differs is how valid records become an
:class:`~recstream.store.state.Effect` (``build``). Messages at or below the partition's watermark
are dropped first (already applied, see recstream/store/state.py). Bad input never stops the batch: an invalid
record, a message over the size limit (its dead letter carries a bounded excerpt,
:data:`DEAD_LETTER_MAX_BYTES`) and an event on a partition its user does not hash to (another producer's
partitioner: two workers would write one user's history) go to the dead-letter topic with their reason; a
user's repeated ``event_id`` is dropped (:meth:`BatchProcessor._drop_duplicates`); the rest is applied. An
events batch also trains the online ranker of each partition it holds (streams/ranker_training.py): the
states are read with the batch's users and written by the same script as the partitions' watermarks.

A batch that cannot be applied (Redis unreachable or answering an error such as OOM, BUSY or READONLY; Kafka
unreachable for a gap repair or a dead letter; a bug) is retried with back-off for as long as it takes, never
skipped: the agent stays alive, the reason is counted (``recstream_worker_batch_retries_total``, alert
RecstreamWorkerBatchRetrying) and logged.

Gap repair: Redis persisted with ``appendfsync everysec`` can come back from a crash up to a
second behind what it acknowledged, while Kafka keeps the offsets the worker committed after
those batches. The watermark then lags the consumer: a partition's next message is past its
watermark + 1. Before applying such a batch the processor re-reads the missing offsets from the
log and applies them first (:meth:`BatchProcessor._repair`); on partition assignment it does the
same for every partition whose committed offset is past its watermark + 1
(:meth:`BatchProcessor.repair_behind`), so a quiet partition is repaired too. Offsets missing
from the log in that range (compacted away) cost one empty read and count as no gap. An erasure is a write Redis
can lose too: at each assignment, and before re-applying a lost window, the processor erases again every user of
the ``erasures`` topic that Redis does not hold as erased (:meth:`BatchProcessor._restore_erasures`), so the replay
writes nothing of them back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from recstream.streams import metrics
from recstream.streams.live_model import LiveModel
from recstream.streams.personalize import Personalizer
from recstream.streams.ranker_training import (
    BatchTraining,
    Partition,
    RecentRows,
    batch_rows,
    ftrl_config,
    train_batch,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recstream.contracts.events import (
    Event,
    ItemEvent,
    Kind,
    Rejected,
    UserEvent,
    decode,
    encode,
    partition_for,
    segment_of,
    user_parts,
)
from recstream.contracts.settings import Settings, WorkerSettings
from recstream.eventlog.erasures import erasures_since
from recstream.eventlog.log import Message, Ranges
from recstream.runtime.backoff import RetryDelays
from recstream.runtime.garbage_collector import collector_paused
from recstream.store.aggregate import aggregate
from recstream.store.erasure import Commands, checked_offsets, erase_users, note_checked, unmarked
from recstream.store.state import Applied, Effect, StaleWatermark, StateStore, refused

MAX_STALE_RETRIES = 20
STUCK_STALLS = 2
"""An attempt to apply a batch is cancelled and retried (reason ``stuck``) after this many ``worker_stall_s``
(/healthz turns red after one): most awaits of an attempt have their own bound (Redis socket timeouts, Kafka
fetch waits), not all (a lock inside a client, a gap repair waiting for offsets); this turns any hang into a
logged, counted retry instead of a worker that applies nothing while its process and group membership live on."""
FIRST_CALL_EVENTS = 10_000
"""The events bound of a processor's first script call, before it measured one (at most ``batch_max_events``):
the fixed bound that kept a catch-up call under a second at ×10 scale (issue 18)."""
DEAD_LETTER_MAX_REASON_BYTES = 1_024
"""The most of a reason a dead letter's header carries: with the value's cut, a dead letter always fits the producer."""
DEAD_LETTER_MAX_BYTES = 65_536
"""The most of a rejected input a dead letter carries. faust's producer refuses a message over 1,000,000 bytes
(key and headers included) with ProducerSendError, while the broker accepts up to 1,048,588: the whole of a
message near either limit could not be dead-lettered, and that error stopped the agent. The whole input stays in
its topic at the offset the ``source`` header names."""
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input and the message it came from, as the dead-letter topic gets it."""

    source: Message
    rejected: Rejected

    @property
    def value(self) -> bytes:
        """The rejected bytes, cut to their first :data:`DEAD_LETTER_MAX_BYTES`."""
        return self.rejected.payload[:DEAD_LETTER_MAX_BYTES]

    @property
    def headers(self) -> dict[str, bytes]:
        """``reason``; ``source`` (``topic:partition:offset``); ``size``, the rejected bytes before any cut."""
        source = self.source
        return {
            "reason": self.rejected.reason.encode()[:DEAD_LETTER_MAX_REASON_BYTES],
            "source": f"{source.topic}:{source.partition}:{source.offset}".encode(),
            "size": str(len(self.rejected.payload)).encode(),
        }


class DeadLetterError(Exception):
    """Sending a batch's dead letters failed (the batch is retried: a dead letter goes out before its watermark)."""


class WatermarksKeptMoving(Exception):
    """Another writer moved the watermarks under this worker :data:`MAX_STALE_RETRIES` times in a row."""


class Stopping(Exception):
    """The worker was told to stop (SIGTERM) while a batch could not be applied: the batch is given up, its messages
    never acknowledged, so no offset of it is committed and the worker that takes its partition applies it. Retrying
    on kept the process up until Redis took the batch (faust's stop waits for every message taken to be
    acknowledged)."""


RETRY_REASONS = ("redis_unavailable", "redis_error", "kafka", "dead_letters", "watermarks_moving", "stuck", "other")
"""The ``reason`` label of ``recstream_worker_batch_retries_total``: a fixed set, whatever the error says."""
WAITING_REASONS = frozenset(RETRY_REASONS) - {"other"}
"""Failures that waiting cures (Redis or Kafka away or refusing, another writer, a hang that timed out): a failed
attempt for one of these counts as a sign of life. One for ``other`` (an exception of the worker's own: a model that
cannot load, a solve that raised, a batch the script refused for a key of the wrong type or a number that is not
finite) does not, so a batch that keeps failing so turns /healthz red after ``worker_stall_s`` instead of retrying
forever behind a green one."""


def retry_reason(exc: Exception) -> str:
    """Which of :data:`RETRY_REASONS` a failed batch attempt counts under.

    >>> from redis.exceptions import ReadOnlyError, ResponseError
    >>> retry_reason(ReadOnlyError("You can't write against a read only replica."))
    'redis_error'
    >>> retry_reason(ResponseError("RECSTREAM_STATE rs:views is a string, expected a hash"))
    'other'
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "redis_unavailable"
    if refused(exc):  # the batch script refused what Redis holds or what the batch carries: no wait cures it
        return "other"
    if isinstance(exc, RedisError):  # OOM, BUSY, READONLY, NOSCRIPT, LOADING...: Redis answered with an error
        return "redis_error"
    if isinstance(exc, KafkaError):  # only the gap repair reads Kafka here
        return "kafka"
    if isinstance(exc, DeadLetterError):
        return "dead_letters"
    if isinstance(exc, WatermarksKeptMoving):
        return "watermarks_moving"
    return "other"


@dataclass(frozen=True, slots=True)
class Built:
    """What building a batch's effect leaves to observe once it is applied."""

    refreshed_ts: list[int]  # ts of the events that refreshed a candidate list
    training: BatchTraining | None = None  # what the online ranker learned (events only)


Records = list[Event] | list[ItemEvent] | list[UserEvent]


@dataclass(slots=True)  # not frozen: ``observed`` is set once the call is counted
class Call:
    """One built script call: its messages (at least one), the effect, and what to observe once it is applied."""

    fresh: list[Message]
    effect: Effect
    records: Records
    dead: list[DeadLetter]
    built: Built
    duplicates: int
    started: float  # perf_counter when building it began (the batch-seconds histogram)
    skipped: int = 0  # the batch's messages found applied already, counted when this call applied
    observed: bool = False  # counted (:meth:`BatchProcessor._observe`): a retry must not count it again


Then = Callable[[], Awaitable[None]]  # what runs once a pipelined batch is applied (streams/app.py: its acks)
# (valid records, each one's arrival ms (its record's timestamp, never past the wall clock), the partition of
# each, the effect to fill) → what the batch built
Build = Callable[[Records, list[int], list[Partition], Effect], Awaitable[Built]]
Decoded = tuple[str, int, list]  # a message's "topic:partition", its arrival ms, its valid records
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
        partitions: int | None = None,
        beat: Callable[[], None] | None = None,
        stopping: Callable[[], bool] = lambda: False,
        give_up: Callable[[Stopping], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.topic = {
            "event": settings.kafka.events_topic,
            "item": settings.kafka.items_topic,
            "user": settings.kafka.users_topic,
        }[kind]
        self.read_log = read_log  # None: no gap repair (a reader of the log that has no gaps, like the rebuild)
        # the events topic's partition count: an event whose user hashes elsewhere is dead-lettered (None: unchecked);
        # on a Redis Cluster a user record too, whose partition names the slot its batch writes (store/state.py)
        self.partitions = partitions
        self._users_placed = kind == "user" and settings.redis.cluster
        self.beat = beat  # called after an attempt that applied or failed for a WAITING_REASON (streams/liveness.py)
        self.stopping = stopping  # whether the worker was told to stop: a failed attempt then ends the retries
        self.give_up = give_up  # told of a batch given up, so the worker's stop waits for its messages no more
        self.flight_failed: BaseException | None = None  # what escaped a flight: no beat after it (_flown)
        self.model = model
        self.store = store
        self.settings = settings
        self.send_dead_letters = send_dead_letters
        self._watermarks: dict[str, int] | None = None
        self._flight: asyncio.Task[None] | None = None  # the script call in flight (at most one, see process)
        self._flying: Effect | None = None  # what it writes: the next batch is built on it
        self._thens: list[Then] = []  # what runs once the call in flight applied (the agent's acks)
        self._epoch = 0  # moved by every failure and rebalance: a batch built before it is built again
        self._bounds: dict[asyncio.Task, asyncio.Timeout] = {}  # each process() attempt's stuck limit, by task
        # the agent's batches and an assignment's gap check (repair_behind, its own task) build and apply one at a
        # time: each moves the in-memory watermarks before its call is applied and caches histories after, so a
        # batch built meanwhile by the other would pass the watermark check on histories that lack the call's
        self._applying = asyncio.Lock()
        # the last script said a rescore pass is unfinished (apply_batch.lua, step 4); True until a script answers: a
        # worker that starts may find a pass or items waiting that the one before it left (stopped between its last
        # batch and its idle tick), and its first idle tick asks with an empty call (one per processor) instead of
        # leaving them (fold-ins still wait for a batch: the model loads with the first one)
        self.rescore_pending = True
        self.segments_pending = 0  # items whose per-segment scores wait, as the last script said (step 4b)
        self.clock_standing = False  # the event clock stood still long enough that the pool graduates everything
        self.segments_ranked_at = -math.inf  # when a call last ranked segments and left none waiting (of anyone's)
        self.fold_ins_pending = False  # a script listed graduated items whose fold-in has not succeeded since
        self.last_applied = time.monotonic()
        self.ranker_config = ftrl_config(settings.ranker)
        self.events_bound = min(FIRST_CALL_EVENTS, settings.worker.batch_max_events)  # valid records per call
        self.recent_rows = RecentRows()  # this worker's last rows learned: the online AUC and logloss
        self.positive = settings.model.feedback_types.with_role("positive")  # the ranker's label-1 types
        if kind == "event":
            metrics.watch_ranker(self.recent_rows)
        self.build: Build = {
            "event": self._build_events,
            "item": self._build_items,
            "user": self._build_users,
        }[kind]

    def forget_watermarks(self) -> None:
        """Re-read watermarks (and histories) before the next batch: after a rebalance another worker
        may have moved them. A batch being built meanwhile is built again (:attr:`_epoch`)."""
        self._watermarks = None
        self._epoch += 1
        self.store.forget_histories()

    async def reload_watermarks(self) -> None:
        """Read the watermarks from Redis, once the script in flight (if any) is applied: read before, they would
        lack its batch, and the next batch would take that for a gap."""
        await self.settle()
        self._watermarks = await self.store.watermarks()

    async def process(self, messages: Sequence[Message], then: Then | None = None) -> Applied | None:
        """Apply a batch; whatever fails (Redis unreachable or answering an error, Kafka for a gap repair or a
        dead letter, a bug, an attempt hung past :data:`STUCK_STALLS` stall limits), wait and retry the whole batch,
        counting and logging why. Never return without applying it (faust would commit its offsets and a restart
        would skip it), never raise (the agent would stop, and with it every partition it reads), except
        :class:`Stopping` once the worker is told to stop and an attempt failed.

        With ``then`` the batch is pipelined (the agents, streams/app.py): it is built while the previous batch's
        script runs in Redis, and this returns once its own last script call is in flight, not applied; ``then()``
        runs once it is applied, after every earlier batch's ``then`` (the agent acks its messages there, so faust
        commits no offset before its batch is in Redis). At most one call is in flight per processor; the next one
        starts only after it applied (its own retries included), so batches apply in offset order whatever fails.
        Without ``then`` it returns what the batch's last call applied, once applied.

        Why: a batch costs the worker CPU (decode, dedup, user steps, ranker training) and then Redis CPU (the
        script), with the worker idle while Redis works; overlapping the two should pay where a script's cost grows
        with its events and a core is free; on a CPU-saturated machine its smaller batches cost Redis more than the
        overlap gives (``RECSTREAM_WORKER_PIPELINE=false``, docs/ARCHITECTURE.md)."""
        async with self._applying:
            applied = await self._retried(messages, pipelined=then is not None)
        if then is None:
            return applied
        if self._flight is not None and not self._flight.done():
            self._thens.append(then)  # the flight runs its list to the end (it has no await after the last one)
        else:
            await then()
        return None

    async def _retried(self, messages: Sequence[Message], pipelined: bool) -> Applied | None:
        """:meth:`process`'s attempts until one applies the batch (or, ``pipelined``, puts its last call in flight)."""
        task = asyncio.current_task()
        assert task is not None
        backoff, attempt = RetryDelays(), 1  # a restarted Redis is back in the worker's hands within a second
        while True:
            bound = self._bounds[task] = asyncio.timeout(STUCK_STALLS * self.settings.worker.stall_s)
            try:
                with collector_paused():  # the batch's objects live until it is applied: nothing to collect
                    async with bound:
                        applied = await self._process_once(messages, pipelined=pipelined)
                break
            except Exception as exc:
                reason = "stuck" if bound.expired() else retry_reason(exc)
                metrics.BATCH_RETRIES.labels(self.topic, reason).inc()
                log.warning("batch of %d %s messages not applied (%s: %r); retry %d in %.1f s", len(messages),
                            self.topic, reason, exc, attempt, backoff.delay,
                            exc_info=attempt == 1 or reason == "stuck")  # where it hung  # fmt: skip
                self.forget_watermarks()
            finally:
                del self._bounds[task]
            if self.stopping():
                stopping = Stopping(f"{len(messages)} {self.topic} messages left unapplied, their offsets uncommitted")
                if self.give_up is not None:
                    await self.give_up(stopping)
                raise stopping
            if reason in WAITING_REASONS:
                self._beat()
            await backoff.wait()
            attempt += 1
        return applied

    async def settle(self) -> None:
        """Wait until the script call in flight (if any) is applied, its retries included; at once inside it.
        The waiting attempt's stuck limit is off meanwhile: the call in flight has its own."""
        flight, task = self._flight, asyncio.current_task()
        if flight is None or flight is task or flight.done():
            return
        bound = self._bounds.get(task)  # type: ignore[arg-type]
        if bound is not None:
            bound.reschedule(None)
        await asyncio.wait({flight})  # not cancelled with the waiter: the batch in flight goes on
        if bound is not None:
            bound.reschedule(asyncio.get_running_loop().time() + STUCK_STALLS * self.settings.worker.stall_s)

    async def _fly(self, call: Call, thens: list[Then]) -> None:
        """Apply a built call, then run ``thens``. A failure (Redis, a stale watermark, a hang) moves the epoch,
        so the batch built on this one meanwhile is built again, and applies this call's messages the way
        :meth:`process` does, rebuilt on what Redis holds, retried as long as it takes."""
        bound = asyncio.timeout(STUCK_STALLS * self.settings.worker.stall_s)
        try:
            async with bound:
                await self._finish(call)
        except Exception as exc:
            if self._flying is call.effect:  # before the retry builds: it must not read the effect that failed
                self._flying = None
            self.forget_watermarks()
            if isinstance(exc, StaleWatermark):
                metrics.STALE_RETRIES.inc()
            else:
                reason = "stuck" if bound.expired() else retry_reason(exc)
                metrics.BATCH_RETRIES.labels(self.topic, reason).inc()
                log.warning("batch of %d %s messages not applied (%s: %r); retrying", len(call.fresh), self.topic,
                            reason, exc, exc_info=True)  # fmt: skip
            # the retry counts what it finds applied among these, not the others; not behind the lock, which the
            # batch built on this one may hold while it waits for this flight (settle)
            await self._retried(call.fresh, pipelined=False)
            if not call.observed:
                metrics.MESSAGES_SKIPPED.labels(call.fresh[0].topic).inc(call.skipped)
        for then in thens:
            await then()

    @property
    def pending(self) -> bool:
        """Whether the last scripts left something undone that :meth:`finish_pending` finishes."""
        return self.rescore_pending or self.segments_pending > 0 or self.fold_ins_pending

    def segments_due(self) -> bool:
        """Whether the next call rescores the per-segment rankings (apply_batch.lua, step 4b): ``segment_rank_s``
        after the last call that did, or at once when that call left items waiting (a call takes as many as its batch
        touched, at least ``rescore_items``).

        Why not every call: a segment score leans on the item's global score, so a call rescoring them pays O(touched
        items × segments), and a live batch touches nearly every item. The reader reads these lists once per
        ``popular_refresh_s`` (1 s), so ranking them about twice a second costs the feeds little freshness, and a
        live call then pays O(touched items) (the freshness of bench.worker's live phase, BENCHMARKS.md)."""
        return time.monotonic() - self.segments_ranked_at >= self.settings.worker.segment_rank_s

    async def finish_pending(self, idle_s: float = 0.0) -> int:
        """Once this processor applied nothing for ``idle_s``, finish in empty batches (no watermark, no event) what
        the last scripts left undone, without waiting for the next event: an unfinished rescore pass and the items
        waiting for their per-segment scores, so an idle worker's rankings reach f(final counters, final prior); and
        fold-ins that failed after their batch applied (its retry finds the batch applied and skips it), which every
        batch of the shared state lists again until they are stored. Returns how many empty batches it took.

        The items waiting are shared: another processor or worker may list them faster than empty calls take them
        (its own batches rank them then), so once no pass is open an empty call that left no fewer waiting ends
        this turn: the loop ends whatever the others do."""
        calls = 0
        while self.pending and time.monotonic() - self.last_applied >= idle_s:
            waiting = self.segments_pending
            applied = await self.store.apply(Effect())
            calls += 1
            self._note_left_undone(applied)
            await self._fold_in(applied.fold_ins)
            if not self.rescore_pending and not self.fold_ins_pending and 0 < waiting <= self.segments_pending:
                break
        return calls

    def _note_left_undone(self, applied: Applied) -> None:
        """What the script left undone of the rankings, and (events processor) whether the event clock stands, logged
        when that changes; the gauges only from the processors that write the shared state (a users batch's answer
        on a cluster says nothing of it)."""
        self.rescore_pending, self.segments_pending = applied.rescore_pending, applied.segments_pending
        if self.kind == "user":
            return
        metrics.SEGMENT_SCORES_WAITING.set(applied.segments_pending)
        if self.kind != "event":  # only events move the count; the items processor would log each change again
            return
        metrics.CLOCK_STANDING.set(applied.standing)
        if applied.standing != self.clock_standing:
            self.clock_standing = applied.standing
            if applied.standing:  # a live stream's clock never stands: its timestamps are probably filled in
                log.warning(
                    "the event clock has stood at one instant for %d events (RECSTREAM_POOL_GRADUATE_STANDING_EVENTS): "
                    "it measures no age, so every new-item pool item graduates until it moves (timestamps filled in?)",
                    self.settings.pool.graduate_standing_events,
                )
            else:
                log.warning("the event clock moves again: new items leave the pool by views and age")

    async def _fold_in(self, items: list[str]) -> None:
        """Fold in the graduated items a script listed as waiting; until that succeeds, :meth:`finish_pending`
        retries it."""
        self.fold_ins_pending = bool(items) and self.model is not None
        if self.fold_ins_pending:
            await self.model.fold_in(items)  # type: ignore[union-attr]
            self.fold_ins_pending = False
            self._epoch += 1  # item vectors changed: a batch built before saw the old ones (a clean run would not)

    def _beat(self) -> None:
        if self.beat is not None and self.flight_failed is None:
            self.beat()

    def _flown(self, flight: asyncio.Task[None]) -> None:
        """A flight retries its own call; what escapes it (an acknowledgement that raised) left its later
        acknowledgements unrun, and would show only when the task is collected. Logged at once, and the processor
        beats no more: /healthz turns red after ``worker_stall_s`` and a restart re-reads from the committed offsets
        (the watermarks skip what was applied)."""
        if not flight.cancelled() and flight.exception() is not None:
            self.flight_failed = flight.exception()
            log.error("a batch in flight failed past its retries: %r", self.flight_failed, exc_info=self.flight_failed)

    async def repair_behind(self, tps: Sequence[tuple[str, int]], committed: Mapping[tuple[str, int], int]) -> None:
        """Re-apply from the log what Redis lost of ``tps``: offsets from the watermark + 1 up to the
        committed offset (the worker group had applied them, or it would not have committed past them).
        Retried with back-off whatever fails (Redis unreachable or answering CLUSTERDOWN while a failed-over
        master's replica takes over, which is when a window is lost; Kafka while reading the log): given up, a
        quiet partition's lost window would wait for its next message or assignment. A new assignment cancels it,
        and a failed attempt once the worker is stopping ends it, as it ends a batch's retries: the check is left to
        the worker that is assigned these partitions next (every assignment checks them all, streams/app.py)."""
        backoff = RetryDelays()
        while True:
            try:
                async with self._applying:  # between two of the agent's batches, never beside one
                    await self.reload_watermarks()
                    assert self._watermarks is not None
                    behind = {tp: committed[tp] for tp in tps if committed.get(tp, 0) > self._watermark(*tp) + 1}
                    if behind:
                        await self._repair(behind)
                    else:  # Redis may have lost an erasure and no batch of these partitions
                        await self._restore_erasures()
                return
            except Exception as exc:
                reason = retry_reason(exc)
                metrics.BATCH_RETRIES.labels(self.topic, reason).inc()
                self.forget_watermarks()
                if self.stopping():
                    log.warning("%s (%r); %s", reason, exc, gap_check_left(tps))
                    return
                log.warning("%s (%r); retrying the gap check in %.1f s", reason, exc, backoff.delay)
                await backoff.wait()

    def _watermark(self, topic: str, partition: int) -> int:
        assert self._watermarks is not None
        return self._watermarks.get(f"{topic}:{partition}", -1)

    async def _repair(self, ends: Mapping[tuple[str, int], int]) -> None:
        """Apply each partition's offsets from its watermark + 1 up to ``ends`` (exclusive), read from the log."""
        if not ends or self.read_log is None:
            return
        await self._restore_erasures()  # first: the replay would write an erased user's state back
        ranges = {tp: (self._watermark(*tp) + 1, end) for tp, end in ends.items()}
        replayed = 0
        async for chunk in self.read_log(ranges):
            if self._watermarks is None:  # a failure or rebalance since: count against what Redis holds now
                await self.reload_watermarks()
            missing = sum(m.offset > self._watermark(m.topic, m.partition) for m in chunk)  # not found applied
            await self._process_once(chunk, repair=False)
            replayed += missing
            metrics.GAP_MESSAGES.labels(chunk[0].topic).inc(missing)
        if replayed:  # else the range was compacted away, or applied meanwhile: no gap
            where = ", ".join(f"{t}:{p} from {start} to {end}" for (t, p), (start, end) in sorted(ranges.items()))
            log.warning("redis was behind the log (%s): re-applied %d messages", where, replayed)

    async def _restore_erasures(self) -> None:
        """Erase again every user of the erasures topic that Redis does not hold as erased (it lost the erasure with
        a window of writes, recstream/store/erasure.py), reading the topic from where the last check ended
        (``erased:checked``, lost with the window too): the erasures since that check, a few in the common case.
        Only with gap repair (``read_log``): the rebuild reads every erasure anyway."""
        if self.read_log is None:
            return
        redis, keys = self.store.redis, self.store.keys
        users, ends = await erasures_since(self.settings, await checked_offsets(redis, keys))
        lost = await unmarked(redis, keys, users)
        await erase_users(Commands(redis), keys, lost)
        await note_checked(redis, keys, ends)
        if lost:
            log.warning("redis did not hold %d erasures of the erasures topic (%s): erased again", len(lost),
                        ", ".join(lost[:10]))  # fmt: skip

    async def _process_once(
        self, messages: Sequence[Message], repair: bool = True, pipelined: bool = False
    ) -> Applied | None:
        """Apply ``messages`` in script calls of at most :attr:`events_bound` events each (:meth:`_apply_prefix`);
        what the last call applied, None if nothing was left to apply (or ``pipelined``: the last call in flight)."""
        applied = None
        while messages:
            done, messages = await self._apply_prefix(messages, repair, pipelined)
            applied = done or applied
        return applied

    async def _apply_prefix(
        self, messages: Sequence[Message], repair: bool, pipelined: bool = False
    ) -> tuple[Applied | None, list[Message]]:
        """Apply the longest run of ``messages`` (at least one) holding at most :attr:`events_bound` valid records,
        as one batch with its watermarks; return what it applied and the messages after that run.

        Why a bound: the batch script's work grows with its events, and a backlog batch of ``batch_max`` messages
        of micro-batches blocked Redis past its 5 s busy limit (issue 18, at ×10 scale). Cutting between messages
        is what a smaller ``batch_max`` would have done: each call moves the watermarks to its own last offsets,
        so a crash between two calls leaves Redis at a message boundary, which the watermark check and the gap
        repair already handle. A message is never cut (its offset is one watermark step): one over the bound goes
        alone, and holds at most :data:`~recstream.contracts.events.MAX_EVENTS_PER_MESSAGE` events.

        The bound follows the calls' measured time (:func:`next_events_bound`), not a fixed count: a call costs
        O(distinct users + touched items × segments + events) (the segment part in the calls that rank segments), so
        in a small world a call of 10,000 events costs almost what one of 30,000 does (the same users and items) and
        a fixed bound tuned for ×10 scale cut small worlds' backlog batches into calls that each re-did every user
        step and item rescore.

        Built while an earlier call is in flight (:meth:`process`), the call reads that call's effect wherever it
        reads what it writes (histories, ranker states, event ids: ``pending`` in :meth:`StateStore.read_users` and
        :meth:`StateStore.event_arrivals`) and expects its watermarks; if that call fails, the epoch moves and this
        one is built again once it applied."""
        started = time.perf_counter()
        if self._watermarks is None:
            await self.reload_watermarks()
        for _ in range(MAX_STALE_RETRIES):
            if self._watermarks is None:  # a failure or rebalance since (the loop's continue below)
                await self.reload_watermarks()
            epoch = self._epoch
            assert self._watermarks is not None
            fresh = [m for m in messages if m.offset > self._watermarks.get(f"{m.topic}:{m.partition}", -1)]
            skipped = len(messages) - len(fresh)  # counted once its call applied: a retry counts them again
            if not fresh:
                metrics.MESSAGES_SKIPPED.labels(messages[0].topic).inc(skipped)
                return None, []
            if repair:
                first: dict[tuple[str, int], int] = {}
                for m in fresh:
                    first.setdefault((m.topic, m.partition), m.offset)
                await self._repair({tp: offset for tp, offset in first.items() if offset > self._watermark(*tp) + 1})
                if self._watermarks is None:  # a rebalance during the repair: re-read, then filter again
                    await self.reload_watermarks()
                    continue
            behind = self._behind(fresh)
            if behind:  # some Redis slots hold these offsets already, others not: apply them on their own first
                await self._process_once(behind, repair=False)
                done = {id(m) for m in behind}  # applied just now, not found applied
                messages = [m for m in messages if id(m) not in done]
                continue
            now_ms = int(time.time() * 1000)
            decoded: list[Decoded] = []
            dead: list[DeadLetter] = []
            effect = Effect()
            taken, rest = 0, []
            for k, message in enumerate(fresh):
                # "too far in the future" is measured from the record's Kafka timestamp when it is earlier than
                # the wall clock: a replay of the log (rebuild, gap repair) then accepts what the live worker did
                at_ms = now_ms if message.timestamp_ms is None else min(now_ms, message.timestamp_ms)
                valid, rejected = decode(message.value, self.kind, at_ms, self.settings.model.feedback_types)
                if self.partitions is not None and (self.kind == "event" or self._users_placed):
                    valid, misplaced = _placed(valid, message.partition, self.partitions)
                    rejected += misplaced
                if k and taken + len(valid) > self.events_bound:  # for the next call (decoded again then)
                    fresh, rest = fresh[:k], fresh[k:]
                    break
                taken += len(valid)
                decoded.append((f"{message.topic}:{message.partition}", at_ms, valid))
                dead.extend(DeadLetter(message, r) for r in rejected)
                tp = f"{message.topic}:{message.partition}"
                effect.watermarks[tp] = (self._watermarks.get(tp, -1), message.offset)
            duplicates = 0
            if self.kind == "event":
                again = {
                    f"{m.topic}:{m.partition}"
                    for m in fresh
                    if m.offset <= self.store.ahead.get(f"{m.topic}:{m.partition}", -1)
                }
                decoded, duplicates = await self._drop_duplicates(decoded, effect, again)
            records: Records = []
            arrivals: list[int] = []
            partitions: list[Partition] = []
            for tp, at_ms, valid in decoded:  # a message's values repeated, not recomputed, for each of its records
                records += valid
                arrivals += [at_ms] * len(valid)
                partitions += [_partition(tp)] * len(valid)
            built = await self.build(records, arrivals, partitions, effect)
            if dead:
                try:
                    await self.send_dead_letters(dead)  # before the watermark moves: at least once
                except Exception as exc:
                    raise DeadLetterError(f"{len(dead)} dead letters not sent: {exc!r}") from exc
            await self.settle()
            if self._epoch != epoch or self._watermarks is None:  # the call in flight failed, or a rebalance
                continue
            effect.rank_segments = self.segments_due()
            call = Call(fresh, effect, records, dead, built, duplicates, started, skipped)
            self._watermarks.update({tp: new for tp, (_, new) in effect.watermarks.items()})
            if pipelined:
                self._flying, self._thens = effect, []
                self._flight = asyncio.create_task(self._fly(call, self._thens))
                self._flight.add_done_callback(self._flown)
                return None, rest
            try:
                applied = await self._finish(call)
            except StaleWatermark:
                metrics.STALE_RETRIES.inc()
                self.forget_watermarks()
                continue
            return applied, rest
        raise WatermarksKeptMoving(f"watermarks kept moving under this worker {MAX_STALE_RETRIES} times in a row")

    async def _finish(self, call: Call) -> Applied:
        """Run a built call's script and account for it; raises :class:`StaleWatermark` as the store does."""
        effect, call_started = call.effect, time.perf_counter()
        applied = await self.store.apply(effect)
        self.events_bound = next_events_bound(  # the records applied: duplicates cost the script nothing
            self.events_bound, len(call.records), time.perf_counter() - call_started, self.settings.worker
        )
        self.store.remember_histories(effect.histories, effect.erasures)
        if self._flying is effect:  # with its histories cached and its script applied, Redis and the cache are current
            self._flying = None  # (a gap repair applies without a flight, maybe while the agent's is in flight)
        if applied.replayed:  # histories recomputed from a slot that was ahead: a batch built on these is stale
            self._epoch += 1
        if applied.answered:  # else nothing is known of what is left undone (a slot answered "done"): as it was
            self._note_left_undone(applied)
        self.last_applied = time.monotonic()
        if effect.rank_segments:  # a call that left items waiting makes the next one due at once
            self.segments_ranked_at = -math.inf if applied.segments_pending else self.last_applied
        self._observe(call, applied)
        if applied.answered:
            await self._fold_in(applied.fold_ins)
        self._beat()
        return applied

    def _behind(self, fresh: list[Message]) -> list[Message]:
        """The first partition's messages that some Redis Cluster slots applied and others did not
        (``store.ahead``: a crash between a batch's per-slot calls, or a failed-over master that lost a window),
        when the batch holds more than those: applied alone, the slots that have them answer "done"."""
        for tp, end in self.store.ahead.items():
            behind = [m for m in fresh if f"{m.topic}:{m.partition}" == tp and m.offset <= end]
            if behind and len(behind) < len(fresh):
                return behind
        return []

    async def _drop_duplicates(
        self,
        decoded: list[Decoded],
        effect: Effect,
        again: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> tuple[list[Decoded], int]:
        """Drop every event whose user already sent its ``event_id`` at most ``dedup_window_s`` earlier (arrival
        times: the records' timestamps, so a replay of the log drops the same events); record the others' ids in
        ``effect``, which the batch script stores with the watermarks. Returns what is left and how many went.

        ``again``: partitions whose messages here some Redis Cluster slot applied already (:attr:`StateStore.ahead`:
        a failed-over master lost a window its partition's slot kept). That slot stored these very events' ids, at
        these very arrival times: an id stored with the record's own arrival is the record itself, not a duplicate.
        Counted as duplicates, the slot that lost the window re-applied the batch without them (the cluster fault
        test's redis-failover run ended 10 to 56 events short, every watermark at the log's end).

        Why this is exact: the ids are kept per partition, read here and written only by the batch script of a
        batch of that partition, which moves the partition's watermark too: the script's watermark check
        refuses this batch if such a write happened after the read.
        """
        window_ms = self.settings.worker.dedup_window_s * 1000
        ids = [
            [None if e.event_id is None else f"{e.user_id}:{e.event_id}" for e in events] for _, _, events in decoded
        ]
        wanted: dict[str, list[str]] = {}
        for (tp, _, _), message_ids in zip(decoded, ids, strict=True):
            wanted.setdefault(tp, []).extend(i for i in message_ids if i is not None)
        if not window_ms or not any(wanted.values()):
            return decoded, 0
        last: dict[str, dict[str, int]] = {tp: {} for tp in wanted}  # tp → "user:event_id" → last arrival ms
        for (tp, key), at_ms in (await self.store.event_arrivals(wanted, self._flying)).items():
            last[tp][key] = at_ms
        out: list[Decoded] = []
        for (tp, at_ms, events), message_ids in zip(decoded, ids, strict=True):
            seen, applied = last[tp], effect.event_ids.setdefault(tp, {})
            arrived = dict.fromkeys(message_ids, at_ms)
            if None not in arrived and len(arrived) == len(message_ids) and seen.keys().isdisjoint(arrived):
                # no id of the message stored, repeated in it or missing: the loop below would keep every event
                seen.update(arrived)
                applied.update(arrived)
                out.append((tp, at_ms, events))
                continue
            kept = []
            for event, key in zip(events, message_ids, strict=True):
                if key is not None:
                    previous = seen.get(key)
                    itself = tp in again and previous == at_ms and key not in applied
                    if previous is not None and at_ms - previous <= window_ms and not itself:
                        continue
                    seen[key] = applied[key] = at_ms
                kept.append(event)
            out.append((tp, at_ms, kept))
        effect.event_ids = {tp: applied for tp, applied in effect.event_ids.items() if applied}
        return out, sum(len(events) for *_, events in decoded) - sum(len(events) for *_, events in out)

    def _observe(self, call: Call, applied: Applied) -> None:
        """Count an applied call; one that wrote nothing (every slot at or past its end: another worker applied this
        very batch first, a rebalance race) counts only its messages, as found applied, and its dead letters (sent)."""
        topic, records, built, now_ms = call.fresh[0].topic, call.records, call.built, time.time() * 1000
        call.observed = True
        for letter in call.dead:
            metrics.DEAD_LETTERS.labels(topic, letter.rejected.code).inc()
        metrics.MESSAGES_SKIPPED.labels(topic).inc(call.skipped + (0 if applied.written else len(call.fresh)))
        if not applied.written:
            return
        metrics.DUPLICATES.labels(topic).inc(call.duplicates)
        metrics.count_experiment_events(call.effect.counters.variants, self.settings.experiment)
        metrics.observe_many(metrics.CANDIDATE_REFRESH, _ages_s(now_ms, built.refreshed_ts))
        if built.training is not None:
            for trained in built.training.trained.values():
                self.recent_rows.add(trained.predictions, trained.labels)
            metrics.count_ranker_rows(built.training)
        if self.kind == "event":
            label = self.settings.model.feedback_types.metric_label  # view/click for CTR types: a bounded set
            for kind, n in Counter(label[e.type] for e in records).items():
                metrics.EVENTS.labels(topic, kind).inc(n)
            metrics.observe_many(metrics.FRESHNESS, _ages_s(now_ms, [e.ts for e in records]))
        else:
            metrics.EVENTS.labels(topic, self.kind).inc(len(records))
        metrics.BATCH_SIZE.labels(topic).observe(len(records))
        metrics.BATCH_SECONDS.labels(topic).observe(time.perf_counter() - call.started)
        metrics.PRIOR.set(applied.prior)
        metrics.RESCORES.inc(applied.full_rescore)
        metrics.GRADUATIONS.inc(len(applied.graduated))

    async def _build_events(
        self, events: list[Event], arrivals: list[int], partitions: list[Partition], effect: Effect
    ) -> Built:
        users = list(dict.fromkeys(e.user_id for e in events))
        s = self.settings
        rows = batch_rows(events, partitions, self.positive) if s.ranker.train else None
        context = await self.store.read_users(
            users, rankers=list(rows.by_partition) if rows else (), pending=self._flying
        )
        metrics.count_unreadable(context.unreadable)
        effect.counters = aggregate(
            events,
            context.segments,
            s.model.trend_half_life_s * 1000,
            s.model.trend_epoch_half_lives,
            arrivals,
            s.model.feedback_types.ctr_column,
            partitions,
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
        effect.histories, effect.erasures = update.histories, context.erasures
        effect.item_users = update.item_users
        metrics.USER_STEPS.inc(len(update.refreshed_ts))  # one per refreshed user, not per user in the batch
        metrics.USER_STEP_SECONDS.observe(time.perf_counter() - started)
        return Built(update.refreshed_ts, training)

    async def _build_items(self, items: list[ItemEvent], _: list[int], __: list[Partition], effect: Effect) -> Built:
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

    async def _build_users(self, users: list[UserEvent], _: list[int], __: list[Partition], effect: Effect) -> Built:
        context = await self.store.read_users(
            [u.user_id for u in users if u.preferred_categories], pending=self._flying
        )
        metrics.count_unreadable(context.unreadable)
        picks: dict[str, list[str]] = {}
        for user in users:
            parts = user_parts(user)  # what the record sets, empty or not: {} clears
            if "attributes" in parts:
                effect.user_segments[user.user_id] = segment_of(user.attributes)
            if "preferences" in parts:
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


def gap_check_left(tps: Sequence[tuple[str, int]]) -> str:
    """What a worker logs of the gap check it ends because it is stopping: one text for a processor's part and for
    what streams/app.py leaves of an assignment's check, the partitions their next assignment checks again."""
    unchecked = ", ".join(f"{topic}:{partition}" for topic, partition in tps)
    return f"the worker is stopping: the gap check of {unchecked} is left to the partitions' next assignment"


def next_events_bound(bound: int, events: int, seconds: float, worker: WorkerSettings) -> int:
    """The events bound of the next script call after one of ``events`` took ``seconds`` (its round trip, payload
    included: at least the time it blocked Redis): events × ``batch_script_target_s`` / seconds, at least
    :data:`FIRST_CALL_EVENTS` (the old fixed bound: on a CPU-starved machine the round trip overstates the
    script's time, and calls below it measured slower than main's), at most ``batch_max_events``; ``bound``
    unchanged after a call of no events.

    The per-event rate of a call is an underestimate for a larger one (its users, items and fixed costs are
    shared by more events) and exact for one of distinct users and items, so the next call stays within the
    target unless Redis itself slows down; the bound then shrinks after the first slow call.

    >>> w = WorkerSettings(batch_max_events=50_000, batch_script_target_s=0.5)
    >>> next_events_bound(10_000, 10_000, 0.1, w), next_events_bound(10_000, 10_000, 0.5, w)
    (50000, 10000)
    >>> next_events_bound(10_000, 40_000, 1.0, w), next_events_bound(10_000, 0, 0.002, w)
    (20000, 10000)
    """
    if events == 0:
        return bound
    wanted = max(FIRST_CALL_EVENTS, int(events * worker.batch_script_target_s / max(seconds, 1e-6)))
    return min(worker.batch_max_events, wanted)


def _placed(events: list[Event], partition: int, partitions: int) -> tuple[list[Event], list[Rejected]]:
    """The events whose user hashes to ``partition`` (Kafka's default partitioner, :func:`partition_for`) and a
    rejection for each other one: applied, it would race the worker that owns its user's partition.

    >>> ok, bad = _placed([Event(type="view", user_id="u1", item_id="i", ts=10**12)], 5, 8)
    >>> len(ok), bad[0].reason
    (0, "partition: user 'u1' belongs to partition 0 of 8, not 5")
    """
    placed, misplaced = [], []
    for event in events:
        home = partition_for(event.user_id, partitions)
        if home == partition:
            placed.append(event)
        else:
            reason = f"partition: user {event.user_id!r} belongs to partition {home} of {partitions}, not {partition}"
            misplaced.append(Rejected(reason, encode(event)))
    return placed, misplaced


def _partition(tp: str) -> Partition:
    """``"events:3"`` → ``("events", 3)`` (topic names cannot hold ``:``).

    >>> _partition("events-x:3")
    ('events-x', 3)
    """
    topic, _, partition = tp.rpartition(":")
    return topic, int(partition)


def _ages_s(now_ms: float, ts_ms: list[int]) -> np.ndarray:
    """Seconds from each timestamp to ``now_ms`` (clock skew clipped at 0)."""
    return np.maximum(0.0, now_ms - np.asarray(ts_ms, dtype=np.float64)) / 1000
