"""Kafka publishing for the write routes: one shared producer, delivery confirmed, flushes shared; attribution.

A route returns only once the broker acknowledged its events. Flushing per request would serialize
write requests on a broker round trip each, so concurrent requests share flushes (group commit):
whoever arrives while a flush is running joins the *next* one, which starts as soon as the running
one ends and covers everything sent before it starts. The producer starts on first use, so the
read path never waits for Kafka and a reader starts even when Kafka is down. A broker that fails or
does not acknowledge within PUBLISH_TIMEOUT_S refuses the write (KafkaUnavailable, a 503); the
reader stays up.

Attribution: a click counts for the source that showed the item. Events that name the feed's scroll
session (``context.feed``) but no ``context.source`` get it from the session list before they go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from recstream.serving.cursor import is_session
from recstream.serving.errors import KafkaUnavailable, RedisUnavailable

from recstream.contracts.events import Event, UserEvent
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
SourceLookup = Callable[[list[tuple[str, str, str]]], Awaitable[list[str | None]]]
"""(user, session, item) → the source the session served the item from (FeedStore.sources under the guard)."""


class Publisher:
    """``await publisher.events([...])`` / ``await publisher.user(event)`` return once acknowledged.

    They raise KafkaUnavailable when the broker fails or stays silent for PUBLISH_TIMEOUT_S.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._start_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._next_flush: asyncio.Future[None] | None = None

    async def events(self, events: Sequence[Event]) -> None:
        async with _acknowledged():
            producer = await self._started()
            await producer.send_events(events)
            await self._flush()

    async def user(self, event: UserEvent) -> None:
        async with _acknowledged():
            producer = await self._started()
            await producer.send_user(event)
            await self._flush()

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

    async def _flush(self) -> None:
        """Wait for a flush that starts after this caller's sends (group commit, see the module doc).

        The flush runs in its own task, so a caller that gives up (cancelled, timed out) never
        leaves the others waiting on a flush nobody runs.
        """
        if self._next_flush is None:
            self._next_flush = asyncio.ensure_future(self._flush_after_running())
        await asyncio.shield(self._next_flush)

    async def _flush_after_running(self) -> None:
        async with self._flush_lock:
            self._next_flush = None  # from here on, new senders start the next flush
            assert self._producer is not None
            await self._producer.flush()


@contextlib.asynccontextmanager
async def _acknowledged() -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            yield
    except Exception as exc:  # any Kafka client failure: the write is refused, the reader stays up
        log.warning("publishing to Kafka failed: %r", exc)
        raise KafkaUnavailable(f"Kafka did not acknowledge the write: {type(exc).__name__}") from exc


async def attribute(events: list[Event], sources: SourceLookup) -> tuple[list[Event], int]:
    """Fill ``context.source`` from the scroll session named by ``context.feed``, in one lookup; how many got one.

    Best effort: without Redis (RedisUnavailable) the events go out as they came.
    """
    wanting = {
        k: (e.user_id, e.context["feed"], e.item_id)
        for k, e in enumerate(events)
        if e.context and "source" not in e.context and len(e.context) < 16 and is_session(e.context.get("feed"))
    }
    if not wanting:
        return events, 0
    try:
        found = await sources(list(wanting.values()))  # type: ignore[arg-type]
    except RedisUnavailable:
        return events, 0
    events = list(events)
    attributed = 0
    for k, source in zip(wanting, found, strict=True):
        if source is not None:
            events[k] = events[k].model_copy(update={"context": {**events[k].context, "source": source}})  # type: ignore[dict-item]
            attributed += 1
    return events, attributed
