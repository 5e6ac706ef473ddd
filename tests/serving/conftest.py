"""Reader fixtures: one world built end to end (Kafka → a real worker → Redis, a trained model), and readers on it.

The world is built once per session in its own Redis database (2) and its own topics, so the
function-scoped ``isolated_settings`` of other tests (database 1) never touch it. Tests that change
it (unavailability, preferences, events) use their own users or items. Its readers need the API key
WORLD_KEY for writes, as a production reader does; the ``reader`` client sends it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import uvicorn
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from recstream.models.ranker import FTRLConfig, FTRLRanker
from recstream.serving.app import create_app

from recstream.contracts.events import Event, ItemEvent, UserEvent, decode, segment_of
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import Settings
from recstream.shell import infra
from recstream.shell.infra import free_port
from recstream.store.state_dump import settled
from tests.conftest import wait_until
from tests.streams.scenario import publish, trained

DAY_MS = 86_400_000
T0 = (int(time.time() * 1000) // DAY_MS - 10) * DAY_MS  # ten days ago: every timestamp passes the contract
CATEGORIES = ["news", "sport", "music", "film", "kids", "docs"]
N_ITEMS, N_WARM = 700, 60
WORLD_KEY = "world-writes-key"
KEY = {"X-API-Key": WORLD_KEY}
"""The header a write to a reader on the world's settings needs."""


@dataclass
class World:
    """What was published, for tests to compare the reader against."""

    settings: Settings
    users: list[UserEvent]
    items: list[ItemEvent]
    events: list[Event]
    favourite: dict[str, str]  # warm user → the category they mostly click
    cold: list[str]  # users with attributes and nothing else
    fresh: dict[str, list[str]] = field(default_factory=dict)  # category → new (pool) items
    model_version: str = ""

    @property
    def warm(self) -> list[str]:
        return list(self.favourite)

    def categories(self, item: str) -> list[str]:
        return next(i.categories for i in self.items if i.item_id == item)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis.url, decode_responses=True)


def build_world(
    seed: int = 5,
) -> tuple[list[UserEvent], list[ItemEvent], list[Event], dict[str, str], list[str], dict[str, list[str]]]:
    """Warm users who mostly click one category; every old item viewed at least once; new items in the pool.

    Old items are created at T0 and the events happen three days later, so the workers' age rule
    (48 h, event time) has graduated them; new items are created after the last event and stay in the
    pool: four per category for the fresh lists, plus three for the bandit test ("ts-good": 30
    clicks in 60 views, "ts-bad": 0 in 60, "ts-unknown": no data).
    """
    rng = random.Random(seed)
    users, favourite = [], {}
    for k in range(N_WARM):
        user = f"warm-{k:03d}"
        users.append(
            UserEvent(user_id=user, ts=T0, attributes={"age": rng.choice([22, 30, 40]), "gender": "MF"[k % 2]})
        )
        favourite[user] = CATEGORIES[k % 4]
    cold = [f"cold-{k}" for k in range(6)]
    users += [UserEvent(user_id=u, ts=T0, attributes={"age": 30, "gender": "MF"[k % 2]}) for k, u in enumerate(cold)]
    items = [
        ItemEvent(
            op="new",
            item_id=f"i{k:03d}",
            ts=T0,
            created_ts=T0,
            categories=[CATEGORIES[k % 6], CATEGORIES[(k % 6 + 1 + (k // 6) % 5) % 6]],
        )
        for k in range(N_ITEMS)
    ]
    start, created = T0 + 3 * DAY_MS, T0 + 4 * DAY_MS
    fresh = {c: [f"fresh-{c}-{j}" for j in range(4)] for c in CATEGORIES}
    items += [
        ItemEvent(op="new", item_id=i, ts=created, created_ts=created + n, categories=[c])
        for c, new in fresh.items()
        for n, i in enumerate(new)
    ]
    items += [
        ItemEvent(op="new", item_id=i, ts=created, created_ts=created, categories=["docs"])
        for i in ("ts-good", "ts-bad", "ts-unknown")
    ]
    by_category = {c: [i.item_id for i in items[:N_ITEMS] if c in i.categories] for c in CATEGORIES}
    events: list[Event] = []

    def add(kind: str, user: str, item: str) -> None:
        events.append(
            Event(type=kind, user_id=user, item_id=item, ts=start + 10 * len(events), event_id=f"e{len(events)}")
        )

    for k, item in enumerate(i.item_id for i in items[:N_ITEMS]):  # every old item gets a view
        add("view", f"warm-{k % N_WARM:03d}", item)
    for user, category in favourite.items():
        for _ in range(30):
            liked = rng.random() < 0.7
            item = rng.choice(by_category[category] if liked else [i.item_id for i in items[:N_ITEMS]])
            add("view", user, item)
            if rng.random() < (0.4 if liked else 0.05):
                add("click", user, item)
    for k in range(60):
        add("view", f"warm-{k % N_WARM:03d}", "ts-good")
        add("view", f"warm-{(k + 7) % N_WARM:03d}", "ts-bad")
        if k % 2 == 0:
            add("click", f"warm-{k % N_WARM:03d}", "ts-good")
    return users, items, events, favourite, cold, fresh


WORLD_DATABASES = itertools.count(4)
"""Each ``world`` gets a Redis database of its own (1 is ``isolated_settings``', 3 tests/streams/test_cluster.py's):
tests/client/conftest.py re-exports the fixture, so a session running both packages builds two worlds at once, and
on one database the later overwrote the earlier's keys (under pytest-xdist a serving test read the client world's
model)."""


@pytest.fixture(scope="session")
def world(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The world published through Kafka and applied by a real worker, with a trained model serving candidates."""
    suffix = uuid.uuid4().hex[:8]
    settings = services.on_topics(
        suffix,
        worker_group=f"reader-world-{suffix}",
        redis_url=services.redis.url.rsplit("/", 1)[0] + f"/{next(WORLD_DATABASES)}",
        pool_cache_s=0.1,
        popular_refresh_s=0.2,
        api_key=SecretStr(WORLD_KEY),
    )
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    client.flushdb()
    asyncio.run(infra.ensure_topics(settings))
    users, items, events, favourite, cold, fresh = build_world()
    tmp = tmp_path_factory.mktemp("reader-world")
    settings, version = asyncio.run(trained(settings, tmp, events, items, candidates_m=settings.model.candidates_m))
    worker = infra.Child("worker", settings, tmp / "worker.log")
    try:
        asyncio.run(publish(settings, users=users, items=items))
        wait_until(lambda: client.hlen("rs:user:seg") == len(users), what="user segments")
        # every item applied before any event: an item first seen in an event enters the pool at the
        # event's time, and its later item event does not move it back to its real created_ts
        wait_until(lambda: client.zcard("rs:pool") == len(items), what="every item in the pool")
        asyncio.run(publish(settings, events=events))
        totals = Counter(e.type for e in events)
        wait_until(
            lambda: (
                client.hget("rs:totals", "views") == str(totals["view"])
                and client.hget("rs:totals", "clicks") == str(totals["click"])
            ),
            what="every event applied",
        )
        wait_until(lambda: all(client.exists(f"rs:user:{u}:cand") for u in favourite), what="candidate lists")
        wait_until(lambda: settled(client, Keys.of(settings)), what="the rankings final (segment scores)")
        yield World(settings, users, items, events, favourite, cold, fresh, version)
    finally:
        worker.stop()
        client.flushdb()
        client.close()


@asynccontextmanager
async def reader_client(
    settings: Settings, headers: dict[str, str] | None = None, address: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """The reader app in process (lifespan run, snapshot loaded) behind an httpx client that sends ``headers``
    with every request, from the client ``address``."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.service.loader.refresh(force_popular=True)
        transport = httpx.ASGITransport(app=app, client=(address, 123))
        async with httpx.AsyncClient(transport=transport, base_url="http://reader", headers=headers) as client:
            client.app = app  # type: ignore[attr-defined]  # tests reach the reader to reload its snapshot
            yield client


@pytest.fixture
async def reader(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """A reader on the world, its client sending the world's key."""
    async with reader_client(world.settings, KEY) as client:
        yield client


async def feed(reader: httpx.AsyncClient, user: str, *, degraded: bool = False, **params: object) -> dict:
    """GET /v1/feed/{user}'s page, asked again (5 times at most) while it comes degraded, unless ``degraded`` allows it.

    On a loaded machine the reader's Redis deadline sometimes passes: the answer is then a degraded page without a
    session (tests/serving/test_degraded.py's subject), on which a test of sessions, attribution or ranking proves
    nothing (a CI run's attribution test once found 30 of its 31 sessions: one first page had come degraded).
    """
    for _ in range(5):
        resp = await reader.get(f"/v1/feed/{user}", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        if degraded or not page["degraded"]:
            return page
    raise AssertionError(f"5 degraded answers in a row for {user}: {page}")


async def reload(client: httpx.AsyncClient) -> None:
    """Reload the reader's snapshot now (instead of waiting pool_cache_s), e.g. after a worker wrote."""
    await client.app.state.service.loader.refresh(force_popular=True)  # type: ignore[attr-defined]


class LiveReader:
    """The reader on uvicorn in a thread of this process (a real socket), for clients that need a URL."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            loop="asyncio",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveReader:
        """Started, with its snapshot loaded. The reader's first reload has 2 s and the reader starts without it when
        it times out (a loaded machine): until a later one its feeds are empty or short, without a model version,
        never ranked. A 3 to 5 s Redis stall as the reader started failed every explorer test (no cards, or a ranked
        page on "fixed blend") and tests/client/test_live.py's typed-feed and seed tests."""
        self.thread.start()
        try:
            wait_until(lambda: self.server.started, timeout_s=20, what="the reader to start")
            wait_until(self._loaded, timeout_s=30, what="the reader to load its snapshot")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _loaded(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=10).json()["snapshot_loaded"]

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def segment(world: World, user: str) -> str:
    return segment_of(next(u.attributes for u in world.users if u.user_id == user))


async def isolated_topics(settings: Settings) -> Settings:
    """Same Redis, fresh topics nobody consumes: for readers whose writes must not reach the world's worker."""
    fresh = settings.on_topics(uuid.uuid4().hex[:8])
    await infra.ensure_topics(fresh)
    return fresh


async def published_messages(settings: Settings, at_least: int, timeout_s: float = 30.0) -> list[list[Event]]:
    """The events of every message on the settings' events topic, message by message, read from the start
    until ``at_least`` events have come and nothing more arrives for a second (so a surplus shows too)."""
    consumer = AIOKafkaConsumer(
        settings.kafka.events_topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[list[Event]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            found += [decode(m.value, "event", 2**53)[0] for messages in batches.values() for m in messages]
            if not batches and sum(map(len, found)) >= at_least:
                break
    finally:
        await consumer.stop()
    return found


async def published_events(settings: Settings, at_least: int, timeout_s: float = 30.0) -> list[Event]:
    """Every event on the settings' events topic (see :func:`published_messages`)."""
    return [e for message in await published_messages(settings, at_least, timeout_s) for e in message]


@pytest.fixture
async def own_redis(world: World, tmp_path: Path) -> AsyncIterator[Settings]:
    """A separate redis-server holding a copy of the world's keys; stopped (by its pid) at the end."""
    settings = (await isolated_topics(world.settings)).replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", run_dir=tmp_path / "run"
    )
    infra.redis_up(settings)
    source, target = redis.Redis.from_url(world.settings.redis.url), redis.Redis.from_url(settings.redis.url)
    pipe = target.pipeline(transaction=False)
    for key in source.scan_iter("rs:*", count=1000):
        pipe.restore(key, 0, source.dump(key), replace=True)
    pipe.execute()
    source.close()
    target.close()
    yield settings
    infra.stop(infra.redis_service(settings))


def trained_ranker(clicked: str, skipped: str, rows: int = 400, seed: int = 0) -> FTRLRanker:
    """An FTRL ranker of the served feature set, trained on rows that each set one feature: ``clicked``'s rows
    were clicked, ``skipped``'s never. So its weight on ``clicked`` is strongly positive, on ``skipped`` strongly
    negative, and on every other feature exactly 0 (FTRL moves only the coordinates of nonzero features)."""
    rng = random.Random(seed)
    x, labels = np.zeros((rows, len(FEATURES))), []
    for k in range(rows):
        feature = clicked if rng.random() < 0.5 else skipped
        x[k, FEATURES.index(feature)] = 1.0
        labels.append(int(feature == clicked))
    ranker = FTRLRanker(len(FEATURES), FTRLConfig(alpha=1.0))
    ranker.update(x, labels)
    return ranker


def kill_redis(settings: Settings) -> None:
    pid = infra.redis_service(settings).pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not infra.port_open(settings.redis.port), timeout_s=10, what="Redis to die")
