"""A real worker keeps its agents alive and says when one is not: Redis error replies, a stalled batch, an
items topic whose last offset holds no record, a Redis error on the fold-in log. Real Kafka, real Redis, a real
``recstream worker`` process."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
import redis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from recstream.streams.processor import BatchProcessor
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from recstream.contracts.events import Event, ItemEvent, UserEvent, encode
from recstream.eventlog.log import Message
from recstream.shell.infra import Child
from recstream.store.state import StateStore
from tests.conftest import wait_until
from tests.streams.scenario import T0, applied_events, no_dead_letters, publish

pytestmark = pytest.mark.integration


def healthz(worker: Child) -> tuple[int, str]:
    try:
        with urlopen(f"{worker.url}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


def retries(worker: Child, reason: str) -> float:
    found = re.findall(rf'recstream_worker_batch_retries_total\{{reason="{reason}",topic="events-[^"]*"\}} (\S+)',
                       worker.metrics())  # fmt: skip
    return sum(map(float, found))


def fold_in_log_retries(worker: Child) -> float:
    found = re.findall(r'recstream_worker_fold_in_log_retries_total\{reason="redis_error"\} (\S+)', worker.metrics())
    return float(found[0]) if found else 0.0


def view(k: int) -> Event:
    return Event(type="view", user_id="u1", item_id=f"i{k}", ts=int(time.time() * 1000))


@asynccontextmanager
async def retrying_a_refused_batch(settings, worker_factory) -> AsyncIterator[tuple[Child, redis.Redis]]:
    """A worker that applied one event and retries the next while Redis refuses every write (OOM: maxmemory 1),
    until the block ends."""
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    worker.wait_ready()
    await publish(settings, events=[view(0)])
    wait_until(lambda: applied_events(client, "rs") == 1, what="the first event")
    client.config_set("maxmemory", 1)  # every write refused: OOM command not allowed
    try:
        await publish(settings, events=[view(1)])
        wait_until(lambda: retries(worker, "redis_error") >= 3, what="retries of the refused batch")
        yield worker, client
    finally:
        client.config_set("maxmemory", 0)


async def test_a_redis_error_reply_is_retried_and_counted_and_never_stops_the_agent(isolated_settings, worker_factory):
    """Redis answering with an error (OOM here; BUSY and READONLY alike) raised out of the events agent, which
    then stopped for good while the process lived. The batch is retried with back-off until Redis takes it,
    counted under its reason, and /healthz stays green (restarting would not help)."""
    settings = isolated_settings
    async with retrying_a_refused_batch(settings, worker_factory) as (worker, client):
        assert healthz(worker) == (200, "ok\n") and applied_events(client, "rs") == 1
    wait_until(lambda: applied_events(client, "rs") == 2, what="the refused batch once Redis takes writes")
    await publish(settings, events=[view(2)])
    wait_until(lambda: applied_events(client, "rs") == 3, what="the agent to go on")
    assert worker.alive() and retries(worker, "redis_unavailable") == 0


async def test_an_agent_stuck_in_a_batch_turns_healthz_red_until_it_moves(isolated_settings, worker_factory):
    """A stopped or stuck agent left the process up and its partitions applied by no one. /healthz answers 503,
    naming the agent, once a batch made no attempt for worker_stall_s (Redis paused under its write here)."""
    settings = isolated_settings.replace(worker_stall_s=1.0)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, events=[view(0)])
    wait_until(lambda: applied_events(client, "rs") == 1, what="the worker to apply")

    def green() -> bool:  # Redis holds a batch's writes a moment before the agent hears the reply and goes idle
        return healthz(worker) == (200, "ok\n")

    wait_until(green, timeout_s=5, what="/healthz green with the batch applied")
    client.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
    try:
        await publish(settings, events=[view(1)])
        wait_until(lambda: healthz(worker)[0] == 503, timeout_s=7, what="/healthz to turn red")
        status, body = healthz(worker)
        assert body.startswith("recstream.events stalled: no progress on its batch for") and status == 503
        assert applied_events(client, "rs") == 1
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    wait_until(lambda: applied_events(client, "rs") == 2, what="the batch once Redis takes writes")
    wait_until(green, timeout_s=5, what="/healthz green once the batch moved")


@pytest.mark.parametrize("pipeline", [False, True], ids=["one-at-a-time", "pipelined"])
async def test_a_worker_told_to_stop_while_its_batch_cannot_be_applied_exits_and_leaves_it_to_the_next(
    isolated_settings, worker_factory, pipeline: bool
):
    """SIGTERM while Redis refuses the batch (OOM here; a Redis paused or a bad setting alike): the worker retried on
    and faust waited for the batch's messages to be acknowledged, so the process stayed up until Redis took the batch
    (SIGKILL after 70 s in the review). Now the retries end and it exits; the batch's offset was never committed, so
    the next worker applies it."""
    settings = isolated_settings.replace(worker_pipeline=pipeline)
    async with retrying_a_refused_batch(settings, worker_factory) as (worker, client):
        worker.proc.terminate()
        worker.proc.wait(timeout=60)  # the old worker never exited while Redis refused
        assert applied_events(client, "rs") == 1
    worker_factory(settings)
    wait_until(lambda: applied_events(client, "rs") == 2, what="the next worker to apply the batch left unapplied")


@pytest.mark.parametrize("ending", ["transaction", "deleted"])
async def test_a_worker_applies_events_when_the_items_topics_last_offset_holds_no_record(
    isolated_settings, worker_factory, ending
):
    """A starting worker holds every batch until its item feed has read the items that existed at its start. That
    waited for a record at the end offset − 1, which never comes when the offset holds a transaction's commit
    marker or the records were deleted (kafka-delete-records, retention): the worker applied nothing, ever."""
    settings = isolated_settings
    items = [ItemEvent(op="new", item_id=f"i{k}", ts=int(time.time() * 1000)) for k in range(3)]
    if ending == "transaction":
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, transactional_id=uuid.uuid4().hex)
        await producer.start()
        try:
            async with producer.transaction():
                for item in items:
                    await producer.send(settings.kafka.items_topic, encode(item), key=item.item_id.encode())
        finally:
            await producer.stop()
    else:
        await publish(settings, items=items)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
        await admin.start()
        try:  # a compacted topic refuses deleting records; compact,delete (retention too) allows it
            policy = {"cleanup.policy": "compact,delete"}
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.kafka.items_topic, policy)])
            await admin.delete_records({TopicPartition(settings.kafka.items_topic, 0): RecordsToDelete(len(items))})
        finally:
            await admin.close()
    worker = worker_factory(settings)
    await publish(settings, events=[view(0)])
    client = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: applied_events(client, "rs") == 1 or not worker.alive(), what="the event applied")
    assert worker.alive() and applied_events(client, "rs") == 1


async def test_a_redis_error_on_the_fold_in_log_never_stops_the_worker(isolated_settings, worker_factory):
    """The item feed's fold-in follower waited out a lost connection but not an error reply; on a Redis Cluster a
    failover answers CLUSTERDOWN for a moment, which ended the item feed: faust crashed the app and the worker
    exited (one of the two workers of the cluster fault test, mid-failover). A WRONGTYPE reply stands in for it
    here, on every read of the log: the follower retries, counted, and the worker applies on."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    worker.wait_ready()
    await publish(settings, events=[view(0)])
    wait_until(lambda: applied_events(client, "rs") == 1, what="the first event")
    client.set("rs:foldin:log", "not a stream")
    try:
        wait_until(lambda: not worker.alive() or fold_in_log_retries(worker) >= 3, what="retried reads of the log")
        await publish(settings, events=[view(1)])
        wait_until(lambda: not worker.alive() or applied_events(client, "rs") == 2, what="the next event")
        assert worker.alive() and applied_events(client, "rs") == 2 and healthz(worker) == (200, "ok\n")
    finally:
        client.delete("rs:foldin:log")


class ModelThatRaises:
    """A live model whose every load raises ``error``: a batch that needs it fails the same way on every attempt."""

    current = None

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.items_caught_up = asyncio.Event()
        self.items_caught_up.set()
        self.loads = 0

    async def ensure(self, version: str | None) -> None:
        self.loads += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "alive"),
    [(ValueError("the worker's own: an artifact that cannot load"), False), (RedisConnectionError("away"), True)],
    ids=["own error", "redis away"],
)
async def test_a_batch_that_fails_on_the_workers_own_error_is_no_sign_of_life(isolated_settings, error, alive):
    """A failed attempt beat liveness whatever failed, so a batch failing on the worker's own error retried forever
    behind a green /healthz: the worst failure, an agent that stops applying while its process lives. Only a
    failure that waiting cures (Redis, Kafka, another writer) counts as a sign of life now."""
    client = AsyncRedis.from_url(isolated_settings.redis.url)
    model, beats = ModelThatRaises(error), []
    processor = BatchProcessor("user", StateStore(client, isolated_settings), isolated_settings, no_dead_letters,
                               model, beat=lambda: beats.append(model.loads))  # type: ignore[arg-type]  # fmt: skip
    user = UserEvent(user_id="u1", ts=T0, preferred_categories=["news"])
    message = Message(isolated_settings.kafka.users_topic, 0, 0, encode(user), T0)
    attempt = asyncio.create_task(processor.process([message]))
    try:
        while model.loads < 4:
            await asyncio.sleep(0.05)
    finally:
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        await client.aclose()
    assert (beats[:3] == [1, 2, 3]) if alive else (beats == [])
