"""Both clients against the real reader on a socket, with Kafka, Redis and a worker: what they send is
applied, what they read is typed, their retries repeat event ids, and their bodies fit the reader's limits."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from pydantic import SecretStr

from recstream.client import AsyncClient, Client, FeedPage, Ready, RecstreamError, SimilarItems, Stats
from recstream.contracts.events import MAX_MESSAGE_BYTES, Event
from recstream.contracts.settings import Settings
from tests.client.conftest import NOW_MS, Recorder, at_byte_limit, at_count_limit, event_ids_on_the_log
from tests.conftest import wait_until
from tests.serving.conftest import WORLD_KEY, LiveReader, World

pytestmark = pytest.mark.integration


async def test_feeds_neighbours_stats_and_readiness_come_back_typed(world: World):
    user, r = world.warm[-1], world.redis()
    item = next(i.item_id for i in world.items if r.exists(f"rs:item:{i.item_id}:similar"))
    with LiveReader(world.settings) as live, Client(live.url, api_key=WORLD_KEY) as client:
        page = client.feed(user, limit=20)
        more = client.feed(user, limit=20, cursor=page.next_cursor)
        assert isinstance(page, FeedPage) and len(page.items) == len(more.items) == 20
        assert page.warm and not page.degraded and page.model_version == world.model_version
        assert not {i.item_id for i in page.items} & {i.item_id for i in more.items}
        stored = [n for n, _ in json.loads(r.get(f"rs:item:{item}:similar"))]
        neighbours = client.similar(item, limit=5)
        assert isinstance(neighbours, SimilarItems) and [n.item_id for n in neighbours.items] == stored[:5]
        with pytest.raises(RecstreamError) as caught:
            client.similar("no-such-item")
        assert caught.value.status == 404
        async with AsyncClient(live.url, api_key=WORLD_KEY) as aclient:
            again = await aclient.feed(user, limit=20, seed=7)
            assert isinstance(again, FeedPage) and len(again.items) == 20 and again.seed == 7
            assert await aclient.ready() == Ready(redis=True, model_version=world.model_version, snapshot_loaded=True)
            assert isinstance(await aclient.stats(), Stats)


async def test_events_sent_by_both_clients_reach_the_worker(isolated_settings: Settings, worker_factory):
    worker_factory(isolated_settings)
    views = [{"type": "view", "user_id": "client-a", "item_id": f"i{k}", "ts": NOW_MS + k} for k in range(30)]
    clicks = [Event(type="click", user_id="client-a", item_id=f"i{k}", ts=NOW_MS + k) for k in range(5)]
    more = [{"type": "view", "user_id": "client-b", "item_id": f"i{k}", "ts": NOW_MS + k} for k in range(20)]
    with LiveReader(isolated_settings.replace(open_writes=True)) as live:
        with Client(live.url, api_key=WORLD_KEY) as client:
            assert client.send_events(views + clicks).accepted == 35
        async with AsyncClient(live.url, api_key=WORLD_KEY) as aclient:
            assert (await aclient.send_events(more)).accepted == 20
    r = redis.Redis.from_url(isolated_settings.redis.url, decode_responses=True)
    wait_until(lambda: r.hmget("rs:totals", "views", "clicks") == ["50", "5"], what="the events applied")
    r.close()


async def test_a_retry_after_a_lost_answer_sends_the_same_event_ids(isolated_settings: Settings):
    """The reader published the first attempt but its answer was lost: the retry carries the same ids, so both
    copies on the log are one event each for the workers' de-duplication."""
    recorder = Recorder(lose=frozenset({0}))
    events = [{"type": "view", "user_id": "client-r", "item_id": f"i{k}", "ts": NOW_MS} for k in range(10)]
    with (
        LiveReader(isolated_settings.replace(open_writes=True)) as live,
        Client(live.url, transport=recorder) as client,
    ):
        assert client.send_events(events).accepted == 10
    assert recorder.statuses == [202, 202] and recorder.bodies[0] == recorder.bodies[1]
    sent = [e["event_id"] for e in json.loads(recorder.bodies[0])]
    assert len(set(sent)) == 10
    assert await event_ids_on_the_log(isolated_settings) == dict.fromkeys(sent, 2)


@pytest.mark.parametrize(("offset", "requests"), [(-1, 1), (0, 1), (1, 2)])
@pytest.mark.parametrize("events_at", [at_byte_limit, at_count_limit])
def test_the_reader_accepts_every_body_at_its_limits(isolated_settings: Settings, events_at, offset, requests):
    events = events_at(offset)
    recorder = Recorder()
    with LiveReader(isolated_settings.replace(open_writes=True)) as live:
        with Client(live.url, transport=recorder, timeout_s=30) as client:
            assert client.send_events(events).accepted == len(events)
        assert recorder.statuses == [202] * requests
        if offset == 1:  # the limit is the reader's: one body past it is refused
            whole = b"[" + b",".join(e.model_dump_json(exclude_none=True).encode() for e in events) + b"]"
            refused = httpx.post(
                f"{live.url}/v1/events", content=whole, headers={"content-type": "application/json"}, timeout=30
            )
            assert refused.status_code == (413 if len(whole) > MAX_MESSAGE_BYTES else 422), refused.text


def test_writes_need_the_key_the_reader_is_given_and_preferences_round_trip(isolated_settings: Settings):
    event = {"type": "view", "user_id": "client-k", "item_id": "i1", "ts": NOW_MS}
    recorder = Recorder()
    with LiveReader(isolated_settings.replace(api_key=SecretStr("s3cret"))) as live:
        with Client(live.url, transport=recorder) as anonymous, pytest.raises(RecstreamError) as caught:
            anonymous.send_events([event])
        assert (caught.value.status, recorder.statuses) == (401, [401]), "refused at once, never retried"
        assert "API key" in str(caught.value.detail)
        with Client(live.url, api_key="s3cret") as client:
            assert client.send_events([event]).accepted == 1
            saved = client.set_preferences("client-k", categories=["news"], not_interested=["i7"])
            assert saved.applied and saved.user_id == "client-k"
            assert client.preferences("client-k").model_dump() == {"categories": ["news"], "not_interested": ["i7"]}
            for dots in (".", ".."):  # valid ids, which a URL resolves as a path segment unless they are escaped
                assert client.set_preferences(dots, categories=["film"], not_interested=[]).user_id == dots
                assert client.preferences(dots).categories == ["film"]
                assert client.feed(dots).user_id == dots


def test_every_pages_seed_passed_back_is_accepted_and_reproduces_it(world: World):
    """A page's seed was 64-bit while ``?seed=`` takes < 2^63: about half the pages' seeds were refused (422). Passed
    back, a seed gives the same page again (nothing changed in between)."""

    def shown(page: FeedPage) -> list[tuple[str, str]]:
        return [(item.item_id, item.source) for item in page.items]

    with LiveReader(world.settings) as live, Client(live.url, api_key=WORLD_KEY) as client:
        pages = [client.feed(world.warm[-2], limit=5) for _ in range(32)]
        for page in pages:
            again = client.feed(world.warm[-2], limit=5, seed=page.seed)
            assert again.seed == page.seed and shown(again) == shown(page)
        assert len({tuple(shown(page)) for page in pages}) > 1, "the seeds differ in what they draw"
