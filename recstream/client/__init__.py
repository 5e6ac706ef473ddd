"""A Python client of the reader's HTTP API, blocking (:class:`Client`) and asyncio (:class:`AsyncClient`).

>>> from recstream.client import Client
>>> with Client("http://127.0.0.1:8080", api_key=None) as rs:  # doctest: +SKIP
...     rs.send_events([{"type": "click", "user_id": "u1", "item_id": "i42", "ts": 1_767_225_600_000}])
...     page = rs.feed("u1", limit=10)

Answers are typed (recstream.client.wire); transient failures are retried with back-off and every
event carries an ``event_id`` fixed before the first attempt, so a retried POST is applied once (when its
copies arrive within the workers' de-duplication window, RECSTREAM_DEDUP_WINDOW_S: retry.py);
anything else raises :class:`RecstreamError` with the status and the reader's problem detail (an option the
client cannot work with, such as a base URL without its scheme, is a ValueError when the client is made).
The client imports only ``recstream.contracts`` from the project (the event contract it validates against).
"""

from __future__ import annotations

from recstream.client.api import AsyncClient, Client
from recstream.client.retry import RecstreamError
from recstream.client.routes import with_event_ids
from recstream.client.wire import (
    EventsAccepted,
    FeedItem,
    FeedPage,
    ItemsAccepted,
    LineRejected,
    Preferences,
    PreferencesSaved,
    Ready,
    SimilarItem,
    SimilarItems,
    Stats,
    UserErased,
)
from recstream.contracts.events import Event, ItemEvent, UserEvent

__all__ = [
    "AsyncClient",
    "Client",
    "Event",
    "EventsAccepted",
    "FeedItem",
    "FeedPage",
    "ItemEvent",
    "ItemsAccepted",
    "LineRejected",
    "Preferences",
    "PreferencesSaved",
    "Ready",
    "RecstreamError",
    "SimilarItem",
    "SimilarItems",
    "Stats",
    "UserErased",
    "UserEvent",
    "with_event_ids",
]
