"""Only the catalogue makes an item eligible (issue 15, item 2): events cannot put a made-up item into feeds.

The attack reproduced on a live system: one POST of 600 events (300 made-up users each viewing and
clicking ``buy-now-evil``, never announced on ``items``) made it ``popular`` in new and warm users'
feeds within 3 s. Through a real worker and the real reader: such an item is counted but in no
feed until the items topic announces it; ``require_announced_items=false`` keeps the old rule for
systems without a catalogue feed.
"""

from __future__ import annotations

import pytest
import redis

from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.contracts.settings import Settings
from tests.conftest import wait_until
from tests.serving.conftest import reader_client
from tests.streams.scenario import T0, publish

pytestmark = pytest.mark.integration
EVIL, REAL = "buy-now-evil", "real-item"


def attack(first_ts: int) -> list[Event]:
    """300 made-up users each viewing and clicking EVIL, and one real user viewing REAL."""
    events = [Event(type="view", user_id="u-real", item_id=REAL, ts=first_ts)]
    for k in range(300):
        for kind in ("view", "click"):
            events.append(Event(type=kind, user_id=f"made-up-{k}", item_id=EVIL, ts=first_ts + k))
    return events


async def feed_items(settings: Settings) -> list[str]:
    async with reader_client(settings) as reader:
        page = (await reader.get("/v1/feed/u-new", params={"limit": 10})).json()
    assert page["degraded"] is False
    return [i["item_id"] for i in page["items"]]


async def start(settings: Settings, worker_factory) -> redis.Redis:
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    worker_factory(settings)
    real = ItemEvent(op="new", item_id=REAL, ts=T0, created_ts=T0, categories=["news"])
    await publish(settings, users=[UserEvent(user_id="u-real", ts=T0, attributes={"age": 30})], items=[real])
    wait_until(lambda: client.zscore("rs:pool", REAL) is not None, what="the real item in the pool")
    events = attack(T0 + 1)
    await publish(settings, events=events)
    wait_until(lambda: client.hmget("rs:totals", "views", "clicks") == ["301", "300"], what="the attack applied")
    return client


async def test_events_for_an_unannounced_item_count_but_put_it_in_no_feed_until_announced(
    isolated_settings, worker_factory
):
    settings = isolated_settings
    assert settings.model.require_announced_items is True, "the default"
    client = await start(settings, worker_factory)
    assert (client.hget("rs:views", EVIL), client.hget("rs:clicks", EVIL)) == ("300", "300"), "counted"
    assert client.sismember("rs:unavailable", EVIL)
    assert client.zscore("rs:rank", EVIL) is None and client.zscore("rs:pool", EVIL) is None
    assert not [s for s in client.smembers("rs:segments") if client.zscore(f"rs:rank:{s}", EVIL) is not None]
    assert await feed_items(settings) == [REAL]

    await publish(settings, items=[ItemEvent(op="new", item_id=EVIL, ts=T0 + 400, categories=["news"])])
    wait_until(lambda: client.zscore("rs:rank", EVIL) is not None, what="the announced item ranked")
    assert not client.sismember("rs:unavailable", EVIL)
    assert client.sismember("rs:graduated", EVIL), "its 300 counted views are past the pool's 200: graduated at once"
    assert EVIL in await feed_items(settings), "announced, it is eligible, with the counts it had"


async def test_without_a_catalogue_feed_an_item_enters_the_pool_at_its_first_event(isolated_settings, worker_factory):
    settings = isolated_settings.replace(require_announced_items=False)
    client = await start(settings, worker_factory)
    assert not client.sismember("rs:unavailable", EVIL)
    assert client.zscore("rs:rank", EVIL) is not None
    assert client.sismember("rs:graduated", EVIL), "in the pool from its first event, out after 200 views"
    assert EVIL in await feed_items(settings)
