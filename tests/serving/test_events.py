"""POST /v1/events and the broker (issue 15, item 6): a 202 means this request's events are on the topic, and
every event carries an id, so a client's retry after a 503 is applied once by the workers.

The events are read back from the topic (fresh topics per test, no worker reads them).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.serving.conftest import KEY, World, isolated_topics, published_events, published_messages, reader_client
from tests.serving.test_feed import WORLD_TIME

pytestmark = pytest.mark.integration
ROUNDS = 4
SMALLS = 100


def views(name: str, count: int, ts: int) -> list[dict]:
    return [{"type": "view", "user_id": f"{name}-{k}", "item_id": "i001", "ts": ts + k} for k in range(count)]


async def test_a_202_means_the_requests_own_events_are_on_the_topic_whoever_else_is_cancelled(world: World):
    """Requests of a few events keep coming while large ones are cancelled midway (clients that hung up):
    every request answered 202 finds all its events on the topic, and no Kafka message carries events of
    two requests, so no request ever holds (and can lose, when cancelled) another one's events.
    """
    settings = await isolated_topics(world.settings)
    rng = random.Random(15)
    accepted: list[dict] = []
    cancelled = 0
    async with reader_client(settings, KEY) as reader:

        async def small(n: int) -> None:
            body = views(f"small-{n}", 3, WORLD_TIME + 10 * n)
            if (await reader.post("/v1/events", json=body)).status_code == 202:
                accepted.extend(body)

        for round_ in range(ROUNDS):
            large = asyncio.create_task(reader.post("/v1/events", json=views(f"large-{round_}", 9_000, WORLD_TIME)))
            asyncio.get_running_loop().call_later(rng.uniform(0.05, 0.5), large.cancel)
            smalls = []
            for n in range(SMALLS):
                smalls.append(asyncio.create_task(small(SMALLS * round_ + n)))
                await asyncio.sleep(0.002)
            await asyncio.gather(*smalls)
            try:
                await large
            except asyncio.CancelledError:
                cancelled += 1
    assert cancelled > 0
    assert len(accepted) == ROUNDS * SMALLS * 3, "every small request was acknowledged"
    messages = await published_messages(settings, len(accepted))
    on_topic = {(e.user_id, e.ts) for message in messages for e in message}
    lost = [(e["user_id"], e["ts"]) for e in accepted if (e["user_id"], e["ts"]) not in on_topic]
    assert lost == [], f"{len(lost)} events of 202 requests never reached the topic"
    mixed = [m for m in messages if len({e.user_id.rsplit("-", 1)[0] for e in m}) > 1]
    assert mixed == [], f"{len(mixed)} of {len(messages)} messages carry events of several requests"


async def test_events_without_an_id_get_one_from_their_content_so_a_resent_request_carries_the_same(world: World):
    settings = await isolated_topics(world.settings)
    body = views("u-ids", 3, WORLD_TIME)
    body[2]["event_id"] = "client-chosen"
    async with reader_client(settings, KEY) as reader:
        for _ in range(2):  # a client resending after a 503
            assert (await reader.post("/v1/events", json=body)).status_code == 202
    events = await published_events(settings, 6)
    ids = {(e.user_id, e.event_id) for e in events}
    assert len(events) == 6 and len(ids) == 3, "the same three ids twice"
    assert ("u-ids-2", "client-chosen") in ids and all(i for _, i in ids)
