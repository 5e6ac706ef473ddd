"""Pipelined batches (``BatchProcessor.process`` with ``then``, as the agents run it): batch N+1 is built while
batch N's script runs in Redis. The state must be the one batches applied one by one leave, a failed script must
keep every later batch unapplied until it applies, and a batch is acknowledged (faust commits it) only once it is
in Redis, so a worker killed mid-pipeline and restarted from its acknowledged offsets leaves a clean run's state.

Real Redis and the worker's own processor, store and live model (user steps, the online ranker, event ids); the
store below only delays each script call (so the next batch really is built meanwhile) or drops a connection
before a call reaches Redis."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from recstream.streams.processor import BatchProcessor
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream.contracts.events import Event, ItemEvent, encode
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message
from recstream.store.state import Applied, Effect, StateStore
from recstream.store.state_dump import differing_keys, dump_state
from tests.streams.scenario import T0, applied_events, model_for, no_dead_letters, served, trained, world

pytestmark = pytest.mark.integration

BATCHES, MESSAGES, EVENTS = 8, 4, 10  # per run, per batch, per message
REPEATED = 3  # the last events of each batch sent again at the start of the next one (a client's retry)


class SlowStore(StateStore):
    """The real store; each script call waits ``delay_s`` first, and the calls numbered in ``fail`` (1-based, every
    attempt counted) lose the connection before reaching Redis. ``order`` is partition 0's new watermark of each
    applied call; ``overlapped`` counts the batches whose users were read while a call was in flight."""

    def __init__(self, client: AsyncRedis, settings: Settings, delay_s: float, fail: set[int]) -> None:
        super().__init__(client, settings)
        self.delay_s, self.fail = delay_s, fail
        self.calls, self.flying, self.overlapped = 0, False, 0
        self.order: list[int] = []

    async def read_users(self, *args: object, **kwargs: object):  # type: ignore[override]
        self.overlapped += self.flying
        return await super().read_users(*args, **kwargs)  # type: ignore[arg-type]

    async def apply(self, effect: Effect) -> Applied:
        self.calls += 1
        self.flying = True
        try:
            await asyncio.sleep(self.delay_s)
            if self.calls in self.fail:
                raise RedisConnectionError("lost before the script ran")
            applied = await super().apply(effect)
        finally:
            self.flying = False
        self.order += [new for _, new in effect.watermarks.values()]
        return applied


def batches(settings: Settings) -> tuple[list[list[Message]], list[ItemEvent], list[Event]]:
    """Batches of partition 0 whose messages keep touching the same 12 users (histories, vectors, candidates, the
    partition's ranker), each batch starting with the last events of the one before (their ids again)."""
    _, items, events = world(n_users=12, n_items=40, n_events=BATCHES * MESSAGES * EVENTS, seed=3)
    events = served(events)[: BATCHES * MESSAGES * EVENTS]
    out, offset = [], 0
    for b in range(BATCHES):
        batch = []
        for m in range(MESSAGES):
            first = (b * MESSAGES + m) * EVENTS
            chunk = events[first : first + EVENTS]
            if b and not m:
                chunk = events[first - REPEATED : first] + chunk
            at_ms = chunk[-1].ts + 1  # the record's timestamp: the same arrival in every run
            batch.append(Message(settings.kafka.events_topic, 0, offset, encode(chunk), at_ms))
            offset += 1
        out.append(batch)
    return out, items, events


async def run(
    settings: Settings,
    items: list[ItemEvent],
    runs: list[list[Message]],
    pipelined: bool,
    delay_s: float = 0.0,
    fail: frozenset[int] = frozenset(),
) -> tuple[SlowStore, list[tuple[int, int]]]:
    """Apply ``runs`` with a new processor; returns its store and, per acknowledged batch, (its last offset,
    partition 0's watermark in Redis when it was acknowledged)."""
    client = AsyncRedis.from_url(settings.redis.url)
    check = redis.Redis.from_url(settings.redis.url)
    store = SlowStore(client, settings, delay_s, set(fail))
    model = await model_for(settings, items)
    processor = BatchProcessor("event", store, settings, no_dead_letters, model)
    acked: list[tuple[int, int]] = []

    async def ack(batch: list[Message]) -> None:
        mark = check.hget(f"{settings.redis.prefix}:wm", f"{settings.kafka.events_topic}:0")
        acked.append((batch[-1].offset, -1 if mark is None else int(mark)))

    try:
        for batch in runs:
            if pipelined:
                await processor.process(batch, partial(ack, batch))
            else:
                await processor.process(batch)
                await ack(batch)
        await processor.settle()
    finally:
        await client.aclose()
        await model.fold_ins.redis.aclose()
        check.close()
    return store, acked


async def both(isolated_settings: Settings, tmp_path: Path) -> tuple[Settings, Settings, list, list, int]:
    """Settings of a clean run (prefix ``clean``, one batch at a time) and a pipelined one (``piped``), serving
    one model version; the batches, the items, and how many events the batches hold once each."""
    base = isolated_settings.replace(redis_prefix="clean")
    runs, items, events = batches(base)
    base, version = await trained(base, tmp_path, events, items)
    piped = base.replace(redis_prefix="piped")
    client = redis.Redis.from_url(base.redis.url)
    for key in client.scan_iter(match="clean:*"):  # the version and its item neighbours
        client.copy(key, b"piped:" + key[len(b"clean:") :])
    assert client.get("piped:model:current") == version.encode()
    return base, piped, runs, items, len(events)


async def test_pipelined_batches_leave_the_state_of_batches_applied_one_by_one(isolated_settings, tmp_path):
    clean, piped, runs, items, total = await both(isolated_settings, tmp_path)
    await run(clean, items, runs, pipelined=False)
    store, acked = await run(piped, items, runs, pipelined=True, delay_s=0.05)
    client = redis.Redis.from_url(clean.redis.url)
    assert store.overlapped >= BATCHES - 1, "the next batch was not built while a script ran"
    assert applied_events(client, "piped") == total  # each repeated event id applied once, across batches too
    state = dump_state(client, "clean")
    assert sum(key.startswith("ranker:") for key in state) == 1 and sum(key.endswith(":hist") for key in state) == 12
    assert differing_keys(dump_state(client, "piped"), state) == []
    assert [offset for offset, _ in acked] == [batch[-1].offset for batch in runs]
    assert all(mark >= offset for offset, mark in acked), "a batch was acknowledged before it was applied"


@pytest.mark.parametrize("failing", [1, 2, 5], ids=["first-call", "second-call", "mid-stream"])
async def test_a_failed_script_keeps_later_batches_unapplied_until_it_applies(isolated_settings, tmp_path, failing):
    """The call fails before reaching Redis while the next batch is being built on it: that batch is built again
    and applied after the failed one's retry, never before; acknowledgements stay in order and after the apply."""
    clean, piped, runs, items, _ = await both(isolated_settings, tmp_path)
    await run(clean, items, runs, pipelined=False)
    store, acked = await run(piped, items, runs, pipelined=True, delay_s=0.05, fail=frozenset({failing}))
    assert store.order == sorted(store.order) == [batch[-1].offset for batch in runs]  # each batch once, in order
    assert [offset for offset, _ in acked] == [batch[-1].offset for batch in runs]
    assert all(mark >= offset for offset, mark in acked)
    client = redis.Redis.from_url(clean.redis.url)
    assert differing_keys(dump_state(client, "piped"), dump_state(client, "clean")) == []


async def test_a_failed_flight_still_counts_the_messages_its_batch_found_applied(isolated_settings, tmp_path):
    """A batch resending the message before it: that one is found applied when the batch is built. Its call then
    fails in flight and is retried over its fresh messages only, so the count of messages found applied, taken
    when a call applies, left out the resent one."""
    _, piped, runs, items, _ = await both(isolated_settings, tmp_path)
    resent = [runs[0], [runs[0][-1], *runs[1]]]
    topic = {"topic": piped.kafka.events_topic}
    before = REGISTRY.get_sample_value("recstream_worker_messages_skipped_total", topic) or 0.0
    store, _ = await run(piped, items, resent, pipelined=True, delay_s=0.05, fail=frozenset({2}))
    assert store.order == [runs[0][-1].offset, runs[1][-1].offset], "the second call failed, then applied"
    assert REGISTRY.get_sample_value("recstream_worker_messages_skipped_total", topic) - before == 1


@pytest.mark.parametrize("kill_after", [1, 3, 6])
async def test_a_worker_killed_mid_pipeline_and_restarted_from_its_acks_leaves_a_clean_runs_state(
    isolated_settings, tmp_path, kill_after
):
    """Killed (every task cancelled) right after batch ``kill_after`` went in flight: a new processor with empty
    caches gets every message past the last acknowledged one again, as faust redelivers from its commit. Had a
    batch been acknowledged before its script applied, it would be lost here (no log to repair from)."""
    clean, piped, runs, items, _ = await both(isolated_settings, tmp_path)
    await run(clean, items, runs, pipelined=False)
    client = AsyncRedis.from_url(piped.redis.url)
    store = SlowStore(client, piped, 0.05, set())
    model = await model_for(piped, items)
    processor = BatchProcessor("event", store, piped, no_dead_letters, model)
    acked: list[int] = []

    async def ack(batch: list[Message]) -> None:
        acked.append(batch[-1].offset)

    async def feed() -> None:
        for batch in runs[: kill_after + 1]:
            await processor.process(batch, partial(ack, batch))

    await feed()
    flight = processor._flight
    assert flight is not None and not flight.done(), "no batch in flight at the kill"
    flight.cancel()
    await asyncio.gather(flight, return_exceptions=True)
    await client.aclose()
    await model.fold_ins.redis.aclose()
    committed = acked[-1] + 1 if acked else 0
    assert committed <= runs[kill_after][0].offset  # the batch in flight was not acknowledged
    rest = [[m for m in batch if m.offset >= committed] for batch in runs]
    await run(piped, items, [batch for batch in rest if batch], pipelined=True)
    check = redis.Redis.from_url(clean.redis.url)
    assert differing_keys(dump_state(check, "piped"), dump_state(check, "clean")) == []


async def test_an_acknowledgement_that_raises_in_flight_stops_the_beats(isolated_settings):
    """What escaped a flight (an acknowledgement that raised) showed only when its task was collected, the flight's
    later acknowledgements unrun and /healthz green. Now it is kept and the processor beats no more."""
    settings = isolated_settings
    client = AsyncRedis.from_url(settings.redis.url)
    beats: list[int] = []
    processor = BatchProcessor("event", StateStore(client, settings), settings, no_dead_letters,
                               beat=lambda: beats.append(1))  # fmt: skip
    views = [Event(type="view", user_id="u1", item_id=f"i{k}", ts=T0 + k) for k in range(2)]
    batches = [[Message(settings.kafka.events_topic, 0, k, encode(view), T0 + k)] for k, view in enumerate(views)]

    async def failing_ack() -> None:
        raise RuntimeError("the acknowledgement failed")

    async def ack() -> None:
        return None

    try:
        await processor.process(batches[0], failing_ack)
        await processor.settle()
        await asyncio.sleep(0)
        assert isinstance(processor.flight_failed, RuntimeError) and beats == [1], "beat once, when it applied"
        await processor.process(batches[1], ack)
        await processor.settle()
    finally:
        await client.aclose()
    assert beats == [1] and applied_events(redis.Redis.from_url(settings.redis.url), "rs") == 2
