"""A batch's script calls hold at most ``batch_max_events`` valid records (``RECSTREAM_BATCH_MAX_EVENTS``), and at
most what the last call's measured time allows (``RECSTREAM_BATCH_SCRIPT_TARGET_S``): a backlog batch is cut between
messages, each call moving the watermarks to its own last offsets, and the state is the one a single call leaves.
Real Redis, the worker's own processor and store."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import REGISTRY
from recstream.streams.processor import BatchProcessor, next_events_bound
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream.contracts.events import Event, encode
from recstream.contracts.settings import Settings, WorkerSettings
from recstream.eventlog.log import Message
from recstream.store.state import Applied, Effect, StateStore
from recstream.store.state_dump import differing_keys, dump_state
from tests.streams.scenario import T0, applied_events, no_dead_letters

pytestmark = pytest.mark.integration

LIMIT = 10


class RecordingStore(StateStore):
    """Records each script call's new watermark of partition 0; ``fail_call`` k raises after the k-th call applied
    (a worker losing Redis between two calls of one batch)."""

    fail_call: int | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.marks: list[int] = []

    async def apply(self, effect: Effect) -> Applied:
        applied = await super().apply(effect)
        self.marks += [new for _, new in effect.watermarks.values()]
        if len(self.marks) == self.fail_call:
            raise RedisConnectionError("lost after the call")
        return applied


def micro_batches(sizes: list[int], topic: str) -> list[Message]:
    """Messages 0, 1, … of partition 0, message k a micro-batch of ``sizes[k]`` views of distinct users."""
    out, n = [], 0
    for offset, size in enumerate(sizes):
        events = [Event(type="view", user_id=f"u{n + j}", item_id="i1", ts=T0 + n + j) for j in range(size)]
        out.append(Message(topic, 0, offset, encode(events)))
        n += size
    return out


@pytest.mark.parametrize(
    ("sizes", "marks"),
    [
        ([4, 5], [1]),  # limit - 1 events: one call
        ([5, 5], [1]),  # limit: one call
        ([5, 6], [0, 1]),  # limit + 1: cut between the messages
        ([3, LIMIT + 1, 2], [0, 1, 2]),  # a message over the limit goes alone, never cut
        ([2] * 12, [4, 9, 11]),  # 5 messages (10 events) a call
    ],
    ids=["limit-1", "limit", "limit+1", "one-message-over", "backlog"],
)
async def test_a_batch_is_applied_in_calls_of_at_most_batch_max_events(
    isolated_settings: Settings, sizes: list[int], marks: list[int]
):
    settings = isolated_settings.replace(batch_max_events=LIMIT, batch_script_target_s=2.5)  # the count binds
    client = AsyncRedis.from_url(settings.redis.url)
    store = RecordingStore(client, settings)
    try:
        await BatchProcessor("event", store, settings, no_dead_letters).process(
            micro_batches(sizes, settings.kafka.events_topic)
        )
    finally:
        await client.aclose()
    assert store.marks == marks
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == sum(sizes)


@pytest.mark.parametrize(
    ("events", "seconds", "bound"),
    [
        (20_000, 0.5 * 0.99, 20_202),  # a call just under the target: the next may hold more
        (20_000, 0.5, 20_000),  # at the target: as many
        (20_000, 0.5 * 1.01, 19_801),  # just over: fewer
        (39_999, 0.5, 39_999),  # the ceiling (40,000) - 1
        (40_000, 0.5, 40_000),  # the ceiling
        (40_001, 0.5, 40_000),  # the ceiling + 1: the ceiling
        (10_000, 0.5 * 1.01, 10_000),  # never below the first call's bound (FIRST_CALL_EVENTS)
        (0, 0.01, 12_345),  # a call of no events (every one a duplicate) measures nothing: the bound stays
    ],
)
def test_the_events_bound_follows_the_measured_call_time(events: int, seconds: float, bound: int):
    worker = WorkerSettings(batch_max_events=40_000, batch_script_target_s=0.5)
    assert next_events_bound(12_345, events, seconds, worker) == bound


async def test_a_batch_cut_in_calls_survives_a_failure_between_them(isolated_settings: Settings):
    """Redis lost after the first of three calls: the retry skips what that call applied (its watermark) and
    applies the rest once; the state equals one uncut call's, key for key."""
    sizes = [4, 4, 4, 4, 4, 4]
    runs = []
    for limit, fail_call in ((LIMIT, 1), (sum(sizes), None)):
        settings = isolated_settings.replace(
            batch_max_events=limit, batch_script_target_s=2.5, redis_prefix=f"limit{limit}"
        )
        client = AsyncRedis.from_url(settings.redis.url)
        store = RecordingStore(client, settings)
        store.fail_call = fail_call
        try:
            await BatchProcessor("event", store, settings, no_dead_letters).process(
                micro_batches(sizes, settings.kafka.events_topic)
            )
        finally:
            await client.aclose()
        runs.append((store.marks, dump_state(redis.Redis.from_url(settings.redis.url), settings.redis.prefix)))
    (cut_marks, cut), (whole_marks, whole) = runs
    assert (cut_marks, whole_marks) == ([1, 3, 5], [5])
    assert cut["totals"][b"views"] == str(sum(sizes)).encode()
    assert differing_keys(cut, whole) == []


async def test_an_attempt_hung_past_two_stall_limits_is_cancelled_retried_and_counted(isolated_settings: Settings):
    """An attempt whose await does not return (Redis paused here, under a client with no socket timeout) is
    cancelled after two worker_stall_s, logged and counted as ``stuck``, and retried: the batch is applied once
    Redis answers, and the worker never sits silently in one attempt."""
    settings = isolated_settings.replace(worker_stall_s=0.5)
    topic = settings.kafka.events_topic
    stuck = REGISTRY.get_sample_value("recstream_worker_batch_retries_total", {"topic": topic, "reason": "stuck"})
    client = AsyncRedis.from_url(settings.redis.url)
    pauser = redis.Redis.from_url(settings.redis.url)
    try:
        pauser.execute_command("CLIENT", "PAUSE", 2_500, "ALL")
        await BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters).process(
            micro_batches([3], topic)
        )
    finally:
        pauser.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()
    after = REGISTRY.get_sample_value("recstream_worker_batch_retries_total", {"topic": topic, "reason": "stuck"})
    assert (after or 0) - (stuck or 0) >= 1
    assert applied_events(pauser, "rs") == 3


async def test_a_batch_retried_after_a_failed_call_counts_each_message_found_applied_once(isolated_settings: Settings):
    """``recstream_worker_messages_skipped_total`` counted the messages an attempt found at or below the watermark
    again at every retry of the batch: here message 0 (applied by an earlier batch) twice, though each of the
    batch's two messages was found applied once, by the attempt that returned."""
    settings = isolated_settings.replace(batch_max_events=LIMIT, batch_script_target_s=2.5)
    topic = settings.kafka.events_topic
    messages = micro_batches([5, 6], topic)  # two calls
    client = AsyncRedis.from_url(settings.redis.url)
    try:
        await BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters).process(messages[:1])
        store = RecordingStore(client, settings)
        store.fail_call = 1  # message 1's call applies, then Redis is lost: the batch is retried whole
        before = REGISTRY.get_sample_value("recstream_worker_messages_skipped_total", {"topic": topic}) or 0.0
        await BatchProcessor("event", store, settings, no_dead_letters).process(messages)
    finally:
        await client.aclose()
    after = REGISTRY.get_sample_value("recstream_worker_messages_skipped_total", {"topic": topic})
    assert store.marks == [1]  # one call applied: message 1 (message 0 skipped both times)
    assert after - before == 2
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 11


async def test_a_batch_another_worker_applied_first_is_counted_as_found_applied_not_applied_again(
    isolated_settings: Settings,
):
    """A worker whose watermarks were read before another applied the same batch (a rebalance race) runs the script,
    which answers "done" and writes nothing; the worker counted the batch's events as applied all the same."""
    settings = isolated_settings
    topic = settings.kafka.events_topic
    messages = micro_batches([3, 4], topic)
    client = AsyncRedis.from_url(settings.redis.url)

    def counted() -> tuple[float, float]:
        events = REGISTRY.get_sample_value("recstream_worker_events_total", {"topic": topic, "type": "view"})
        skipped = REGISTRY.get_sample_value("recstream_worker_messages_skipped_total", {"topic": topic})
        return events or 0.0, skipped or 0.0

    try:
        late = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters)
        await late.reload_watermarks()  # before the other worker applied: it expects nothing applied
        await BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters).process(messages)
        before = counted()
        late.rescore_pending = True  # a pass it had left open: a "done" answer says nothing of it
        await late.process(messages)
    finally:
        await client.aclose()
    events, skipped = (after - first for after, first in zip(counted(), before, strict=True))
    assert (events, skipped) == (0, 2)
    assert late.rescore_pending, "the idle worker still finishes its pass (the default answer had reset it)"
    assert applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 7
