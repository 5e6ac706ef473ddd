"""The reader's routes as request descriptions: built once here, run by both clients (api.py).

A route is a function returning a :class:`Call`: method, path, query, body, the statuses that answer
it and the model that reads the answer. Adding a route is such a function plus a one-line method on
each client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from recstream.client.retry import RecstreamError
from recstream.client.wire import (
    EventsAccepted,
    FeedPage,
    ItemsAccepted,
    LineRejected,
    Preferences,
    PreferencesSaved,
    Ready,
    SimilarItems,
    Stats,
    UserErased,
)
from recstream.contracts.catalogue import BULK_BYTES_PER_ITEM, bulk_item
from recstream.contracts.events import Event, ItemEvent, Rejected, UserEvent, micro_batches

T = TypeVar("T", bound=BaseModel)
JSON = "application/json"
ACCEPTED = frozenset({202})
BULK_ITEMS = 1_000
"""Items per bulk request: the reader's default ``bulk_max_items``."""


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the reader and how to read its answer."""

    method: str
    path: str
    answer: type[T]
    params: Mapping[str, str | int] = field(default_factory=dict)
    body: bytes | None = None
    ok: frozenset[int] = frozenset({200})
    content_type: str = JSON

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = {"content-type": self.content_type} if self.body else None
        return http.build_request(self.method, self.path, params=self.params, content=self.body, headers=headers)

    def read(self, response: httpx.Response) -> T:
        """The answer as its model; an answer that is not one (a proxy's page, a body cut short) is a
        :class:`RecstreamError` with the status, as every other failure is."""
        try:
            return self.answer.model_validate_json(response.content)
        except ValidationError as exc:
            detail = f"not a {self.answer.__name__}: {exc.errors()[0]['msg']}; the body began {response.text[:200]!r}"
            raise RecstreamError(response.status_code, detail) from None


def feed(
    user_id: str,
    limit: int,
    cursor: str | None,
    seed: int | None,
    category: str | Iterable[str] = (),
    exclude: str | Iterable[str] = (),
    filter: str | Iterable[str] = (),
) -> Call[FeedPage]:
    """The feed's query: ``category``, ``exclude`` and ``filter`` (clauses such as ``in_stock=true``) are each
    a comma-separated string or an iterable of its parts, left out when empty (README, "Your filters").

    >>> feed("u1", 10, None, None, category=["news", "sport"], filter="price<20").params
    {'limit': 10, 'category': 'news,sport', 'filter': 'price<20'}
    """
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    if seed is not None:
        params["seed"] = seed
    for name, value in (("category", category), ("exclude", exclude), ("filter", filter)):
        if joined := value if isinstance(value, str) else ",".join(value):
            params[name] = joined
    return Call("GET", f"/v1/feed/{_id(user_id)}", FeedPage, params)


def similar(item_id: str, limit: int) -> Call[SimilarItems]:
    return Call("GET", f"/v1/items/{_id(item_id)}/similar", SimilarItems, {"limit": limit})


def preferences(user_id: str) -> Call[Preferences]:
    return Call("GET", f"/v1/users/{_id(user_id)}/preferences", Preferences)


def set_preferences(user_id: str, categories: Iterable[str], not_interested: Iterable[str]) -> Call[PreferencesSaved]:
    body = Preferences(categories=list(categories), not_interested=list(not_interested)).model_dump_json().encode()
    return Call("PUT", f"/v1/users/{_id(user_id)}/preferences", PreferencesSaved, body=body)


def put_item(item_id: str, fields: Mapping[str, object]) -> Call[ItemEvent]:
    return Call("PUT", f"/v1/items/{_id(item_id)}", ItemEvent, body=orjson.dumps(fields), ok=ACCEPTED)


def patch_item(item_id: str, fields: Mapping[str, object]) -> Call[ItemEvent]:
    return Call("PATCH", f"/v1/items/{_id(item_id)}", ItemEvent, body=orjson.dumps(fields), ok=ACCEPTED)


def delete_item(item_id: str) -> Call[ItemEvent]:
    return Call("DELETE", f"/v1/items/{_id(item_id)}", ItemEvent, ok=ACCEPTED)


@dataclass(frozen=True, slots=True)
class BulkItems:
    """A bulk write's requests, each line's position in what was given (from 1), and the items refused before
    sending."""

    calls: list[Call[ItemsAccepted]]
    positions: list[list[int]]
    refused: list[LineRejected]


def put_items(
    items: Iterable[Mapping[str, object]], per_request: int = BULK_ITEMS, now_ms: int | None = None
) -> BulkItems:
    """One JSONL POST per ``per_request`` items, fewer when the reader's byte limit needs it; only the items the
    contract accepts (:func:`~recstream.contracts.catalogue.bulk_item`, as the reader reads each line) are sent,
    so that no request holds only refused items: the reader answers those 422 whole, which raised for the whole
    write after its earlier parts were published, and named no item."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    cap = per_request * BULK_BYTES_PER_ITEM
    bodies: list[list[bytes]] = []
    positions: list[list[int]] = []
    refused: list[LineRejected] = []
    size = 0
    for position, item in enumerate(items, start=1):
        line = orjson.dumps(item) + b"\n"
        checked = bulk_item(orjson.loads(line), now_ms)  # the row the reader will read
        if isinstance(checked, Rejected):
            refused.append(LineRejected(line=position, reason=checked.reason))
            continue
        if not bodies or len(bodies[-1]) == per_request or size + len(line) > cap:
            bodies.append([])
            positions.append([])
            size = 0
        bodies[-1].append(line)
        positions[-1].append(position)
        size += len(line)
    calls = [
        Call("POST", "/v1/items", ItemsAccepted, body=b"".join(b), ok=ACCEPTED, content_type="application/x-ndjson")
        for b in bodies
    ]
    return BulkItems(calls, positions, refused)


def all_items(bulk: BulkItems, answers: Sequence[ItemsAccepted]) -> ItemsAccepted:
    """One answer for a bulk write sent in parts: a line number is the item's position in what was given
    (from 1), whichever part carried it or if none did."""
    rejected = list(bulk.refused)
    for lines, answer in zip(bulk.positions, answers, strict=True):
        rejected += [LineRejected(line=lines[r.line - 1], reason=r.reason) for r in answer.rejected]
    return ItemsAccepted(accepted=sum(a.accepted for a in answers), rejected=sorted(rejected, key=lambda r: r.line))


def put_user(user_id: str, attributes: Mapping[str, object]) -> Call[UserEvent]:
    body = orjson.dumps({"attributes": attributes})
    return Call("PUT", f"/v1/users/{_id(user_id)}", UserEvent, body=body, ok=ACCEPTED)


def delete_user(user_id: str) -> Call[UserErased]:
    """The user's erasure: safe to repeat, so a retry after a lost answer does no harm."""
    return Call("DELETE", f"/v1/users/{_id(user_id)}", UserErased, ok=ACCEPTED)


def stats() -> Call[Stats]:
    return Call("GET", "/v1/stats", Stats)


def ready() -> Call[Ready]:
    """Readiness: a 503 is an answer here (not ready, and why), not a failure to retry."""
    return Call("GET", "/readyz", Ready, ok=frozenset({200, 503}))


def send_events(events: Iterable[Event | Mapping[str, Any]]) -> list[Call[EventsAccepted]]:
    """One POST per body within the reader's limits; every event has its ``event_id`` before any is sent."""
    return [
        Call("POST", "/v1/events", EventsAccepted, body=body, ok=ACCEPTED)
        for _, body in micro_batches(with_event_ids(events))
    ]


def total(answers: Iterable[EventsAccepted]) -> EventsAccepted:
    """The answers of one write's requests summed, field by field (every count of the answer).

    >>> total([EventsAccepted(accepted=2, attributed=1, dropped=1), EventsAccepted(accepted=3, attributed=0)])
    EventsAccepted(accepted=5, attributed=1, dropped=1)
    """
    answers = list(answers)
    return EventsAccepted(**{name: sum(getattr(a, name) for a in answers) for name in EventsAccepted.model_fields})


def with_event_ids(events: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
    """The events validated by the contract (a bad one raises here, before anything is sent; whether a well-formed
    ``type`` is one of the configured feedback types only the reader knows), each with an ``event_id``: its own, or
    a random uuid4 hex.

    The id is what makes a retry safe: a POST that timed out may have been published, and the retry
    sends the same ids, which the workers apply once when the copies arrive within RECSTREAM_DEDUP_WINDOW_S (300 s)
    of each other (``recstream train`` counts an id once whenever). Call this yourself and keep the result to re-send
    a batch later (after ``send_events`` raised) with the same ids, within that window.

    >>> [e] = with_event_ids([{"type": "view", "user_id": "u", "item_id": "i", "ts": 10**12}])
    >>> len(e.event_id)
    32
    >>> with_event_ids([e])[0].event_id == e.event_id
    True
    """
    stamped = []
    for given in events:
        event = given if isinstance(given, Event) else Event.model_validate(given)
        stamped.append(event if event.event_id else event.model_copy(update={"event_id": uuid.uuid4().hex}))
    return stamped


def _id(value: str) -> str:
    """An id as one path segment (the reader's ids are URL-safe; anything else is escaped and then refused). The ids
    ``.`` and ``..`` are valid too, but as segments a URL resolves them (``/v1/feed/..`` is ``/v1``), so their dots
    are escaped: the reader decodes the segment back to the id.

    >>> _id("u 1"), _id(".."), _id("a.b")
    ('u%201', '%2E%2E', 'a.b')
    """
    return value.replace(".", "%2E") if value in (".", "..") else quote(value, safe="")
