"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), with the same methods.

Both run the request descriptions of routes.py through one retry rule (retry.py); each holds one
httpx connection pool, so requests reuse HTTP/1.1 keep-alive connections. Use them as context
managers, or call ``close()`` / ``aclose()``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from recstream.client import routes
from recstream.client.retry import TRANSIENT, Backoff
from recstream.client.routes import Call
from recstream.client.wire import (
    EventsAccepted,
    FeedPage,
    ItemsAccepted,
    Preferences,
    PreferencesSaved,
    Ready,
    SimilarItems,
    Stats,
    UserErased,
)
from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.contracts.headers import header_value

T = TypeVar("T", bound=BaseModel)


class _Connection:
    """What both clients hold: one httpx connection pool and the back-off rule. ``retries`` counts the attempts
    after the first (at most :data:`~recstream.client.retry.MAX_RETRIES`); ``transport`` replaces httpx's (a proxy,
    a test double)."""

    _http_type: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be http://host[:port] or https://host[:port], got {base_url!r}")
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s}")
        self.backoff = Backoff(retries, backoff_s, max_backoff_s)
        headers = {"X-API-Key": header_value("api_key", api_key)} if api_key else {}
        self._http = self._http_type(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )


class Client(_Connection):
    """A blocking client of the reader's HTTP API.

    ``api_key`` is sent as ``X-API-Key`` (needed for writes when the reader has one, for reads too when it
    protects them). A failure raises :class:`~recstream.client.retry.RecstreamError` once retries are spent.
    """

    _http_type = httpx.Client
    _http: httpx.Client

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request(self._http))
            except TRANSIENT as exc:
                failure: httpx.Response | Exception = exc
            else:
                if response.status_code in call.ok:
                    return call.read(response)
                failure = response
            time.sleep(self.backoff.wait(attempt, failure))
            attempt += 1

    def feed(
        self,
        user_id: str,
        limit: int = 10,
        cursor: str | None = None,
        seed: int | None = None,
        *,
        category: str | Iterable[str] = (),
        exclude: str | Iterable[str] = (),
        filter: str | Iterable[str] = (),
    ) -> FeedPage:
        """A page of the user's feed; ``page.next_cursor`` as ``cursor`` continues it without repeating an item.

        Only items in one of ``category``, none of ``exclude``, and passing every ``filter`` clause on item
        features (``"in_stock=true"``, ``"price<20"``); a filtered session's cursor needs the same filter.
        """
        return self._run(routes.feed(user_id, limit, cursor, seed, category, exclude, filter))

    def similar(self, item_id: str, limit: int = 10) -> SimilarItems:
        """The item's nearest neighbours, best first (404 for an item the workers have none for)."""
        return self._run(routes.similar(item_id, limit))

    def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventsAccepted:
        """Post feedback events (models or dicts: views, clicks, likes, a rating with its ``value``, dislikes, …), in
        as many requests as the reader's limits need. Which types exist is the reader's setting
        (RECSTREAM_FEEDBACK_TYPES): an unknown one is refused with 422 naming the configured types.

        Each event without an ``event_id`` gets one before the first attempt, so a retry is applied once (retry.py).
        If a later request fails, the earlier ones were accepted: re-send the events of
        :func:`~recstream.client.routes.with_event_ids` to keep the ids, within the workers' de-duplication window.
        """
        return routes.total([self._run(call) for call in routes.send_events(events)])

    def preferences(self, user_id: str) -> Preferences:
        return self._run(routes.preferences(user_id))

    def set_preferences(
        self, user_id: str, categories: Iterable[str] = (), not_interested: Iterable[str] = ()
    ) -> PreferencesSaved:
        """Replace the user's onboarding categories and "not interested" list (item ids or categories)."""
        return self._run(routes.set_preferences(user_id, categories, not_interested))

    def put_item(
        self,
        item_id: str,
        categories: Iterable[str] = (),
        features: Mapping[str, float] | None = None,
        available: bool = True,
        created_ts: int | None = None,
    ) -> ItemEvent:
        """Create or replace an item; answers the item record the reader published."""
        return self._run(routes.put_item(item_id, _item(categories, features, available, created_ts)))

    def patch_item(self, item_id: str, **fields: object) -> ItemEvent:
        """Change only the given fields of a known item (``available=False`` hides it)."""
        return self._run(routes.patch_item(item_id, fields))

    def delete_item(self, item_id: str) -> ItemEvent:
        return self._run(routes.delete_item(item_id))

    def put_items(self, items: Iterable[Mapping[str, Any]], per_request: int = routes.BULK_ITEMS) -> ItemsAccepted:
        """Many items (dicts of ``item_id``, ``categories``, ``features``, ``available``, ``created_ts``), in as many
        requests as needed; ``rejected`` names the bad ones by their position in ``items`` (from 1)."""
        bulk = routes.put_items(items, per_request)
        return routes.all_items(bulk, [self._run(call) for call in bulk.calls])

    def put_user(self, user_id: str, attributes: Mapping[str, Any]) -> UserEvent:
        """Replace the user's attributes (``age`` and ``gender`` make their segment)."""
        return self._run(routes.put_user(user_id, attributes))

    def delete_user(self, user_id: str) -> UserErased:
        """Erase the user: their Redis keys now, their events from every later rebuild and training."""
        return self._run(routes.delete_user(user_id))

    def stats(self) -> Stats:
        return self._run(routes.stats())

    def ready(self) -> Ready:
        return self._run(routes.ready())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Connection):
    """The asyncio twin of :class:`Client`: the same methods, awaited."""

    _http_type = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.request(self._http))
            except TRANSIENT as exc:
                failure: httpx.Response | Exception = exc
            else:
                if response.status_code in call.ok:
                    return call.read(response)
                failure = response
            await asyncio.sleep(self.backoff.wait(attempt, failure))
            attempt += 1

    async def feed(
        self,
        user_id: str,
        limit: int = 10,
        cursor: str | None = None,
        seed: int | None = None,
        *,
        category: str | Iterable[str] = (),
        exclude: str | Iterable[str] = (),
        filter: str | Iterable[str] = (),
    ) -> FeedPage:
        return await self._run(routes.feed(user_id, limit, cursor, seed, category, exclude, filter))

    async def similar(self, item_id: str, limit: int = 10) -> SimilarItems:
        return await self._run(routes.similar(item_id, limit))

    async def send_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventsAccepted:
        return routes.total([await self._run(call) for call in routes.send_events(events)])

    async def preferences(self, user_id: str) -> Preferences:
        return await self._run(routes.preferences(user_id))

    async def set_preferences(
        self, user_id: str, categories: Iterable[str] = (), not_interested: Iterable[str] = ()
    ) -> PreferencesSaved:
        return await self._run(routes.set_preferences(user_id, categories, not_interested))

    async def put_item(
        self,
        item_id: str,
        categories: Iterable[str] = (),
        features: Mapping[str, float] | None = None,
        available: bool = True,
        created_ts: int | None = None,
    ) -> ItemEvent:
        return await self._run(routes.put_item(item_id, _item(categories, features, available, created_ts)))

    async def patch_item(self, item_id: str, **fields: object) -> ItemEvent:
        return await self._run(routes.patch_item(item_id, fields))

    async def delete_item(self, item_id: str) -> ItemEvent:
        return await self._run(routes.delete_item(item_id))

    async def put_items(
        self, items: Iterable[Mapping[str, Any]], per_request: int = routes.BULK_ITEMS
    ) -> ItemsAccepted:
        bulk = routes.put_items(items, per_request)
        return routes.all_items(bulk, [await self._run(call) for call in bulk.calls])

    async def put_user(self, user_id: str, attributes: Mapping[str, Any]) -> UserEvent:
        return await self._run(routes.put_user(user_id, attributes))

    async def delete_user(self, user_id: str) -> UserErased:
        return await self._run(routes.delete_user(user_id))

    async def stats(self) -> Stats:
        return await self._run(routes.stats())

    async def ready(self) -> Ready:
        return await self._run(routes.ready())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _item(
    categories: Iterable[str], features: Mapping[str, float] | None, available: bool, created_ts: int | None
) -> dict[str, object]:
    return {"categories": list(categories), "features": dict(features or {}), "available": available,
            "created_ts": created_ts}  # fmt: skip
