"""The reader's routes as request descriptions: built once here, run by both clients (api.py).

A route is a function returning a :class:`Call`: method, path, query, body, the statuses that answer
it and the model that reads the answer. Adding a route is such a function plus a one-line method on
each client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from recstream.client.wire import EventsAccepted, FeedPage, Preferences, PreferencesSaved, Ready, SimilarItems, Stats
from recstream.contracts.events import MAX_EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, Event, encode

T = TypeVar("T", bound=BaseModel)
JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the reader and how to read its answer."""

    method: str
    path: str
    answer: type[T]
    params: Mapping[str, str | int] = field(default_factory=dict)
    body: bytes | None = None
    ok: frozenset[int] = frozenset({200})

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return http.build_request(
            self.method, self.path, params=self.params, content=self.body, headers=JSON if self.body else None
        )

    def read(self, response: httpx.Response) -> T:
        return self.answer.model_validate_json(response.content)


def feed(user_id: str, limit: int, cursor: str | None, seed: int | None) -> Call[FeedPage]:
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    if seed is not None:
        params["seed"] = seed
    return Call("GET", f"/v1/feed/{_id(user_id)}", FeedPage, params)


def similar(item_id: str, limit: int) -> Call[SimilarItems]:
    return Call("GET", f"/v1/items/{_id(item_id)}/similar", SimilarItems, {"limit": limit})


def preferences(user_id: str) -> Call[Preferences]:
    return Call("GET", f"/v1/users/{_id(user_id)}/preferences", Preferences)


def set_preferences(user_id: str, categories: Iterable[str], not_interested: Iterable[str]) -> Call[PreferencesSaved]:
    body = Preferences(categories=list(categories), not_interested=list(not_interested)).model_dump_json().encode()
    return Call("PUT", f"/v1/users/{_id(user_id)}/preferences", PreferencesSaved, body=body)


def stats() -> Call[Stats]:
    return Call("GET", "/v1/stats", Stats)


def ready() -> Call[Ready]:
    """Readiness: a 503 is an answer here (not ready, and why), not a failure to retry."""
    return Call("GET", "/readyz", Ready, ok=frozenset({200, 503}))


def send_events(events: Iterable[Event | Mapping[str, Any]]) -> list[Call[EventsAccepted]]:
    """One POST per body within the reader's limits; every event has its ``event_id`` before any is sent."""
    return [
        Call("POST", "/v1/events", EventsAccepted, body=body, ok=frozenset({202}))
        for body in event_bodies(with_event_ids(events))
    ]


def total(accepted: Iterable[EventsAccepted]) -> EventsAccepted:
    answers = list(accepted)
    return EventsAccepted(accepted=sum(a.accepted for a in answers), attributed=sum(a.attributed for a in answers))


def with_event_ids(events: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
    """The events validated by the contract (a bad one raises here, before anything is sent), each with an
    ``event_id``: its own, or a random uuid4 hex.

    The id is what makes a retry safe: a POST that timed out may have been published, and the retry
    sends the same ids, which the workers apply once. Call this yourself and keep the result to re-send
    a batch later (after ``send_events`` raised) with the same ids.

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


def event_bodies(
    events: Sequence[Event], max_events: int = MAX_EVENTS_PER_MESSAGE, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[bytes]:
    """JSON arrays of the events, in order, each of at most ``max_events`` events and ``max_bytes`` bytes
    (the reader refuses a larger body with 413, more events with 422).

    >>> events = [Event(type="view", user_id="u", item_id=f"i{k}", ts=10**12) for k in range(5)]
    >>> [body.count(b'"type"') for body in event_bodies(events, max_events=2)]
    [2, 2, 1]
    """
    batches: list[list[bytes]] = []
    size = 0
    for event in events:
        part = encode(event)
        if not batches or len(batches[-1]) == max_events or size + len(part) + 1 > max_bytes:
            batches.append([])
            size = 1  # "[" and "]", plus each element and its "," but the first: 1 + Σ(len + 1)
        batches[-1].append(part)
        size += len(part) + 1
    return [b"[" + b",".join(batch) + b"]" for batch in batches]


def _id(value: str) -> str:
    """An id as one path segment (the reader's ids are URL-safe; anything else is escaped and then refused)."""
    return quote(value, safe="")
