"""Kafka publishing for the write routes: one shared producer, delivery confirmed, flushes shared.

A route returns only once the broker acknowledged its events. Flushing per request would serialize
write requests on a broker round trip each, so concurrent requests share flushes (group commit):
whoever arrives while a flush is running joins the *next* one, which starts as soon as the running
one ends and covers everything sent before it starts. The producer starts on first use, so the
read path never waits for Kafka and a reader starts even when Kafka is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from recstream.contracts.events import Event, UserEvent
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer


class Publisher:
    """``await publisher.events([...])`` / ``await publisher.user(event)`` return once acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: EventProducer | None = None
        self._start_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._next_flush: asyncio.Future[None] | None = None

    async def events(self, events: Sequence[Event]) -> None:
        producer = await self._started()
        await producer.send_events(events)
        await self._flush()

    async def user(self, event: UserEvent) -> None:
        producer = await self._started()
        await producer.send_user(event)
        await self._flush()

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
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
