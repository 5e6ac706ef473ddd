"""Both clients write the catalogue and erase a user through the real reader on a socket, Kafka and Redis."""

from __future__ import annotations

import pytest
import redis

from recstream.client import AsyncClient, Client, ItemEvent, RecstreamError
from recstream.client.routes import put_items
from recstream.contracts.catalogue import BULK_BYTES_PER_ITEM
from recstream.contracts.settings import Settings
from tests.serving.conftest import LiveReader
from tests.serving.test_catalogue import on_topic

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("offset", "bodies"), [(-1, 1), (0, 1), (1, 2)])
def test_bulk_bodies_split_at_the_readers_item_and_byte_limits(offset, bodies):
    by_count = put_items([{"item_id": f"i{k}"} for k in range(3 + offset)], per_request=3)
    line = b'{"item_id":"i0","categories":["%s"]}\n'
    pad = 3 * BULK_BYTES_PER_ITEM - 2 * len(line % b"") + offset
    by_bytes = put_items([{"item_id": "i0", "categories": [""]}, {"item_id": "i0", "categories": ["x" * pad]}], 3)
    assert (len(by_count), len(by_bytes)) == (bodies, bodies)
    assert sum(len(c.body or b"") for c in by_bytes) == 3 * BULK_BYTES_PER_ITEM + offset


async def test_both_clients_write_items_and_users_and_erase_a_user(isolated_settings: Settings):
    settings = isolated_settings.replace(open_writes=True)
    items = [{"item_id": f"b{k}", "categories": ["news"]} for k in range(5)] + [
        {"item_id": "bad id"},
        {"item_id": "b9"},
    ]
    with LiveReader(settings) as live, Client(live.url) as client:
        put = client.put_item("i1", categories=["film"], features={"price": 2.0})
        assert isinstance(put, ItemEvent) and (put.op, put.categories, put.features) == (
            "update",
            ["film"],
            {"price": 2.0},
        )
        bulk = client.put_items(items, per_request=3)
        assert bulk.accepted == 6 and [r.line for r in bulk.rejected] == [6], "a position in what was given"
        assert client.put_user("u1", {"age": 30}).attributes == {"age": 30}
        with pytest.raises(RecstreamError) as caught:
            client.patch_item("never-applied", available=False)
        assert caught.value.status == 404
        async with AsyncClient(live.url) as aclient:
            assert (await aclient.delete_item("i1")).op == "remove"
            redis.Redis.from_url(settings.redis.url).set("rs:user:u1:hist", "[]")
            assert (await aclient.delete_user("u1")).removed == 1
    published = await on_topic(settings, settings.kafka.items_topic, "item")
    assert [i.item_id for i in published] == ["i1", "b0", "b1", "b2", "b3", "b4", "b9", "i1"]
