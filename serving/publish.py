"""Kafka publishing for the write routes: one shared producer, each request's own delivery confirmed; attribution.

A route returns only once the broker acknowledged *its* events: each request sends its own
messages and awaits their acknowledgements (EventProducer.deliver), never a buffer or a flush it
shares with other requests, so a request cancelled midway can lose nobody else's events. The
Kafka client still packs concurrent requests' messages into one produce request per partition
(``linger_ms``), so writes do not serialize on a broker round trip each. The producer starts on
first use, so the read path never waits for Kafka and a reader starts even when Kafka is down. A
broker that fails or does not acknowledge within PUBLISH_TIMEOUT_S refuses the write
(KafkaUnavailable, a 503); the reader stays up. A 503 does not say the events were lost (the
client may still deliver them later): every event carries an ``event_id`` (:func:`with_event_ids`),
so a client that retries after a 503 sends the same ids and the workers apply each id once.

Attribution: a click counts for the source that showed the item. Events that name the feed's scroll
session (``context.feed``) but no ``context.source`` get it from the session list before they go out,
and every event naming a session gets the feature vector the item was served with (``context.rf``,
recstream/contracts/ranking.py), what the workers train the ranker on. A client's own ``rf`` is
dropped first: clients must not write the training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from recstream.serving.cursor import is_session
from recstream.serving.errors import KafkaUnavailable, RedisUnavailable

from recstream.contracts.events import MAX_CONTEXT_ENTRIES, Event, UserEvent
from recstream.contracts.ranking import CONTEXT_KEY
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
SourceLookup = Callable[[list[tuple[str, str, str]]], Awaitable[list[tuple[str, str | None] | None]]]
"""(user, session, item) → (the source the session served the item from, its served features), FeedStore.sources
under the guard."""


class Publisher:
    """``await publisher.events([...])`` / ``await publisher.user(event)`` return once acknowledged.

    They raise KafkaUnavailable when the broker fails or stays silent for PUBLISH_TIMEOUT_S.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._start_lock = asyncio.Lock()

    async def events(self, events: Sequence[Event]) -> None:
        async with _acknowledged():
            await (await self._started()).deliver(events)

    async def user(self, event: UserEvent) -> None:
        async with _acknowledged():
            await (await self._started()).deliver_user(event)

    async def deliver(self, send: Callable[[EventProducer], Awaitable[None]]) -> None:
        """Run ``send``, a producer call that returns once its own messages were acknowledged, under the same
        timeout and error as the writes above (the catalogue's items and erasures, serving/catalogue_service.py)."""
        async with _acknowledged():
            await send(await self._started())

    async def close(self) -> None:
        """Stop the producer within PUBLISH_TIMEOUT_S, never raising: a Kafka that is down must not hold
        the shutdown hostage."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await producer.__aexit__(None, None, None)

    async def _started(self) -> EventProducer:
        async with self._start_lock:
            if self._producer is None:
                producer = EventProducer(self.settings)
                try:
                    await producer.__aenter__()
                except BaseException as exc:
                    await producer.__aexit__(type(exc), exc, None)  # stops what start() left half-open
                    raise
                self._producer = producer
            return self._producer


@contextlib.asynccontextmanager
async def _acknowledged() -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            yield
    except Exception as exc:  # any Kafka client failure: the write is refused, the reader stays up
        log.warning("publishing to Kafka failed: %r", exc)
        raise KafkaUnavailable(f"Kafka did not acknowledge the write: {type(exc).__name__}") from exc


def with_event_ids(events: list[Event]) -> list[Event]:
    """The events, each without an ``event_id`` given one derived from its content as the client sent it.

    Derived, not random: a client that retries after a 503 resends the same events, which get the
    same ids, so the workers' de-duplication applies them once. Two events alike in type, user,
    item, millisecond, context and variant are one event reported twice.

    >>> view = Event(type="view", user_id="u1", item_id="i1", ts=10**12)
    >>> [e.event_id for e in with_event_ids([view, view, view.model_copy(update={"event_id": "mine"})])]
    ['h-b396ca5e3ed99d4a7179e6182718d9ae', 'h-b396ca5e3ed99d4a7179e6182718d9ae', 'mine']
    """
    return [e if e.event_id is not None else e.model_copy(update={"event_id": _content_id(e)}) for e in events]


def _content_id(event: Event) -> str:
    content = orjson.dumps(event.model_dump(exclude_none=True), option=orjson.OPT_SORT_KEYS)
    return "h-" + hashlib.blake2b(content, digest_size=16).hexdigest()


async def attribute(events: list[Event], sources: SourceLookup) -> tuple[list[Event], int]:
    """From the scroll session named by ``context.feed``, in one lookup: fill ``context.source`` where it is
    missing and stamp ``context.rf`` with the served features; how many got a source.

    A client's ``rf`` is dropped whatever happens next. Either stamp is made only while the context stays
    within MAX_CONTEXT_ENTRIES (the source first). Best effort: without Redis (RedisUnavailable) the events
    go out without ``rf``.
    """
    events = [_without_features(e) for e in events]
    wanting = {
        k: (e.user_id, e.context["feed"], e.item_id)
        for k, e in enumerate(events)
        if e.context and is_session(e.context.get("feed"))
    }
    if not wanting:
        return events, 0
    try:
        found = await sources(list(wanting.values()))  # type: ignore[arg-type]
    except RedisUnavailable:
        return events, 0
    attributed = 0
    for k, served in zip(wanting, found, strict=True):
        if served is None:
            continue
        context, (source, features) = dict(events[k].context or {}), served
        if "source" not in context and len(context) < MAX_CONTEXT_ENTRIES:
            context["source"] = source
            attributed += 1
        if features is not None and len(context) < MAX_CONTEXT_ENTRIES:
            context[CONTEXT_KEY] = features
        events[k] = events[k].model_copy(update={"context": context})
    return events, attributed


def _without_features(event: Event) -> Event:
    if not event.context or CONTEXT_KEY not in event.context:
        return event
    context = {key: value for key, value in event.context.items() if key != CONTEXT_KEY}
    return event.model_copy(update={"context": context or None})
