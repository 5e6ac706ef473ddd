"""The catalogue API through the real reader, Kafka and a worker: what reaches the topics, then Redis."""

from __future__ import annotations

import orjson
import pytest
import redis
from aiokafka import TopicPartition
from recstream.serving import catalogue_service
from recstream.serving.catalogue import ITEM_MAX_BYTES

from recstream.contracts.catalogue import BULK_BYTES_PER_ITEM
from recstream.contracts.events import decode, partition_for
from recstream.contracts.settings import Settings
from recstream.eventlog.log import open_log, read, whole_topic
from tests.conftest import wait_until
from tests.serving.conftest import reader_client

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000
JSON = "application/json"


async def on_topic(settings: Settings, topic: str, kind: str) -> list:
    """Every record on ``topic`` from its start (tombstones as None), in order."""
    found: list = []
    async with open_log(settings) as consumer:
        async for chunk in read(consumer, await whole_topic(consumer, topic), 1000):
            for message in chunk:
                found += [None] if message.value is None else decode(message.value, kind, 2**53)[0]  # type: ignore[arg-type]
    return found


async def test_items_written_over_http_reach_the_topic_and_the_worker(isolated_settings, worker_factory):
    """PUT the whole item, PATCH only what is given (the rest kept, features too), hide, DELETE; PUT a user."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    worker_factory(settings)
    item = {"categories": ["news", "sport"], "features": {"price": 9.5}, "available": True, "created_ts": T0}
    async with reader_client(settings.replace(open_writes=True)) as reader:
        put = await reader.put("/v1/items/i1", json=item)
        assert put.status_code == 202, put.text
        assert {k: put.json()[k] for k in item} == item and put.json()["op"] == "update"
        unknown = await reader.patch("/v1/items/nobody", json={"available": False})
        assert unknown.status_code == 404, unknown.text
        wait_until(lambda: client.hget("rs:item:i1", "categories") == "news,sport", what="the worker to apply i1")
        assert orjson.loads(client.hget("rs:item:i1", "features")) == {"price": 9.5}

        hidden = await reader.patch("/v1/items/i1", json={"available": False})
        assert hidden.status_code == 202, hidden.text
        assert {k: hidden.json()[k] for k in item} == {**item, "available": False}
        wait_until(lambda: client.sismember("rs:unavailable", "i1"), what="i1 hidden")
        shown = await reader.patch("/v1/items/i1", json={"available": True, "categories": ["film"]})
        assert {k: shown.json()[k] for k in item} == {**item, "categories": ["film"]}
        wait_until(lambda: not client.sismember("rs:unavailable", "i1"), what="i1 shown again")
        removed = await reader.delete("/v1/items/i1")
        assert removed.status_code == 202 and removed.json()["op"] == "remove"
        wait_until(lambda: client.sismember("rs:unavailable", "i1"), what="i1 removed")

        user = await reader.put("/v1/users/u1", json={"attributes": {"age": 30, "gender": "F", "plan": "pro"}})
        assert user.status_code == 202, user.text
        wait_until(lambda: client.hget("rs:user:seg", "u1") == "age25-34.F", what="the user's segment")

        seen = {"type": "view", "user_id": "u1", "item_id": "i-seen", "ts": T0}  # an item only events name
        assert (await reader.post("/v1/events", json=seen)).status_code == 202
        wait_until(lambda: client.hget("rs:item:i-seen", "available") == "0", what="i-seen held back, unannounced")
        patched = await reader.patch("/v1/items/i-seen", json={"categories": ["news"]})  # 202 published it hidden
        assert patched.status_code == 404 and "PUT it first" in patched.text, patched.text

    items = await on_topic(settings, settings.kafka.items_topic, "item")
    assert [(i.op, i.available, i.categories) for i in items] == [
        ("update", True, ["news", "sport"]),
        ("update", False, ["news", "sport"]),
        ("update", True, ["film"]),
        ("remove", True, []),
    ]
    assert [u.attributes for u in await on_topic(settings, settings.kafka.users_topic, "user")] == [
        {"age": 30, "gender": "F", "plan": "pro"}
    ]


async def test_a_patch_before_the_workers_applied_a_put_says_so_and_to_retry(isolated_settings, monkeypatch):
    """A PATCH right after a PUT's 202 answered 404 "PUT it first" until a worker applied the PUT: the message told
    the client to do what it had just done. No worker runs here, so no PUT is ever applied."""
    monkeypatch.setattr(catalogue_service, "REMEMBERED_PUTS", 2)
    async with reader_client(isolated_settings.replace(open_writes=True)) as reader:

        async def says(item_id: str) -> str:
            patched = await reader.patch(f"/v1/items/{item_id}", json={"available": False})
            assert patched.status_code == 404, patched.text
            return patched.json()["detail"]

        assert "PUT it first (the workers apply a PUT asynchronously" in await says("never")
        bulk = await reader.post("/v1/items", content=b"item_id\nb1\n", headers={"content-type": "text/csv"})
        assert bulk.status_code == 202, bulk.text
        accepted = "is not applied yet: this reader accepted a PUT of it "
        remembered = [accepted in await says("b1")]
        for item_id in ("a1", "a2"):  # 1 item PUT (under the limit, 2), then 2 (at it), 3 (over it: b1 forgotten)
            assert (await reader.put(f"/v1/items/{item_id}", json={"categories": ["news"]})).status_code == 202
            remembered += [accepted in await says(i) for i in ("b1", "a1")]
        assert remembered == [True, True, True, False, True]
        assert "s ago, and the workers apply it asynchronously; retry shortly" in await says("a2")
        assert (await reader.delete("/v1/items/a2")).status_code == 202
        assert "PUT it first" in await says("a2")


CSV = b"""item_id,categories,available,created_ts,f_price
c1,news|sport,true,1700000000000,1.5
c2,,false,,
bad id,news,true,,
c3,music,maybe,,
c4,film,1,,x
c5,kids,0,1700000000001,2
"""
JSONL = b"""{"item_id": "j1", "categories": ["news"], "features": {"price": 2.0}}

{"item_id": "j2", "colour": "red"}
not json
{"item_id": "j3", "available": false, "created_ts": 1700000000000}
[1, 2]
"""


@pytest.mark.parametrize(
    ("media_type", "body", "accepted", "rejected"),
    [
        (
            "text/csv",
            CSV,
            ["c1", "c2", "c5"],
            {4: "item_id: String should match pattern", 5: "available: expected true or false", 6: "f_price: expected"},
        ),
        (
            "application/x-ndjson",
            JSONL,
            ["j1", "j3"],
            {3: "colour: not an item column", 4: "json: invalid JSON", 6: "a line must be one JSON object"},
        ),
    ],
)
async def test_a_bulk_write_publishes_the_valid_lines_and_names_the_others(
    isolated_settings, media_type, body, accepted, rejected
):
    settings = isolated_settings
    async with reader_client(settings.replace(open_writes=True)) as reader:
        answer = await reader.post("/v1/items", content=body, headers={"content-type": media_type})
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == len(accepted)
    got = {r["line"]: r["reason"] for r in answer.json()["rejected"]}
    assert list(got) == list(rejected)
    assert all(reason.startswith(rejected[line]) for line, reason in got.items()), got
    items = await on_topic(settings, settings.kafka.items_topic, "item")
    assert [i.item_id for i in items] == accepted
    if media_type == "text/csv":
        fields = [(i.categories, i.available, i.created_ts, i.features) for i in items]
        assert fields == [(["news", "sport"], True, T0, {"price": 1.5}), ([], False, None, {}),
                          (["kids"], False, T0 + 1, {"price": 2.0})]  # fmt: skip


def jsonl(n: int, size: int | None = None) -> bytes:
    """``n`` item lines, padded with spaces at the end of the last line to ``size`` bytes in all."""
    body = b"".join(b'{"item_id": "b%d"}\n' % k for k in range(n))
    return body if size is None else body + b" " * (size - len(body))


@pytest.mark.parametrize(("offset", "status"), [(-1, 202), (0, 202), (1, 413)])
async def test_a_bulk_write_holds_at_most_bulk_max_items_items_and_their_bytes(isolated_settings, offset, status):
    """3 items at most (the setting), and 3 × BULK_BYTES_PER_ITEM bytes; over either, nothing is published."""
    settings = isolated_settings.replace(bulk_max_items=3)
    cap = 3 * BULK_BYTES_PER_ITEM
    async with reader_client(settings.replace(open_writes=True)) as reader:
        post = lambda body: reader.post("/v1/items", content=body, headers={"content-type": "application/x-ndjson"})  # noqa: E731
        by_count = await post(jsonl(3 + offset))
        by_bytes = await post(jsonl(2, cap + offset))
    assert (by_count.status_code, by_bytes.status_code) == (status, status), (by_count.text, by_bytes.text)
    published = await on_topic(settings, settings.kafka.items_topic, "item")
    assert len(published) == (0 if status == 413 else 3 + offset + 2)


@pytest.mark.parametrize(("offset", "status"), [(-1, 202), (0, 202), (1, 413)])
async def test_an_item_body_is_capped_before_it_is_parsed(isolated_settings, offset, status):
    body = b'{"categories": ["news"]}'
    async with reader_client(isolated_settings.replace(open_writes=True)) as reader:
        padded = body + b" " * (ITEM_MAX_BYTES + offset - len(body))
        answer = await reader.put("/v1/items/i1", content=padded, headers={"content-type": JSON})
    assert answer.status_code == status, answer.text


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "says"),
    [
        ("PUT", "/v1/items/i1", b'{"colour": "red"}', {}, 422, "Extra inputs are not permitted"),
        ("PUT", "/v1/items/i1", b'{"features": {"x": NaN}}', {}, 422, "finite"),
        ("PUT", "/v1/items/i1", b'{"categories": "news"}', {}, 422, "valid array"),
        ("PUT", "/v1/items/i1", b'{"created_ts": 1000000000000000}', {}, 422, "more than a day in the future"),  # 202
        ("PUT", "/v1/items/a%3Bb", b"{}", {}, 422, "should match pattern"),
        ("PUT", "/v1/users/u1", b'{"attributes": {"a b": 1}}', {}, 422, "should match pattern"),
        ("PUT", "/v1/users/u1", b'{"attributes": {"age": NaN}}', {}, 422, "finite"),  # was published as nan
        ("PUT", "/v1/users/u1", b'{"attributes": {"age": 1e400}}', {}, 422, "finite"),
        ("PUT", "/v1/items/i1", b"{}", {"content-type": "text/plain"}, 415, "text/plain"),  # was accepted
        ("PATCH", "/v1/items/i1", b"{}", {"content-type": "application/x-www-form-urlencoded"}, 415, "form"),
        ("PUT", "/v1/users/u1", b'{"attributes": {}}', {"content-type": ""}, 415, "got none"),
        ("POST", "/v1/items", b"item_id\ni1\n", {"content-type": JSON}, 415, "text/csv"),
        ("POST", "/v1/items", b"item_id\n", {"content-type": "text/csv"}, 422, "no items in the body"),
        ("POST", "/v1/items", b"item_id\na b\n", {"content-type": "text/csv"}, 422, "line 2: item_id"),
    ],
)
async def test_bad_catalogue_requests_get_a_precise_4xx(isolated_settings, method, path, body, headers, status, says):
    async with reader_client(isolated_settings.replace(open_writes=True)) as reader:
        answer = await reader.request(method, path, content=body, headers={"content-type": JSON, **headers})
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert await on_topic(isolated_settings, isolated_settings.kafka.items_topic, "item") == []


async def user_records(settings: Settings) -> tuple[list[tuple[int, bytes, bool]], dict[int, int]]:
    """(partition, key, tombstone) of every record on the users topic, and each partition's end offset."""
    async with open_log(settings) as consumer:
        ranges = await whole_topic(consumer, settings.kafka.users_topic)
        consumer.assign([TopicPartition(*tp) for tp in ranges])
        await consumer.seek_to_beginning()
        found, ends = [], {tp[1]: end for tp, (_, end) in ranges.items()}
        while sum(ends.values()) > len(found):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [(r.partition, r.key, r.value is None) for r in records]
    return found, ends


async def test_a_cleared_part_of_a_user_is_applied_and_each_part_keeps_a_key_of_its_own(
    isolated_settings: Settings, worker_factory
):
    """PUT {"attributes": {}} left the old segment, and PUT preferences {} left what the workers had written last
    (they skipped empty records); the two routes' records shared the user's key on the compacted users topic, so
    compaction kept only the later one and a rebuild lost the other part."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    worker = worker_factory(settings)
    async with reader_client(settings.replace(open_writes=True)) as reader:
        assert (await reader.put("/v1/users/u2", json={"attributes": {"age": 30, "gender": "F"}})).status_code == 202
        wait_until(lambda: client.hget("rs:user:seg", "u2") == "age25-34.F", what="the user's segment")
        assert (await reader.put("/v1/users/u2", json={"attributes": {}})).status_code == 202
        wait_until(lambda: client.hget("rs:user:seg", "u2") == "default", what="the segment cleared")
        worker.stop()  # the workers apply both records after the reader's own writes: the last one must win
        for prefs in ({"categories": ["news"], "not_interested": ["i9"]}, {}):
            assert (await reader.put("/v1/users/u2/preferences", json=prefs)).status_code == 200
        assert (await reader.delete("/v1/users/u3")).status_code == 202
    worker_factory(settings)
    records, ends = await user_records(settings)
    home = partition_for("u2", len(ends))
    wait_until(lambda: int(client.hget("rs:wm", f"{settings.kafka.users_topic}:{home}") or -1) >= ends[home] - 1,
               what="the worker through the users topic")  # fmt: skip
    assert orjson.loads(client.get("rs:user:u2:prefs")) == {"categories": [], "not_interested": []}
    assert [(p, k) for p, k, tombstone in records if not tombstone] == [(home, b"u2")] * 2 + [
        (home, b"u2:preferences")
    ] * 2
    tombstones = [(p, k) for p, k, tombstone in records if tombstone]
    assert tombstones == [(partition_for("u3", len(ends)), key) for key in (b"u3", b"u3:preferences")]


async def test_without_a_catalogue_feed_an_item_only_events_named_can_be_patched(isolated_settings, worker_factory):
    """With RECSTREAM_REQUIRE_ANNOUNCED_ITEMS false the workers put an item first seen in events in the feeds at once
    (available, no categories): a PATCH changes it, as the README's way to hide an item says, where an item they
    hold back for its announcement is a 404."""
    settings = isolated_settings.replace(require_announced_items=False, open_writes=True)
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    worker_factory(settings)
    async with reader_client(settings) as reader:
        seen = {"type": "view", "user_id": "u1", "item_id": "i-free", "ts": T0}
        assert (await reader.post("/v1/events", json=seen)).status_code == 202
        wait_until(lambda: client.hget("rs:item:i-free", "available") == "1", what="i-free in the pool")
        hidden = await reader.patch("/v1/items/i-free", json={"available": False})
        assert hidden.status_code == 202 and hidden.json()["available"] is False, hidden.text
        wait_until(lambda: client.sismember("rs:unavailable", "i-free"), what="i-free hidden")
