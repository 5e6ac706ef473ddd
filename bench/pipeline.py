"""A real worker and readers on a benchmark's private Kafka + Redis, driven in step: publish, wait, read.

``bench.common.services`` gives the private Kafka and Redis; :func:`pipeline` starts the recstream
children on them (``infra.Child``, stopped by pid on the way out, whatever happens) and hands back a
:class:`Pipeline` that publishes through ``EventProducer`` and knows when the worker has applied what
was published. "Caught up" is read from the worker's own effectively-once state: the Redis watermark
of every partition reaches the last offset written. Announcements (users, items) are waited for
before the events that use them: the users and items agents are separate consumers, so otherwise an
event could be applied before its item is in the index or its user's segment is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from recstream.models.artifacts import ModelArtifacts
from redis.asyncio import Redis

from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.shell import infra
from recstream.shell.infra import Child
from recstream.store.fold_ins import FoldInStore

DEGRADED_RETRIES = 3
READER_CONCURRENCY = 4  # feed requests in flight per reader


@dataclass(frozen=True)
class Page:
    """A feed page as served: (item, source) pairs, how many degraded answers were asked again, whether
    it is still degraded after DEGRADED_RETRIES, whether the ranker ordered it, and its scroll session."""

    items: list[tuple[str, str]]
    retried: int
    degraded: bool
    ranked: bool = False
    session: str | None = None


class Pipeline:
    """Drive a started worker (and readers) through publish → caught up → read."""

    def __init__(self, settings: Settings, producer: EventProducer, http: httpx.AsyncClient, worker: Child,
                 readers: Mapping[str, Child]) -> None:  # fmt: skip
        self.settings = settings
        self.producer = producer
        self.http = http
        self.worker = worker
        self.readers = readers
        self.keys = Keys(settings.redis.prefix)
        self.redis = Redis.from_url(settings.redis.url)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
        self.partitions = {
            settings.kafka.events_topic: settings.kafka.events_partitions,
            settings.kafka.items_topic: settings.kafka.items_partitions,
            settings.kafka.users_topic: settings.kafka.users_partitions,
        }
        self.limits = {name: asyncio.Semaphore(READER_CONCURRENCY) for name in readers}

    async def caught_up(self, topics: Sequence[str]) -> None:
        """Until the worker's watermark reaches the end of every partition of ``topics``."""
        tps = [TopicPartition(t, p) for t in topics for p in range(self.partitions[t])]
        ends = await self.consumer.end_offsets(tps)
        want = {f"{tp.topic}:{tp.partition}": end - 1 for tp, end in ends.items() if end > 0}
        while True:
            marks = {k.decode(): int(v) for k, v in (await self.redis.hgetall(self.keys("wm"))).items()}
            if all(marks.get(tp, -1) >= end for tp, end in want.items()):
                return
            self.worker.check()
            await asyncio.sleep(0.005)

    async def announce(self, users: Sequence[UserEvent], items: Sequence[ItemEvent]) -> None:
        """Publish users and items and wait until the worker applied them."""
        if not users and not items:
            return
        for user in users:
            await self.producer.send_user(user)
        for item in items:
            await self.producer.send_item(item)
        await self.producer.flush()
        await self.caught_up([self.settings.kafka.users_topic, self.settings.kafka.items_topic])

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish events and wait until the worker applied them."""
        await self.producer.send_events(events)
        await self.producer.flush()
        await self.caught_up([self.settings.kafka.events_topic])

    async def fold_ins(self) -> dict[str, np.ndarray]:
        """The fold-in vectors the worker stored so far for the served model (item → vector)."""
        version = await self.redis.get(self.keys("model:current"))
        return (await FoldInStore(self.redis, self.keys).stored(version.decode()))[0] if version else {}

    async def candidates(self, users: Sequence[str]) -> list[list[str]]:
        """Each user's stored candidate list (items only, best first); [] when there is none yet."""
        raw = await self.redis.mget([self.keys.user(u, "cand") for u in users])
        return [[row[0] for row in orjson.loads(value)] if value else [] for value in raw]

    async def feed(self, reader: str, user: str, **params: object) -> Page:
        """The user's first page from reader ``reader``; a non-200 answer raises. A degraded page (Redis timed out
        under this machine's load and the reader answered its fallback list), or a request on a kept-alive
        connection the reader closed meanwhile (no answer at all), is asked again, up to DEGRADED_RETRIES times."""
        url = f"{self.readers[reader].url}/v1/feed/{user}"
        for attempt in range(DEGRADED_RETRIES + 1):
            async with self.limits[reader]:
                try:
                    response = await self.http.get(url, params=params)
                except httpx.RemoteProtocolError:  # a kept-alive connection the reader closed as we sent: no answer
                    if attempt == DEGRADED_RETRIES:
                        raise
                    continue
            response.raise_for_status()
            body = response.json()
            if not body["degraded"] or attempt == DEGRADED_RETRIES:
                break
            await asyncio.sleep(0.05 * (attempt + 1))
        items = [(item["item_id"], item["source"]) for item in body["items"]]
        return Page(items, attempt, body["degraded"], body["ranked"], body["session"])

    async def served_vectors(self, sessions: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        """Per (user, session): item → the feature vector (contracts.ranking's context value) the session's last
        page served it with, as the reader's events route would stamp a view or click of it
        (serving/feed_store.FeedStore.sources); one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for user, session in sessions:
            pipe.lrange(self.keys.user(user, f"feed:{session}"), -1, -1)
        out = []
        for pages in await pipe.execute():
            rows = orjson.loads(pages[0]) if pages else []
            out.append({row[0]: row[2] for row in rows if len(row) == 3 and isinstance(row[2], str)})
        return out

    async def write_rankers(self, states: Mapping[int, bytes]) -> None:
        """Store the events partitions' ranker states where the workers keep theirs (``Keys.ranker``)."""
        topic = self.settings.kafka.events_topic
        if states:
            await self.redis.mset({self.keys.ranker(topic, p): state for p, state in states.items()})


@asynccontextmanager
async def pipeline(settings: Settings, logs: Path, name: str, model: ModelArtifacts | None = None,
                   readers: Mapping[str, Mapping[str, object]] | None = None) -> AsyncIterator[Pipeline]:  # fmt: skip
    """Topics, the model (when given) published, one worker and one reader per entry of ``readers`` (name → its
    settings overrides), all ready; logs in ``logs/<name>-worker.log`` and ``logs/<name>-reader-<reader>.log``.
    A reader that does not get ready raises (infra.InfraError names its log)."""
    logs.mkdir(parents=True, exist_ok=True)
    await infra.ensure_topics(settings)
    if model is not None:
        await training.publish(settings, model)
    worker = Child("worker", settings, logs / f"{name}-worker.log")
    serving: dict[str, Child] = {}
    try:
        for reader, overrides in (readers or {}).items():
            serving[reader] = Child("serve", settings.replace(**overrides), logs / f"{name}-reader-{reader}.log")
        for child in serving.values():
            await asyncio.to_thread(child.wait_ready)
        async with EventProducer(settings) as producer, httpx.AsyncClient(timeout=10.0) as http:
            driver = Pipeline(settings, producer, http, worker, serving)
            await driver.consumer.start()
            try:
                yield driver
            finally:
                await driver.consumer.stop()
                await driver.redis.aclose()
    finally:
        worker.stop()
        for child in serving.values():
            child.stop()
