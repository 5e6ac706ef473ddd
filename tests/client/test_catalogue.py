"""Both clients write the catalogue and erase a user through the real reader on a socket, Kafka and Redis."""

from __future__ import annotations

import orjson
import pytest
import redis

from recstream.client import AsyncClient, Client, ItemEvent, RecstreamError
from recstream.client.routes import all_items, put_items
from recstream.contracts.catalogue import BULK_BYTES_PER_ITEM
from recstream.contracts.settings import Settings
from tests.serving.conftest import LiveReader
from tests.serving.test_catalogue import on_topic

pytestmark = pytest.mark.integration


def sized(size: int) -> dict[str, object]:
    """A valid item whose JSONL line (its end of line included) is ``size`` bytes: features, then categories."""
    item: dict[str, object] = {"item_id": "i0", "categories": [], "features": {}}
    categories, features = item["categories"], item["features"]
    assert isinstance(categories, list) and isinstance(features, dict)

    def length() -> int:
        return len(orjson.dumps(item)) + 1

    while length() + 140 <= size and len(features) < 64:
        features[f"f{len(features):059d}"] = 1.0
    while (rest := size - length()) > 0:
        extra = rest - 2 - (1 if categories else 0)  # the quotes, and a comma after the first
        categories.append("c" * (min(64, extra) if extra <= 64 or extra - 64 >= 4 else extra - 4))
    assert length() == size
    return item


@pytest.mark.parametrize(("offset", "bodies"), [(-1, 1), (0, 1), (1, 2)])
def test_bulk_bodies_split_at_the_readers_item_and_byte_limits(offset, bodies):
    by_count = put_items([{"item_id": f"i{k}"} for k in range(3 + offset)], per_request=3)
    half = 3 * BULK_BYTES_PER_ITEM // 2
    by_bytes = put_items([sized(half), sized(half + offset)], per_request=3)
    assert (len(by_count.calls), len(by_bytes.calls)) == (bodies, bodies)
    assert sum(len(c.body or b"") for c in by_bytes.calls) == 3 * BULK_BYTES_PER_ITEM + offset


def test_a_bulk_write_sends_only_the_items_the_contract_accepts_and_names_the_others_by_position():
    """A request of refused items only is answered 422 whole: at the end of a write (the split falling after the
    last good item) it raised after the earlier parts were published, naming "line 1" of its part."""
    items = [{"item_id": f"i{k}"} for k in range(3)] + [{"item_id": "bad:id"}, {"item_id": "i4", "available": "maybe"}]
    bulk = put_items(items, per_request=3)
    assert [c.body.count(b"\n") for c in bulk.calls if c.body] == [3] and bulk.positions == [[1, 2, 3]]
    assert [(r.line, r.reason.split(":")[0]) for r in bulk.refused] == [(4, "item_id"), (5, "available")]
    none = put_items(items[3:], per_request=3)
    assert none.calls == [] and all_items(none, []).rejected == none.refused


async def test_both_clients_write_items_and_users_and_erase_a_user(isolated_settings: Settings):
    settings = isolated_settings.replace(open_writes=True)
    items = [{"item_id": f"b{k}", "categories": ["news"]} for k in range(5)] + [
        {"item_id": "bad id"},
        {"item_id": "b9"},
        *[{"item_id": "bad id"}] * 3,  # the last part of three would have held refused items only: a 422 once
    ]
    with LiveReader(settings) as live, Client(live.url) as client:
        put = client.put_item("i1", categories=["film"], features={"price": 2.0})
        assert isinstance(put, ItemEvent) and (put.op, put.categories, put.features) == (
            "update",
            ["film"],
            {"price": 2.0},
        )
        bulk = client.put_items(items, per_request=3)
        assert bulk.accepted == 6 and [r.line for r in bulk.rejected] == [6, 8, 9, 10], "positions in what was given"
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
