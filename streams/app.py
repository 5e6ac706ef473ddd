"""The faust app: three thin agents (events, items, users), each batching and delegating.

Agent concurrency stays 1: one user's events stay ordered, and faust's offset tracking has
an open off-by-one for concurrency > 1. The watermark needs each message's partition and
offset, so agents batch over ``take_events`` (events), not bare values.

On every partition assignment a background task compares the group's committed offsets with
Redis's watermarks and re-applies from the log what Redis lost (streams/processor.py, gap
repair); the agents keep consuming meanwhile (the watermark check keeps both paths exact). A new assignment cancels
it; a failed attempt once the worker is stopping ends it, leaving the rest to the partitions' next assignment.

Each agent and the item feed report to a :class:`~recstream.streams.liveness.Liveness` (``/healthz``): an agent
beats when a batch starts and after every attempt to apply it, and goes idle when its latest batch is applied.

With ``RECSTREAM_WORKER_PIPELINE`` batches are pipelined
(:meth:`~recstream.streams.processor.BatchProcessor.process` with ``then``): the agent takes and builds batch N+1
while batch N's script runs in Redis. faust acks a batch's events when the agent's body for it returns, which is
now before its script applied; each event is therefore given a second reference first (``Message.incref``) and
released in ``then``, once the batch is in Redis, so faust never commits an offset whose batch is not applied (a
crash leaves the offsets at or before the watermarks, as before; no gap repair needed).
Off, the agent applies one batch at a time and releases it at once.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable, Sequence
from functools import partial

import faust
from faust.types import TP, EventT
from recstream.streams import metrics
from recstream.streams.kafka_transport import ShortFetchTransport
from recstream.streams.live_model import LiveModel, follow_items
from recstream.streams.liveness import Liveness
from recstream.streams.processor import RETRY_REASONS, BatchProcessor, DeadLetter, Message, gap_check_left

from recstream.contracts.events import Kind
from recstream.contracts.settings import Settings
from recstream.eventlog.connection import faust_credentials
from recstream.eventlog.log import committed_offsets, read_ranges
from recstream.runtime.backoff import RetryDelays
from recstream.runtime.garbage_collector import collect_young_rarely, freeze_long_lived
from recstream.store.connection import connect
from recstream.store.state import StateStore

log = logging.getLogger(__name__)
IDLE_S = 1.0
"""A processor idle this long finishes what its last batches left undone: a rescore pass (recstream/store/state.py),
fold-ins that failed (BatchProcessor.finish_pending)."""


def create_app(settings: Settings, liveness: Liveness | None = None) -> faust.App:
    """Build the worker app; every worker started from it joins one consumer group and reports to ``liveness``."""
    liveness = liveness or Liveness(settings.worker.stall_s)
    app = faust.App(
        settings.worker.group,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap.split(",")],  # faust: a URL each
        broker_credentials=faust_credentials(settings.kafka),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        # faust's default is ./<group>-data in the working directory; the worker keeps no faust tables (its
        # state is in Redis), so the empty directory faust insists on goes where it litters nothing
        datadir=f"{tempfile.gettempdir()}/recstream-faust-{settings.worker.group}",
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        stream_buffer_maxsize=max(4 * settings.worker.batch_max, 4096),
        broker_commit_every=settings.worker.batch_max,
        broker_commit_interval=1.0,
        # faust's 60 s session would stall a crashed worker's partitions for a minute (bench/reliability.py)
        broker_session_timeout=settings.worker.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker.session_timeout_s / 3),
    )
    app.transport = ShortFetchTransport(
        app.conf.broker_consumer, app, settings.worker.fetch_max_wait_ms, settings.worker.fetch_min_bytes
    )
    redis = connect(settings, socket_timeout=30)
    store = StateStore(redis, settings)
    dlq = app.topic(settings.kafka.dlq_topic, value_serializer="raw", key_serializer="raw")

    async def send_dead_letters(letters: list[DeadLetter]) -> None:
        futures = [await dlq.send(value=letter.value, headers=letter.headers) for letter in letters]
        await asyncio.gather(*futures)

    model = LiveModel(settings)
    read_log = partial(read_ranges, settings)
    topics = {
        settings.kafka.events_topic: "event",
        settings.kafka.items_topic: "item",
        settings.kafka.users_topic: "user",
    }
    agents = {kind: f"recstream.{kind}s" for kind in topics.values()}

    def stopping() -> bool:
        """Whether the worker was told to stop (or crashed): a failed attempt then ends a retry loop."""
        return app.should_stop

    # faust's stop waits for every message taken to be acknowledged (Consumer.wait_empty) until its consumer stops or
    # crashes: a batch given up at a stop (BatchProcessor, Stopping) crashes it, and only acknowledged offsets commit
    processors = {
        kind: BatchProcessor(
            kind, store, settings, send_dead_letters, model, read_log, beat=partial(liveness.beat, agents[kind]),
            stopping=stopping, give_up=lambda exc: app.consumer.crash(exc),
        )
        for kind in topics.values()
    }  # fmt: skip

    @app.task
    async def item_feed() -> None:
        with liveness.running("item feed"):
            await follow_items(settings, model)

    failing: dict[str, tuple[type, str]] = {}  # kind → its failing idle turns' error: logged when it changes

    @app.timer(interval=IDLE_S)
    async def finish_pending() -> None:
        for kind, processor in processors.items():
            try:
                await processor.finish_pending(idle_s=IDLE_S)
            except Exception as exc:  # Redis unreachable: the next tick or batch goes on
                error = (type(exc), str(exc))
                if failing.get(kind) != error:
                    log.exception("finishing a rescore pass or fold-ins while idle failed (retried every %s s)", IDLE_S)
                failing[kind] = error
            else:
                failing.pop(kind, None)

    @app.task
    async def settle_heap() -> None:
        freeze_long_lived()  # everything imported and built by now stays for the worker's life
        collect_young_rarely()  # a batch allocates a few containers per event: 700 would collect per ~200 events

    def messages(batch: Sequence[EventT]) -> list[Message]:
        out = [
            Message(m.topic, m.partition, m.offset, m.value, round(m.timestamp * 1000) if m.timestamp else None)
            for m in (e.message for e in batch)
        ]
        for tp in {(m.topic, m.partition): m for m in out}.values():
            highwater = app.consumer.highwater(TP(tp.topic, tp.partition))
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - tp.offset - 1))
        return out

    def agent_for(topic_name: str, kind: Kind) -> None:
        name = agents[kind]

        async def consume(stream: faust.StreamT) -> None:
            latest = 0  # the number of the latest batch taken: only its being applied makes the agent idle

            async def applied(batch: Sequence[EventT], number: int) -> None:
                for event in batch:  # the second reference (below): faust commits the offset once it is released
                    if event.ack():
                        app.sensors.on_message_out(event.message.tp, event.message.offset, event.message)
                if number == latest:
                    liveness.idle(name)

            with liveness.running(name):
                async for batch in stream.take_events(settings.worker.batch_max, within=settings.worker.batch_wait_s):
                    liveness.beat(name)
                    latest += 1
                    for event in batch:  # held past faust's own ack after this body, until the batch is applied
                        event.message.incref()
                    if settings.worker.pipeline:
                        await processors[kind].process(messages(batch), partial(applied, batch, latest))
                    else:
                        await processors[kind].process(messages(batch))
                        await applied(batch, latest)

        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
        app.agent(topic, name=name, concurrency=1)(consume)

    for topic_name, kind in topics.items():
        agent_for(topic_name, kind)
        # 0s from the start: the alerts' increase() and rate() see the first gap and the first retry
        metrics.GAP_MESSAGES.labels(topic_name)
        for reason in RETRY_REASONS:
            metrics.BATCH_RETRIES.labels(topic_name, reason)

    repairs: set[asyncio.Task] = set()

    @app.on_partitions_assigned.connect
    async def forget_watermarks(app: faust.App, assigned: set[TP], **kwargs: object) -> None:
        for processor in processors.values():
            processor.forget_watermarks()
        metrics.keep_lag([(tp.topic, tp.partition) for tp in assigned])
        # what the assignment was computed on: the topic's real partition count, whatever the settings say
        partitions = app.consumer.topic_partitions(settings.kafka.events_topic)
        if partitions:
            processors["event"].partitions = partitions
            if settings.redis.cluster:  # as many as the events topic (settings), each user's on its own slot
                processors["user"].partitions = app.consumer.topic_partitions(settings.kafka.users_topic)
        for superseded in repairs:
            superseded.cancel()
        tps = sorted((tp.topic, tp.partition) for tp in assigned)
        task = asyncio.ensure_future(check_assignment(settings, list(processors.values()), tps, stopping))
        repairs.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(repairs.discard)

    return app


async def check_assignment(
    settings: Settings,
    processors: Sequence[BatchProcessor],
    assigned: list[tuple[str, int]],
    stopping: Callable[[], bool],
) -> None:
    """The gap check of one assignment, until it is done or a new assignment cancels it (each processor retries
    its own part; a quiet partition's lost window would otherwise wait for its next message). Once the worker is
    ``stopping`` (what ends the processors' retries), a failed read of the committed offsets ends it, as it ends a
    processor's part, and no further processor's part starts: each would make one more attempt, up to the Redis
    socket timeout if Redis hangs, for partitions their next assignment checks again."""
    backoff = RetryDelays()
    while True:
        try:
            committed = await committed_offsets(settings, assigned)
            break
        except Exception as exc:
            ending = stopping()
            then = gap_check_left(assigned) if ending else f"retry in {backoff.delay:.1f} s"
            log.warning("reading the committed offsets for the gap check failed (%r); %s", exc, then)
            if ending:
                return
            await backoff.wait()
    for k, processor in enumerate(processors):
        if stopping():
            topics = {later.topic for later in processors[k:]}
            left = [tp for tp in assigned if tp[0] in topics]
            if left:
                log.warning("%s", gap_check_left(left))
            return
        await processor.repair_behind([tp for tp in assigned if tp[0] == processor.topic], committed)
