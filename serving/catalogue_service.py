"""What the catalogue routes do (serving/catalogue.py): items and users to the compacted topics, and erasure.

The log stays the source of truth: every write goes to Kafka (``items``, ``users``, ``erasures``)
and answers once the broker acknowledged it; the workers apply items and users as they apply any
producer's. PATCH merges the given fields into the item as the workers last applied it (Redis
``item:<i>``), so it changes only those. An erasure is written to the log first, then every Redis key
of the user goes at once (recstream/store/erasure.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict

import orjson
from recstream.serving.errors import EventsRejected, NotFound
from recstream.serving.service import MAX_REASONS, FeedService, _more

from recstream.contracts.catalogue import Format, body_lines, bulk_item, read_rows
from recstream.contracts.events import Erasure, ItemEvent, Rejected, UserEvent, validate
from recstream.store.erasure import erase_user

ITEM_FIELDS = ("categories", "features", "available", "created_ts")
"""What a client writes of an item; the reader adds ``op``, ``item_id`` and ``ts``."""
REMEMBERED_PUTS = 10_000
"""How many items this reader process remembers having PUT, so that a PATCH the workers cannot merge yet says why."""


class TooManyItems(ValueError):
    """413: a bulk request holds more items than ``settings.reader.bulk_max_items``."""


class Catalogue:
    """The catalogue writes, over the feed service's publisher and Redis connections."""

    def __init__(self, service: FeedService) -> None:
        self.service = service
        self.max_items = service.settings.reader.bulk_max_items
        self.put_at: OrderedDict[str, int] = OrderedDict()
        """Item id → when this process last had a PUT of it acknowledged (ms), the latest last."""

    async def put_item(self, item_id: str, fields: dict[str, object]) -> ItemEvent:
        """The whole item as given (defaults for what is left out), published as an ``update``; EventsRejected (422)
        where the contract refuses it as the workers would (a ``created_ts`` more than a day ahead: accepted here,
        it went to the dead-letter topic)."""
        now = _now_ms()
        item = validate({**fields, "op": "update", "item_id": item_id, "ts": now}, "item", now)
        if isinstance(item, Rejected):
            raise EventsRejected([item.reason])
        assert isinstance(item, ItemEvent)  # the contract's model of an item
        await self.service.publisher.deliver(lambda producer: producer.deliver_items([item]))
        self._remember([item])
        return item

    async def patch_item(self, item_id: str, given: dict[str, object]) -> ItemEvent:
        """The item as the workers last applied it with the given fields replaced; NotFound if they never did."""
        known = await self.known_item(item_id)
        return await self.put_item(item_id, {**known, **given})

    async def remove_item(self, item_id: str) -> ItemEvent:
        item = ItemEvent(op="remove", item_id=item_id, ts=_now_ms())
        await self.service.publisher.deliver(lambda producer: producer.deliver_items([item]))
        self.put_at.pop(item_id, None)
        return item

    async def put_items(self, body: bytes, fmt: Format) -> dict:
        """Publish the valid items of a JSONL or CSV body; the others are reported by line number.

        All or nothing only for the limits: more than ``max_items`` rows is refused whole (TooManyItems),
        and a body without one valid item too (EventsRejected).
        """
        rows = list(read_rows(body_lines(body), fmt))
        if len(rows) > self.max_items:
            raise TooManyItems(f"{len(rows)} items in one request exceed {self.max_items}: split the body")
        now = _now_ms()
        items: list[ItemEvent] = []
        rejected: list[tuple[int, Rejected]] = []
        for line, row in rows:
            result = bulk_item(row, now)
            if isinstance(result, Rejected):
                rejected.append((line, result))
            else:
                items.append(result)
        if not items:
            reasons = [f"line {line}: {r.reason}" for line, r in rejected[:MAX_REASONS]]
            raise EventsRejected(reasons + _more([r for _, r in rejected]) or ["items: no items in the body"])
        await self.service.publisher.deliver(lambda producer: producer.deliver_items(items))
        self._remember(items)
        return {"accepted": len(items), "rejected": [{"line": line, "reason": r.reason} for line, r in rejected]}

    async def put_user(self, user_id: str, attributes: dict[str, object]) -> UserEvent:
        user = UserEvent(user_id=user_id, ts=_now_ms(), attributes=attributes, replaces=["attributes"])  # {} clears
        await self.service.publisher.user(user)
        return user

    async def erase_user(self, user_id: str) -> int:
        """Record the erasure on the log (``erasures`` and a tombstone on ``users``), then delete the user's
        Redis keys; how many keys and fields were deleted. Repeating it is harmless."""
        erasure = Erasure(user_id=user_id, ts=_now_ms())
        await self.service.publisher.deliver(lambda producer: producer.erase_user(erasure))
        background, keys = self.service.loader.redis, self.service.keys  # the background client: SCANs take a while
        return await self.service.guard(lambda: erase_user(background, keys, user_id))

    async def known_item(self, item_id: str) -> dict[str, object]:
        """The item's fields as the workers last applied them (features only since they store them); NotFound for an
        item they never applied, and for one they hold back because only events named it (``available`` 0 and no
        ``categories``, RECSTREAM_REQUIRE_ANNOUNCED_ITEMS): a PATCH merged onto it stayed hidden. Without that
        setting such an item is in the feeds already, and a PATCH changes it."""
        service = self.service
        categories, features, available, created_ts = await service.guard(
            lambda: service.redis.call("HMGET", service.keys.item(item_id), *ITEM_FIELDS)
        )
        if available is None or (available == "0" and categories is None):
            raise NotFound(self._unknown(item_id))
        return {
            "categories": [c for c in (categories or "").split(",") if c],
            "features": orjson.loads(features) if features else {},
            "available": available == "1",
            "created_ts": int(created_ts) if created_ts else None,
        }

    def _remember(self, items: list[ItemEvent]) -> None:
        """Note the items just PUT, forgetting the oldest beyond REMEMBERED_PUTS."""
        for item in items:
            self.put_at[item.item_id] = item.ts
            self.put_at.move_to_end(item.item_id)
        while len(self.put_at) > REMEMBERED_PUTS:
            self.put_at.popitem(last=False)

    def _unknown(self, item_id: str) -> str:
        """Why a PATCH found no item: the workers apply a PUT asynchronously, so one accepted a moment ago is not
        there yet (a PATCH then answered "PUT it first" to a client that just had)."""
        put_ms = self.put_at.get(item_id)
        if put_ms is None:
            return (
                f"item {item_id!r} is not known: PUT it first (the workers apply a PUT asynchronously, "
                "usually within seconds: right after one, retry shortly)"
            )
        ago_s = (_now_ms() - put_ms) / 1000
        return (
            f"item {item_id!r} is not applied yet: this reader accepted a PUT of it {ago_s:.1f} s ago, and the "
            "workers apply it asynchronously; retry shortly (if it stays unknown, are the workers running?)"
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
