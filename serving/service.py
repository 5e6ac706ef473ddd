"""The reader's service: what each route does with Redis, Kafka and the snapshot (serving/app.py calls it).

A feed costs two Redis round trips (serving/feed_store.py), each under the guard (serving/guard.py):
when Redis fails or is skipped, the feed is answered from the in-process popular list with
``degraded: true``, never a 5xx. Writes go to Kafka first, the log being the source of truth
(serving/publish.py). The errors it raises, and the HTTP answers they become: serving/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

import orjson
from recstream.serving import metrics
from recstream.serving.blend import SOURCES, Served
from recstream.serving.click_guard import ClickGuard
from recstream.serving.cursor import Cursor
from recstream.serving.errors import EventsRejected, NotFound, RedisUnavailable, SessionExpired
from recstream.serving.feed import build_page, degraded_page
from recstream.serving.feed_query import FEED_ROUTE
from recstream.serving.feed_store import FeedStore
from recstream.serving.filters import NO_FILTER, FeedFilter, FilterError
from recstream.serving.guard import RedisGuard
from recstream.serving.live_stats import LiveStats
from recstream.serving.publish import Publisher, attribute, with_event_ids
from recstream.serving.ranking import MODES, named_weights
from recstream.serving.redis_client import ClusterRedisClient, RedisClient, Script
from recstream.serving.snapshot import BACKGROUND_TIMEOUT_S, Snapshot, SnapshotLoader, stored_integer, stored_name
from recstream.serving.user_state import parse_preferences
from recstream.serving.variants import Variants
from redis.exceptions import RedisError

from recstream.contracts.events import Rejected, UserEvent, decode
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings

SIMILAR_ROUTE = "/v1/items/{item_id}/similar"
BACKGROUND_CONNECTIONS = 2
"""The snapshot loader's (one reload at a time) and an erasure's SCANs."""
MAX_REASONS = 10
"""Rejection reasons a 422 names; the rest are counted."""
SAVE_PREFERENCES = Script("""
-- KEYS[1]: the user's prefs, KEYS[2]: the erased set of the user's slot; ARGV[1]: the user, ARGV[2]: the value.
-- Returns 1 when written, 0 for an erased id: it stays erased (recstream/store/erasure.py), nothing is stored again.
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
""")


class FeedService:
    """The reader's state: one Redis client, the snapshot and its loader, the Kafka publisher, live stats."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys.of(settings)
        r = settings.reader
        client = ClusterRedisClient if settings.redis.cluster else RedisClient
        self.redis = client(settings.redis.url, r.redis_timeout_s, r.redis_connections, r.redis_connect_timeout_s)
        self.store = FeedStore(self.redis, self.keys)
        self.snapshot = Snapshot()
        # its own connections: a reload's large replies never hold a connection a feed waits for
        background = client(settings.redis.url, BACKGROUND_TIMEOUT_S, BACKGROUND_CONNECTIONS)
        self.loader = SnapshotLoader(background, settings, self.snapshot)
        self.publisher = Publisher(settings)
        self.guard = RedisGuard()
        self.stats = LiveStats()
        self.variants = Variants(settings)
        self.feedback = settings.model.feedback_types
        self.clicks = ClickGuard(
            self.redis, self.keys, settings.reader, self.guard,
            self.feedback.clicks | self.feedback.with_role("positive"), settings.worker.dedup_window_s,
        )  # fmt: skip
        self._served = {s: metrics.ITEMS_SERVED.labels(s) for s in SOURCES}
        self._trips = metrics.REDIS_ROUND_TRIPS.labels(FEED_ROUTE)
        self._modes = {mode: metrics.FEEDS_BY_MODE.labels(mode) for mode in MODES}
        self._kinds = {kind: metrics.FEEDS.labels(kind) for kind in metrics.FEED_KINDS}
        metrics.create_zero_series(FEED_ROUTE, SOURCES, MODES)
        self._loader_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Load the snapshot once (so the first feeds are full), then keep reloading in the background; a load that
        succeeded makes the loader healthy at once (/v1/stats said ``redis: false`` until the next reload)."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                await self.loader.refresh()
            self.loader.healthy = True
        self._loader_task = asyncio.create_task(self.loader.run(), name="snapshot-loader")

    async def close(self) -> None:
        if self._loader_task is not None:
            self._loader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader_task
        await self.publisher.close()
        await self.redis.close()
        await self.loader.redis.close()

    # --- feed ------------------------------------------------------------------------------

    async def feed(
        self, user_id: str, limit: int, cursor: Cursor | None, seed: int | None, only: FeedFilter = NO_FILTER
    ) -> dict:
        """Round trip 1 reads the user, the page is blended in process, round trip 2 records it in the session.

        ``only`` restricts the page; a cursor continues its session only under the filter it was issued with.
        """
        started = time.perf_counter()
        if cursor is not None and cursor.filter != only.digest:
            raise FilterError(
                f"cursor {cursor.text} continues a session served under another filter: send the category, "
                "exclude and filter parameters of its first page again, or start a new session without a cursor"
            )
        position = (cursor or Cursor.start(only.digest)).following()
        seed = position.seed(user_id) if seed is None else seed
        arm = self.variants.assign(user_id)
        try:
            user = await self.guard(lambda: self.store.read(user_id, cursor and cursor.session))
        except RedisUnavailable as exc:  # no round trip was made when the guard skipped Redis
            items = degraded_page(self.snapshot, limit, only, time.monotonic())
            trips = 0 if exc.cause == "skipped" else 1
            return self._feed_answer(
                user_id, items, cursor, seed, "degraded", "degraded", exc.cause, trips, started, arm.label
            )
        if cursor is not None and not user.session_found:
            self._trips.observe(1)
            raise SessionExpired(f"cursor {cursor.text} names no live session: it expired or was never issued")
        page = build_page(user, self.snapshot, arm.settings, limit, seed, time.monotonic(), only)
        kind, mode = "warm" if page.warm else "cold", page.mode
        if not page.items:
            return self._feed_answer(user_id, [], None, seed, kind, mode, None, 1, started, arm.label)
        r = self.settings.reader
        cap = r.sessions_per_user if user.known else r.anonymous_sessions
        try:
            await self.guard(
                lambda: self.store.record(
                    user_id, position.session, page.items, page.vectors, r.session_ttl_s, user.known, cap
                )
            )
        except RedisUnavailable as exc:  # the page is good, but its session could not remember it
            return self._feed_answer(
                user_id, page.items, cursor, seed, "degraded", mode, exc.cause, 2, started, arm.label
            )
        following = None if position.last else position
        return self._feed_answer(user_id, page.items, following, seed, kind, mode, None, 2, started, arm.label)

    def _feed_answer(
        self,
        user_id: str,
        items: list[Served],
        cursor: Cursor | None,
        seed: int,
        kind: str,
        mode: str,
        degraded_cause: str | None,
        trips: int,
        started: float,
        variant: str | None,
    ) -> dict:
        """The response body, plus every metric and live figure of a served feed.

        ``kind`` is warm, cold or degraded (no session or no Redis); ``mode`` how the items were chosen
        (serving/ranking.MODES: a ranked page whose session write failed is still ranked).
        """
        now = time.monotonic()
        counts: dict[str, int] = defaultdict(int)
        for served in items:
            counts[served.source] += 1
        for source, n in counts.items():
            self._served[source].inc(n)
        metrics.RECENTLY_SERVED.add((s.item for s in items), now)
        self._kinds[kind].inc()
        self._modes[mode].inc()
        self._trips.observe(trips)
        if degraded_cause is not None:
            metrics.DEGRADED.labels(FEED_ROUTE, degraded_cause).inc()
        self.stats.feed(counts, degraded_cause is not None, time.perf_counter() - started)
        categories = self.snapshot.categories
        return {
            "user_id": user_id,
            "items": [
                {
                    "item_id": s.item,
                    "source": s.source,
                    "reason": s.reason,
                    "categories": list(categories.get(s.item, now) or ()),
                    "score": s.score,
                    "top_feature": s.top_feature,
                }
                for s in items
            ],
            "next_cursor": cursor.text if cursor is not None else None,
            "session": cursor.session if cursor is not None else None,
            "model_version": self.snapshot.model_version,
            "warm": kind == "warm",
            "ranked": mode == "ranked",
            "degraded": degraded_cause is not None,
            "seed": seed,
            "variant": variant,
        }

    # --- other reads -----------------------------------------------------------------------

    async def similar(self, item_id: str, limit: int) -> dict:
        """The workers' precomputed neighbours, minus unavailable items; 404 for an item nobody knows."""

        try:
            known, raw = await self.guard(
                lambda: self.redis.execute(
                    ("EXISTS", self.keys.item(item_id)), ("GET", self.keys(f"item:{item_id}:similar"))
                )
            )
        except RedisUnavailable as exc:
            metrics.DEGRADED.labels(SIMILAR_ROUTE, exc.cause).inc()
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
        raw = await self.guard(lambda: self.redis.call("GET", self.keys.user(user_id, "prefs")))
        categories, not_interested = parse_preferences(raw)
        return {"categories": categories, "not_interested": not_interested}

    async def ready(self) -> dict:
        try:
            _, version = await self.guard(lambda: self.redis.execute(("PING",), ("GET", self.keys("model:current"))))
        except RedisUnavailable:
            return {
                "redis": False,
                "model_version": self.snapshot.model_version,
                "snapshot_loaded": self.snapshot.loaded,
            }
        return {"redis": True, "model_version": stored_name(version), "snapshot_loaded": self.snapshot.loaded}

    async def live(self) -> dict:
        """The reader's own figures, plus the workers' (applied events, online CTR, freshness) read from Redis, and the
        ranker weights it holds."""
        with contextlib.suppress(RedisUnavailable):
            (views, clicks), clock = await self.guard(
                lambda: self.redis.execute(
                    ("HMGET", self.keys("totals"), "views", "clicks"), ("GET", self.keys("clock"))
                )
            )
            self.stats.read_workers(
                stored_integer(views) or 0, stored_integer(clicks) or 0, stored_integer(clock), time.time() * 1000
            )
        figures = self.stats.figures(
            len(self.snapshot.pool.created), self.snapshot.model_version, self.guard.ok and self.loader.healthy
        )
        return {**figures, "ranker_weights": named_weights(self.snapshot.ranker.weights)}

    # --- writes ----------------------------------------------------------------------------

    async def save_preferences(self, user_id: str, categories: list[str], not_interested: list[str]) -> bool:
        """Publish the user event (the log is the source of truth), then write ``prefs`` so the next feed honours it.

        Returns whether the direct write happened; if not, the workers write the same value from the event, unless
        the id was erased: then neither writes it (the check and the write are one script, as in the workers').
        """
        event = UserEvent(
            user_id=user_id,
            ts=int(time.time() * 1000),
            preferred_categories=categories,
            not_interested=not_interested,
            replaces=["preferences"],  # empty lists clear them; the attributes are left as they are
        )
        await self.publisher.user(event)
        value = orjson.dumps({"categories": categories, "not_interested": not_interested})
        try:
            keys = [self.keys.user(user_id, "prefs"), self.keys.erased(user_id)]
            written = await self.guard(lambda: self.redis.run(SAVE_PREFERENCES, keys, [user_id, value]))
        except RedisUnavailable:
            return False
        return written == 1

    async def accept_events(self, body: bytes, client: str) -> dict:
        """Validate like the workers do (contracts.events.decode), give each an id, apply the click limits of
        ``client`` (serving/click_guard.py), stamp variants and sources, publish, confirm."""
        events, rejected = decode(body, "event", int(time.time() * 1000), self.feedback)
        if rejected:
            raise EventsRejected([r.reason for r in rejected[:MAX_REASONS]] + _more(rejected))
        if not events:
            raise EventsRejected(["event: no events in the body"])
        received = len(events)
        events = await self.clicks.admit(client, with_event_ids(events))
        events, attributed = await attribute(
            self.variants.stamp(events), lambda wanted: self.guard(lambda: self.store.sources(wanted))
        )
        await self.publisher.events(events)
        published = []
        for event in events:
            source = (event.context or {}).get("source")
            label = source if source in SOURCES else "none" if source is None else "other"
            kind = self.feedback.metric_label[event.type]  # view/click for the types counted in CTR
            metrics.EVENTS.labels(kind, label).inc()
            published.append((kind, label))
        self.stats.events(published)
        return {"accepted": len(events), "attributed": attributed, "dropped": received - len(events)}


def _more(rejected: list[Rejected]) -> list[str]:
    return [f"... and {len(rejected) - MAX_REASONS} more"] if len(rejected) > MAX_REASONS else []
