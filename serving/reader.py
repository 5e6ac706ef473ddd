"""What each route does with Redis, Kafka and the snapshot, with the degraded-mode rules in one place.

Degraded mode: every Redis round trip of a request runs under ``reader_redis_timeout_s``. A
timeout or error answers the request from the in-process popular list with ``degraded: true``
(never a 5xx). After TRIP_AFTER failures in a row the next requests skip Redis for COOLDOWN_S, so
a dead Redis costs no connection attempt per request while one slow reply degrades only its own
request; the first request after the cooldown tries again, so the reader recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from recstream.serving import metrics
from recstream.serving.blend import SOURCES, Served
from recstream.serving.cursor import Cursor
from recstream.serving.feed import build_page, degraded_page
from recstream.serving.feed_store import FeedStore
from recstream.serving.live_stats import LiveStats
from recstream.serving.publish import Publisher
from recstream.serving.redis_wire import RedisWire
from recstream.serving.snapshot import BACKGROUND_TIMEOUT_S, Snapshot, SnapshotLoader
from recstream.serving.user_state import parse_preferences
from recstream.serving.variants import Variants
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from recstream.contracts.events import Event, Rejected, UserEvent, decode
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

COOLDOWN_S = 0.25
TRIP_AFTER = 3
PUBLISH_TIMEOUT_S = 10.0
FEED_ROUTE = "/v1/feed/{user_id}"


class RedisUnavailable(Exception):
    """A round trip failed or was skipped; ``cause`` is a metric label: timeout, error or skipped."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class NotFound(LookupError):
    pass


class SessionExpired(LookupError):
    pass


class KafkaUnavailable(Exception):
    pass


class EventsRejected(ValueError):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class RedisGuard:
    """Turns a failed round trip into RedisUnavailable; after TRIP_AFTER in a row, skips Redis for COOLDOWN_S."""

    def __init__(self) -> None:
        self._failures = 0
        self._skip_until = 0.0

    @property
    def ok(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def __call__(self, round_trip: Callable[[], Awaitable[T]]) -> T:
        if not self.ok:
            raise RedisUnavailable("skipped")
        try:
            result = await round_trip()
        except RedisTimeout as exc:  # the wire's own timeout (see serving/redis_wire.py)
            self._failed()
            raise RedisUnavailable("timeout") from exc
        except (RedisError, OSError) as exc:
            self._failed()
            raise RedisUnavailable("error") from exc
        self._failures = 0
        return result

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= TRIP_AFTER:
            self._skip_until = time.monotonic() + COOLDOWN_S


class Reader:
    """The reader's state: one Redis client, the snapshot and its loader, the Kafka publisher, live stats."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.wire = RedisWire(settings.redis_url, settings.reader_redis_timeout_s)
        self.store = FeedStore(self.wire, self.keys)
        self.snapshot = Snapshot()
        # its own connection: a reload's large replies never queue ahead of a feed's
        self.loader = SnapshotLoader(RedisWire(settings.redis_url, BACKGROUND_TIMEOUT_S), settings, self.snapshot)
        self.publisher = Publisher(settings)
        self.guard = RedisGuard()
        self.stats = LiveStats()
        self.variants = Variants(settings)
        self._served = {s: metrics.ITEMS_SERVED.labels(s) for s in SOURCES}
        self._trips = metrics.REDIS_ROUND_TRIPS.labels(FEED_ROUTE)
        metrics.create_zero_series(FEED_ROUTE, SOURCES)
        self._loader_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Load the snapshot once (so the first feeds are full), then keep reloading in the background."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                await self.loader.refresh()
        self._loader_task = asyncio.create_task(self.loader.run(), name="snapshot-loader")

    async def close(self) -> None:
        if self._loader_task is not None:
            self._loader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader_task
        with contextlib.suppress(Exception):  # a Kafka that is down must not hold the shutdown hostage
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self.publisher.close()
        await self.wire.close()
        await self.loader.wire.close()

    # --- feed ------------------------------------------------------------------------------

    async def feed(self, user_id: str, limit: int, cursor: Cursor | None, seed: int | None) -> dict:
        """Round trip 1 reads the user, the page is blended in process, round trip 2 records it in the session."""
        started = time.perf_counter()
        position = (cursor or Cursor.start()).following()
        seed = position.seed(user_id) if seed is None else seed
        arm = self.variants.assign(user_id)
        try:
            user = await self.guard(lambda: self.store.read(user_id, cursor and cursor.session))
        except RedisUnavailable as exc:
            items = degraded_page(self.snapshot, limit)
            return self._feed_answer(user_id, items, cursor, seed, "degraded", exc.cause, 1, started, arm.label)
        if cursor is not None and not user.session_found:
            self._trips.observe(1)
            raise SessionExpired(f"cursor {cursor.text} names no live session: it expired or was never issued")
        page = build_page(user, self.snapshot, arm.settings, limit, seed, time.monotonic())
        kind = "warm" if page.warm else "cold"
        if not page.items:
            return self._feed_answer(user_id, [], None, seed, kind, None, 1, started, arm.label)
        try:
            await self.guard(
                lambda: self.store.record(user_id, position.session, page.items, self.settings.session_ttl_s)
            )
        except RedisUnavailable as exc:  # the page is good, but its session could not remember it
            return self._feed_answer(user_id, page.items, cursor, seed, "degraded", exc.cause, 2, started, arm.label)
        following = None if position.last else position
        return self._feed_answer(user_id, page.items, following, seed, kind, None, 2, started, arm.label)

    def _feed_answer(
        self,
        user_id: str,
        items: list[Served],
        cursor: Cursor | None,
        seed: int,
        kind: str,
        degraded_cause: str | None,
        trips: int,
        started: float,
        variant: str | None,
    ) -> dict:
        """The response body, plus every metric and live figure of a served feed."""
        now = time.monotonic()
        counts: dict[str, int] = defaultdict(int)
        for served in items:
            counts[served.source] += 1
        for source, n in counts.items():
            self._served[source].inc(n)
            self.stats.add(f"served:{source}", n)
        metrics.RECENTLY_SERVED.add((s.item for s in items), now)
        metrics.FEEDS.labels(kind).inc()
        self._trips.observe(trips)
        self.stats.add("feeds")
        if degraded_cause is not None:
            metrics.DEGRADED.labels(FEED_ROUTE, degraded_cause).inc()
            self.stats.add("degraded")
        self.stats.latency(time.perf_counter() - started)
        categories = self.snapshot.categories
        return {
            "user_id": user_id,
            "items": [
                {
                    "item_id": s.item,
                    "source": s.source,
                    "reason": s.reason,
                    "categories": list(categories.get(s.item, now) or ()),
                }
                for s in items
            ],
            "next_cursor": cursor.text if cursor is not None else None,
            "session": cursor.session if cursor is not None else None,
            "model_version": self.snapshot.model_version,
            "warm": kind == "warm",
            "degraded": degraded_cause is not None,
            "seed": seed,
            "variant": variant,
        }

    # --- other reads -----------------------------------------------------------------------

    async def similar(self, item_id: str, limit: int) -> dict:
        """The workers' precomputed neighbours, minus unavailable items; 404 for an item nobody knows."""

        try:
            known, raw = await self.guard(
                lambda: self.wire.execute(
                    ("EXISTS", self.keys.item(item_id)), ("GET", self.keys(f"item:{item_id}:similar"))
                )
            )
        except RedisUnavailable as exc:
            metrics.DEGRADED.labels("/v1/items/{item_id}/similar", exc.cause).inc()
            return {"item_id": item_id, "items": [], "degraded": True}
        if not known and raw is None:
            raise NotFound(f"item {item_id!r} is not known")
        try:
            rows = orjson.loads(raw) if raw else []
        except orjson.JSONDecodeError:
            rows = []
        unavailable = self.snapshot.unavailable
        items = [
            {"item_id": r[0], "score": float(r[1])}
            for r in rows
            if isinstance(r, list)
            and len(r) >= 2
            and isinstance(r[0], str)
            and isinstance(r[1], int | float)
            and r[0] != item_id
            and r[0] not in unavailable
        ][:limit]
        return {"item_id": item_id, "items": items, "degraded": False}

    async def preferences(self, user_id: str) -> dict:
        raw = await self.guard(lambda: self.wire.call("GET", self.keys.user(user_id, "prefs")))
        categories, not_interested = parse_preferences(raw)
        return {"categories": categories, "not_interested": not_interested}

    async def ready(self) -> dict:
        try:
            _, version = await self.guard(lambda: self.wire.execute(("PING",), ("GET", self.keys("model:current"))))
        except RedisUnavailable:
            return {
                "redis": False,
                "model_version": self.snapshot.model_version,
                "snapshot_loaded": self.snapshot.loaded,
            }
        return {"redis": True, "model_version": version, "snapshot_loaded": self.snapshot.loaded}

    async def live(self) -> dict:
        """The reader's own figures, plus the workers' (applied events, online CTR, freshness) read from Redis."""
        with contextlib.suppress(RedisUnavailable):
            (views, clicks), clock = await self.guard(
                lambda: self.wire.execute(
                    ("HMGET", self.keys("totals"), "views", "clicks"), ("GET", self.keys("clock"))
                )
            )
            readings = {"applied:views": int(views or 0), "applied:clicks": int(clicks or 0)}
            readings["applied"] = readings["applied:views"] + readings["applied:clicks"]
            previous = self.stats.latest("applied")
            if clock is not None and previous is not None and readings["applied"] > previous:
                # events were applied since the last reading: the newest one's age (event time → now)
                readings["freshness_ms"] = max(time.time() * 1000 - int(clock), 0.0)
            self.stats.read(readings)
        feeds = self.stats.rate("feeds")
        totals = self.stats.totals
        ctr = {}
        for source in SOURCES:
            views, clicks = totals[f"view:{source}"], totals[f"click:{source}"]
            ctr[source] = clicks / views if views else None
        return {
            "feeds_per_s": feeds,
            "events_per_s": self.stats.rate("events"),
            "clicks_per_s": self.stats.rate("clicks"),
            "degraded_share": self.stats.rate("degraded") / feeds if feeds else 0.0,
            "feed_p50_ms": self.stats.latency_ms(0.5),
            "feed_p99_ms": self.stats.latency_ms(0.99),
            "served_by_source": {s: totals[f"served:{s}"] for s in SOURCES},
            "ctr_by_source": ctr,
            "pool_items": len(self.snapshot.pool.items),
            "model_version": self.snapshot.model_version,
            "redis": self.guard.ok and self.loader.healthy,
            "applied_events_per_s": self.stats.reading_rate("applied"),
            "online_ctr": self.stats.reading_ratio("applied:clicks", "applied:views"),
            "freshness_p99_ms": self.stats.reading_quantile("freshness_ms", 0.99),
        }

    # --- writes ----------------------------------------------------------------------------

    async def save_preferences(self, user_id: str, categories: list[str], not_interested: list[str]) -> bool:
        """Publish the user event (the log is the source of truth), then write ``prefs`` so the next feed honours it.

        Returns whether the direct write happened; if not, the workers write the same value from the event.
        """
        event = UserEvent(
            user_id=user_id, ts=int(time.time() * 1000), preferred_categories=categories, not_interested=not_interested
        )
        await self._publish(self.publisher.user(event))
        value = orjson.dumps({"categories": categories, "not_interested": not_interested})
        try:
            await self.guard(lambda: self.wire.call("SET", self.keys.user(user_id, "prefs"), value))
        except RedisUnavailable:
            return False
        return True

    async def accept_events(self, body: bytes) -> dict:
        """Validate like the workers do (contracts.events.decode), stamp variants and sources, publish, confirm."""
        events, rejected = decode(body, "event", int(time.time() * 1000))
        if rejected:
            raise EventsRejected([r.reason for r in rejected[:10]] + _more(rejected))
        if not events:
            raise EventsRejected(["event: no events in the body"])
        events, attributed = await self._attribute(self.variants.stamp(events))
        await self._publish(self.publisher.events(events))
        for event in events:
            source = (event.context or {}).get("source")
            label = source if source in SOURCES else "none" if source is None else "other"
            metrics.EVENTS.labels(event.type, label).inc()
            self.stats.add(f"{event.type}:{label}")
        self.stats.add("events", len(events))
        self.stats.add("clicks", sum(e.type == "click" for e in events))
        return {"accepted": len(events), "attributed": attributed}

    async def _attribute(self, events: list[Event]) -> tuple[list[Event], int]:
        """Fill ``context.source`` from the scroll session named by ``context.feed``, in one round trip.

        Best effort: without Redis the events go out as they came.
        """
        wanting = {
            k: (e.user_id, e.context["feed"], e.item_id)
            for k, e in enumerate(events)
            if e.context and "source" not in e.context and len(e.context) < 16 and _is_session(e.context.get("feed"))
        }
        if not wanting:
            return events, 0
        try:
            sources = await self.guard(lambda: self.store.sources(list(wanting.values())))  # type: ignore[arg-type]
        except RedisUnavailable:
            return events, 0
        events = list(events)
        attributed = 0
        for k, source in zip(wanting, sources, strict=True):
            if source is not None:
                events[k] = events[k].model_copy(update={"context": {**events[k].context, "source": source}})  # type: ignore[dict-item]
                attributed += 1
        return events, attributed

    async def _publish(self, sending: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await sending
        except Exception as exc:  # any Kafka client failure: the write is refused, the reader stays up
            log.warning("publishing to Kafka failed: %r", exc)
            raise KafkaUnavailable(f"Kafka did not acknowledge the write: {type(exc).__name__}") from exc


def _is_session(value: object) -> bool:
    return isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)


def _more(rejected: list[Rejected]) -> list[str]:
    return [f"... and {len(rejected) - 10} more"] if len(rejected) > 10 else []
