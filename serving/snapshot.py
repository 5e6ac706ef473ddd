"""The reader's in-process copy of the state every feed shares: popular lists, the bandit pool, metadata.

Why a copy: parsing a 500-item pool or a 1,000-item ranking on every request costs more than the
rest of the feed (ARCHITECTURE.md, performance notes), and these structures are the same for
every user. A background task reloads them every ``pool_cache_s`` (popular lists every
``popular_refresh_s``), so a feed request only reads its own user's keys — one round trip — and
a change written by the workers reaches feeds within that period. The global popular list is
also the degraded-mode answer when Redis is unreachable: the last one loaded stays in place.

Item categories (for fresh lists, onboarding boosts and "not interested" categories) are cached
per item; a request that meets an unknown item asks for it, and the next reload fetches it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from recstream.models.bandit import BetaPrior
from recstream.serving import metrics
from recstream.serving.popularity import cold_order, warm_order
from recstream.serving.redis_wire import RedisWire
from redis.exceptions import RedisError

from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings

log = logging.getLogger(__name__)

POPULAR_DEPTH = 1000
"""Items of the global list (the degraded-mode answer, and the fallback of unknown segments)."""
SEGMENT_DEPTH = 500
"""Items kept per segment list. A cold user has no seen set, so 500 covers 25 pages of 20 of popular
slots; past it (or for a heavy warm user) the popular source runs dry and the others fill the page.
The cost of a reload grows with it: ~2 ms per segment at 500."""
CATEGORY_MAX_AGE_S = 60.0
"""A cached item's categories are re-read once this old, so an item update reaches the filters."""
CATEGORY_BATCH = 2_000
CATEGORY_CACHE_MAX = 500_000
BACKGROUND_TIMEOUT_S = 2.0
SEGMENT_PAUSE_S = 0.003
MIN_REFRESH_S = 0.05


@dataclass(frozen=True, slots=True)
class Popular:
    """A segment's popular items for warm users (by P(i|s)) and cold users (shrunk toward global)."""

    warm: tuple[str, ...]
    cold: tuple[str, ...]


@dataclass(frozen=True)
class Pool:
    """The new-item pool as arrays for vectorized Thompson sampling, plus per-category fresh lists."""

    items: tuple[str, ...] = ()
    index: Mapping[str, int] = field(default_factory=dict)
    alpha: np.ndarray = field(default_factory=lambda: np.empty(0))
    beta: np.ndarray = field(default_factory=lambda: np.empty(0))
    fresh: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)
    """category → (−created_ts, item) of its pool items, newest first (ready for a k-way merge)."""
    by_category: Mapping[str, np.ndarray] = field(default_factory=dict)
    """category → pool indices, to mask a "not interested" category in one step."""


class Categories:
    """item → categories, filled by the loader; lookups from requests name the items to load next."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[str, ...], float]] = {}
        self.known: set[str] = set()
        self.wanted: set[str] = set()

    def get(self, item: str, now: float) -> tuple[str, ...] | None:
        """The item's categories (possibly up to CATEGORY_MAX_AGE_S old), None while unknown."""
        entry = self._entries.get(item)
        if entry is None or now - entry[1] > CATEGORY_MAX_AGE_S:
            if len(self.wanted) < CATEGORY_BATCH:
                self.wanted.add(item)
            return None if entry is None else entry[0]
        return entry[0]

    def stale(self, items: Iterable[str], now: float) -> list[str]:
        return [i for i in items if (e := self._entries.get(i)) is None or now - e[1] > CATEGORY_MAX_AGE_S]

    def put(self, item: str, categories: tuple[str, ...], now: float) -> None:
        self._entries.pop(item, None)  # re-insert at the end: the dict's order is the eviction order
        self._entries[item] = (categories, now)
        self.known.update(categories)
        self.wanted.discard(item)
        if len(self._entries) > CATEGORY_CACHE_MAX:
            del self._entries[next(iter(self._entries))]


@dataclass
class Snapshot:
    """What every feed shares. The loader replaces each attribute whole (a request never sees half a
    reload), except ``categories``, a cache that fills item by item."""

    overall: tuple[str, ...] = ()
    segments: dict[str, Popular] = field(default_factory=dict)
    pool: Pool = field(default_factory=Pool)
    unavailable: frozenset[str] = frozenset()
    model_version: str | None = None
    categories: Categories = field(default_factory=Categories)
    loaded: bool = False


class SnapshotLoader:
    """Reloads a :class:`Snapshot` from Redis in the background; a failed reload keeps the last copy."""

    def __init__(self, wire: RedisWire, settings: Settings, snapshot: Snapshot) -> None:
        self.wire = wire
        self.keys = Keys(settings.redis.prefix)
        self.settings = settings
        self.snapshot = snapshot
        self._popular_at = -np.inf
        self.healthy = False
        self.model_metrics = metrics.ModelVersion()

    async def run(self) -> None:
        """Reload forever; Redis errors are counted and retried at the next tick, never raised."""
        interval = max(self.settings.reader.pool_cache_s, MIN_REFRESH_S)
        while True:
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                    await self.refresh()
                self.healthy = True
            except (RedisError, OSError, TimeoutError) as exc:
                if self.healthy:
                    log.warning("snapshot reload failed, serving the last copy: %r", exc)
                self.healthy = False
                metrics.SNAPSHOT_FAILURES.inc()
            await asyncio.sleep(interval)

    async def refresh(self, *, force_popular: bool = False) -> None:
        """One reload: pool, prior, unavailable set, model version; popular lists when due."""
        k, snap, now = self.keys, self.snapshot, time.monotonic()
        popular_due = force_popular or now - self._popular_at >= self.settings.reader.popular_refresh_s
        commands: list[tuple] = [
            ("ZRANGE", k("pool"), 0, -1, "WITHSCORES"),
            ("GET", k("prior")),
            ("SMEMBERS", k("unavailable")),
            ("GET", k("model:current")),
            ("SMEMBERS", k("segments")),
        ]
        if popular_due:
            commands.append(("ZREVRANGE", k.rank(), 0, POPULAR_DEPTH - 1, "WITHSCORES"))
        pool_raw, prior, unavailable, model_version, segments, *overall_raw = await self.wire.execute(*commands)
        created = {item: int(float(ts)) for item, ts in _pairs(pool_raw)}
        overall = _scores(overall_raw[0]) if popular_due else None

        wanted = snap.categories.stale(created, now) + snap.categories.stale(overall or (), now)
        wanted = list(dict.fromkeys([*wanted, *snap.categories.wanted]))[:CATEGORY_BATCH]
        commands = [("HGET", k.item(item), "categories") for item in wanted]
        if created:
            commands += [("HMGET", k("views"), *created), ("HMGET", k("clicks"), *created)]
        replies = await self.wire.execute(*commands) if commands else []
        for item, categories in zip(wanted, replies[: len(wanted)], strict=True):
            snap.categories.put(item, tuple(c for c in (categories or "").split(",") if c), now)

        snap.unavailable = frozenset(unavailable)
        snap.model_version = model_version
        self.model_metrics.observe(model_version)
        views, clicks = replies[len(wanted) :] if created else ([], [])
        snap.pool = self._pool(created, views, clicks, prior, now)
        metrics.POOL_ITEMS.set(len(snap.pool.items))
        if overall is not None:
            snap.overall = tuple(overall)
            snap.segments = await self._segments(sorted(segments), overall)
            self._popular_at = now
        snap.loaded = True

    def _pool(self, created: dict[str, int], views: list, clicks: list, prior: str | None, now: float) -> Pool:
        """Beta(α0 + clicks, β0 + views − clicks) per available pool item, α0, β0 from the workers' prior."""
        unavailable = self.snapshot.unavailable
        rows = [
            (item, ts, int(v or 0), int(c or 0))
            for (item, ts), v, c in zip(created.items(), views, clicks, strict=True)
            if item not in unavailable
        ]
        ctr = float(prior) if prior else self.settings.model.ctr_default
        alpha, beta = BetaPrior.from_ctr(ctr, self.settings.pool.bandit_prior_mass).posterior(
            np.array([r[3] for r in rows], dtype=np.float64), np.array([r[2] for r in rows], dtype=np.float64)
        )
        members: dict[str, list[tuple[int, str]]] = {}
        for item, created, _, _ in rows:
            for category in self.snapshot.categories.get(item, now) or ():
                members.setdefault(category, []).append((-created, item))
        index = {row[0]: k for k, row in enumerate(rows)}
        return Pool(
            items=tuple(row[0] for row in rows),
            index=index,
            alpha=alpha,
            beta=beta,
            fresh={c: tuple(sorted(m)) for c, m in members.items()},
            by_category={c: np.array([index[i] for _, i in m], dtype=np.int64) for c, m in members.items()},
        )

    async def _segments(self, segments: list[str], overall: dict[str, float]) -> dict[str, Popular]:
        """Per segment: its top list and the global top, each completed with the other ranking's exact
        scores for the items it lacks (popularity.py), ordered for warm and for cold users.

        Done in slices (two small round trips, the merge, each ordering) with SEGMENT_PAUSE_S between
        them: a feed's few loop iterations then rarely meet more than one slice (~1 ms), where back to
        back slices stretched every iteration of a reload and raised the p99 at 1,000 feeds/s to ~40 ms.
        """
        result: dict[str, Popular] = {}
        overall = dict(itertools.islice(overall.items(), SEGMENT_DEPTH))
        for segment in segments:
            top = _scores(
                await self.wire.call("ZREVRANGE", self.keys.rank(segment), 0, SEGMENT_DEPTH - 1, "WITHSCORES")
            )
            only_segment = [i for i in top if i not in overall]
            only_overall = [i for i in overall if i not in top]
            commands = []
            if only_segment:
                commands.append(("ZMSCORE", self.keys.rank(), *only_segment))
            if only_overall:
                commands.append(("ZMSCORE", self.keys.rank(segment), *only_overall))
            replies = iter(await self.wire.execute(*commands) if commands else [])
            full_overall = dict(overall)
            if only_segment:
                full_overall.update((i, float(x)) for i, x in zip(only_segment, next(replies), strict=True) if x)
            if only_overall:
                top.update((i, float(x)) for i, x in zip(only_overall, next(replies), strict=True) if x)
            await asyncio.sleep(SEGMENT_PAUSE_S)
            warm = warm_order(top, full_overall)[:SEGMENT_DEPTH]
            await asyncio.sleep(SEGMENT_PAUSE_S)
            result[segment] = Popular(
                warm, cold_order(top, full_overall, self.settings.blend.cold_segment_weight)[:SEGMENT_DEPTH]
            )
            await asyncio.sleep(SEGMENT_PAUSE_S)
        return result


def _pairs(flat: list[str]) -> zip:
    """A WITHSCORES reply ``[member, score, member, score, …]`` as (member, score) pairs."""
    return zip(flat[::2], flat[1::2], strict=True)


def _scores(flat: list[str]) -> dict[str, float]:
    """A WITHSCORES reply as member → score, in reply order.

    >>> _scores(["a", "0.5", "b", "0.25"])
    {'a': 0.5, 'b': 0.25}
    """
    return {member: float(score) for member, score in _pairs(flat)}
