"""The reader's in-process copy of the state every feed shares: popular lists, the bandit pool, metadata.

Why a copy: parsing a 500-item pool or a 1,000-item ranking on every request costs more than the
rest of the feed (ARCHITECTURE.md, performance notes), and these structures are the same for
every user. A background task reloads them every ``pool_cache_s`` (popular lists every
``popular_refresh_s``), so a feed request only reads its own user's keys — one round trip — and
a change written by the workers reaches feeds within that period. The global popular list is
also the degraded-mode answer when Redis is unreachable: the last one loaded stays in place.

Every cost here is bounded whatever the catalogue (bench/scale.py found each one at ×10–×100): a
reload reads the newest ``pool.read_max`` pool items, and a feed's explore draw runs over a
shortlist of at most ``pool.explore_max`` of them.

Item categories (for fresh lists, onboarding boosts, "not interested" categories and request-time
filters), creation times and features (for request-time filters) are cached per item; a request that
meets an unknown item asks for it, and the next reload fetches it.

The ranking stage's shared inputs come with the same reloads, at least every RANKER_REFRESH_S: the
workers' per-partition ranker states (averaged, serving/ranking.py), the event-time clock, and the
logits of the smoothed CTRs the popular lists are ordered by (global and per segment).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import operator
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from recstream.models.bandit import BetaPrior, thompson_top_k
from recstream.models.ctr import smoothed_ctr
from recstream.serving import metrics
from recstream.serving.popularity import orders
from recstream.serving.ranking import RankerState, ctr_logit, named_weights
from recstream.serving.redis_client import ClusterRedisClient, RedisClient
from redis.exceptions import RedisError

from recstream.contracts.keys import Keys
from recstream.contracts.ranking import rounded_values
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
FIRSTS_MAX_AGE_S = 1.0
"""While the clock stands, a cached item created at its instant without a first event is re-read once this old: its
first event is its age in events (serving/features.py), and an item cached before it (announced, then viewed) would
read new for a minute. One cached with a first event keeps it up to CATEGORY_MAX_AGE_S, though a lagging partition
may lower it meanwhile: the item reads a little younger until then."""
CATEGORY_BATCH = 2_000
CATEGORY_CACHE_MAX = 500_000
BACKGROUND_TIMEOUT_S = 2.0
SEGMENT_PAUSE_S = 0.003
MIN_REFRESH_S = 0.05
RANKER_REFRESH_S = 1.0
"""The longest time between reloads whatever ``pool_cache_s``: the ranker's weights are at most this old."""
NEWEST_HEAD = 64
"""Rows of a set of categories' newest pool items merged once per reload (Pool.newest): a ranked page takes ~20."""
NEWEST_MAX = 1_024
"""Sets of categories whose merged head a pool keeps; past it, it starts over."""


@dataclass(frozen=True, slots=True)
class Popular:
    """A segment's popular items for warm users (by P(i|s)) and cold users (shrunk toward global); whether an item
    is on the user's order and the logit of its P(i|s) are ranking features (:class:`ItemColumns`)."""

    warm: tuple[str, ...]
    cold: tuple[str, ...]
    ctr_logits: Mapping[str, float] = field(default_factory=dict)


Fresh = tuple[int, str, str]
"""A fresh row tagged with its category: (−created_ts, item, category)."""


@dataclass(frozen=True)
class Pool:
    """The new-item pool: its explore shortlist as arrays for vectorized Thompson sampling, and per-category fresh
    lists, creation times and CTR logits of every pool item."""

    items: tuple[str, ...] = ()
    """The explore shortlist: every item read, or past ``pool.explore_max`` the top of one Thompson draw per reload."""
    index: Mapping[str, int] = field(default_factory=dict)
    alpha: np.ndarray = field(default_factory=lambda: np.empty(0))
    beta: np.ndarray = field(default_factory=lambda: np.empty(0))
    fresh: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)
    """category → (−created_ts, item) of its pool items, newest first (ready for a k-way merge)."""
    by_category: Mapping[str, np.ndarray] = field(default_factory=dict)
    """category → shortlist indices, to mask a "not interested" category in one step."""
    uncategorized: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Shortlist indices of the items whose categories were not loaded yet: a refused category may be theirs."""
    created: Mapping[str, int] = field(default_factory=dict)
    """item → created_ts (ms, event time) of every item read: the newest ``pool.read_max`` of the pool."""
    ctr_logits: Mapping[str, float] = field(default_factory=dict)
    """item → logit of its smoothed CTR, from its counts as the workers compute it."""
    _newest: dict[tuple[str, ...], tuple[tuple[Fresh, ...], ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """Sorted categories → :meth:`newest`'s head and what its making left over, until the next reload."""

    def newest(self, categories: Iterable[str]) -> tuple[tuple[Fresh, ...], Iterator[Fresh]]:
        """The categories' pool items newest first, as (−created_ts, item, category) (an item in two of them twice):
        the first NEWEST_HEAD (kept for this set of categories until the next reload: pages share favourite
        categories), then a lazy merge of the rest.

        The merge's rows are distinct, so it is their sorted order, and its first NEWEST_HEAD rows are among the
        first NEWEST_HEAD of each category (a row past them has as many smaller ones in its own list): the head is
        the sorted union of those, cut; the rest merges what the cut left with each category's remainder.
        A page then walks a tuple instead of a Python merge (~0.5 µs an item; a ranked page takes ~20 of them).
        """
        key = tuple(sorted(categories))
        cached = self._newest.get(key)
        if cached is None:
            if len(self._newest) >= NEWEST_MAX:
                self._newest.clear()
            heads = (
                [(neg, item, category) for neg, item in self.fresh.get(category, ())[:NEWEST_HEAD]] for category in key
            )
            rows = sorted(itertools.chain.from_iterable(heads))
            cached = self._newest[key] = (tuple(rows[:NEWEST_HEAD]), tuple(rows[NEWEST_HEAD:]))
        rest = [_tagged(itertools.islice(self.fresh.get(c, ()), NEWEST_HEAD, None), c) for c in key]
        return cached[0], heapq.merge(cached[1], *rest)


def _tagged(rows: Iterable[tuple[int, str]], category: str) -> Iterator[Fresh]:
    return ((neg_created, item, category) for neg_created, item in rows)


class Categories:
    """item → categories, created_ts and features, filled by the loader; lookups from requests name the items to
    load next."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[str, ...], float, int | None]] = {}
        self._features: dict[str, Mapping[str, float]] = {}
        """Only items that have features: most catalogues give few items any."""
        self._firsts: dict[str, int] = {}
        """item → its first event as a count of all events (the workers' ``first``), for items with one: its age in
        events while the clock stands (serving/features.py)."""
        self.known: Counter[str] = Counter()
        """category → how many cached items carry it (a category no cached item carries is not in it)."""
        self.wanted: set[str] = set()
        self._unfirsted_s = CATEGORY_MAX_AGE_S
        """How old an entry created at the standing instant without a first event may be (:meth:`standing`), never
        more than CATEGORY_MAX_AGE_S."""
        self._instant: int | None = None

    def standing(self, instant: int | None) -> None:
        """The instant the clock stands at, None while it moves (set by each reload): while it stands, an item
        created at that instant and cached without a first event is due for a re-read after FIRSTS_MAX_AGE_S (only
        those are aged in events), any other after CATEGORY_MAX_AGE_S."""
        self._instant = instant
        self._unfirsted_s = CATEGORY_MAX_AGE_S if instant is None else FIRSTS_MAX_AGE_S

    def _old(self, item: str, entry: tuple[tuple[str, ...], float, int | None] | None, now: float) -> bool:
        """Due for a re-read: unknown, or loaded longer ago than its kind may be (:meth:`standing`). Callers on the
        hot path test ``now − loaded > _unfirsted_s`` (the shorter age) first: a moving clock costs them no call."""
        if entry is None:
            return True
        age = now - entry[1]
        fresh = age <= self._unfirsted_s or entry[2] != self._instant or item in self._firsts
        return age > CATEGORY_MAX_AGE_S or not fresh

    def get(self, item: str, now: float) -> tuple[str, ...] | None:
        """The item's categories (possibly up to CATEGORY_MAX_AGE_S old), None while unknown."""
        entry = self.entry(item, now)
        return None if entry is None else entry[0]

    def entry(self, item: str, now: float) -> tuple[tuple[str, ...], float, int | None] | None:
        """(categories, when loaded, created_ts) as last loaded, None while unknown; an unknown item, or one due for
        a re-read (:meth:`_old`), is named for the next reload."""
        entry = self._entries.get(item)
        due = entry is None or (now - entry[1] > self._unfirsted_s and self._old(item, entry, now))
        if due and len(self.wanted) < CATEGORY_BATCH:
            self.wanted.add(item)
        return entry

    def entries(self, items: Sequence[str], now: float) -> list[tuple[tuple[str, ...], float, int | None] | None]:
        """:meth:`entry` of each item, looked up in one pass (a page's feature rows: about 60 items), counted in
        ``recstream_reader_feature_rows_total`` by whether it was cached: how much of what the ranker scores lacks
        its categories (after a restart, the cache of a large catalogue takes a while to fill)."""
        found = list(map(self._entries.get, items))
        wanted, unknown = self.wanted, found.count(None)
        due, old = self._unfirsted_s, self._old
        stale = [i for i, e in zip(items, found, strict=True) if e is None or (now - e[1] > due and old(i, e, now))]
        for item in stale:  # named until the batch is full
            if len(wanted) >= CATEGORY_BATCH:
                break
            wanted.add(item)
        metrics.FEATURE_ROWS_KNOWN.inc(len(found) - unknown)
        if unknown:
            metrics.FEATURE_ROWS_UNKNOWN.inc(unknown)
        return found

    def names(self, name: str) -> bool:
        """Whether ``name`` is a category some cached item carries, or a cached item the workers stored (with a
        creation time or categories). A name nothing is stored for is cached empty: it may be a category no cached
        item carries yet."""
        if name in self.known:
            return True
        entry = self._entries.get(name)
        return entry is not None and (entry[2] is not None or bool(entry[0]))

    def stale(self, items: Iterable[str], now: float) -> list[str]:
        return [i for i in items if self._old(i, self._entries.get(i), now)]

    def features(self, item: str) -> Mapping[str, float]:
        """The item's features as last loaded (empty when it has none or is unknown: see :meth:`get`)."""
        return self._features.get(item, {})

    def first(self, item: str) -> int | None:
        """The item's first event as a count of all events, as last loaded; None when unknown or never in one."""
        return self._firsts.get(item)

    def put(
        self,
        item: str,
        categories: tuple[str, ...],
        now: float,
        created: int | None = None,
        features: Mapping[str, float] | None = None,
        first: int | None = None,
    ) -> None:
        self._forget(item)  # re-insert at the end: the dict's order is the eviction order
        self._entries[item] = (categories, now, created)
        if features:
            self._features[item] = features
        if first is not None:
            self._firsts[item] = first
        self.known.update(categories)
        self.wanted.discard(item)
        if len(self._entries) > CATEGORY_CACHE_MAX:
            self._forget(next(iter(self._entries)))

    def _forget(self, item: str) -> None:
        """Drop the item's entry, and its categories from ``known`` where it was their last carrier (``known`` grew
        with every tag an item ever had, past the cache's bound, and named categories no cached item carried)."""
        entry = self._entries.pop(item, None)
        self._features.pop(item, None)
        self._firsts.pop(item, None)
        if entry is not None:
            self.known.subtract(entry[0])
            for category in entry[0]:
                if self.known[category] <= 0:
                    del self.known[category]


@dataclass(frozen=True)
class ItemColumns:
    """The item-level ranking features of every item the snapshot lists (the global list, each segment's lists, the
    pool) as numpy columns indexed by the item's position in ``index``, already rounded as logged (rounding is
    elementwise, so a page's rows are the same): a page gathers its candidates' rows with one lookup per item
    instead of a few dictionary lookups per item and feature. Position ``len(index)`` holds what an item the
    snapshot does not list reads as: the CTR floor, in no list, not in the pool.

    Built once per reload (:meth:`Snapshot.item_columns`); a segment's columns when a page first asks for them
    (:meth:`of_lists`, ~0.1 ms each): all 21 of the bench's at once stalled the loop for ~3 ms every reload.
    """

    index: Mapping[str, int]
    ctr: np.ndarray
    """``ctr_logit``: the pool's smoothed-CTR logit for pool items, the global list's for the others, else the floor."""
    pool: np.ndarray
    """``explore``: in the new-item pool (bool)."""
    overall: np.ndarray
    """On the global list (bool): ``popular`` for a segment not loaded yet."""
    inputs: tuple = ()
    """What they were built from (compared by identity: the loader replaces each attribute whole)."""
    segments: dict[int, tuple[Popular, tuple[np.ndarray, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    """id of a segment's :class:`Popular` → (it, its columns), filled by :meth:`of_lists`."""

    @classmethod
    def of(cls, snapshot: Snapshot) -> ItemColumns:
        pool = snapshot.pool
        items = dict.fromkeys(
            itertools.chain(snapshot.overall_rank, snapshot.ctr_logits, pool.created, pool.ctr_logits)
        )
        for lists in snapshot.segments.values():
            items.update(dict.fromkeys(itertools.chain(lists.ctr_logits, lists.warm, lists.cold)))
        index = {item: k for k, item in enumerate(items)}
        ctr = np.full(len(index) + 1, snapshot.ctr_floor_logit)
        for logits in (snapshot.ctr_logits, pool.ctr_logits):  # the pool's last: its logits win
            ctr[_at(index, logits)] = np.fromiter(logits.values(), np.float64, len(logits))
        ctr = rounded_values(ctr)
        flags = _flags(index, pool.created), _flags(index, snapshot.overall_rank)
        return cls(index, ctr, *flags, _column_inputs(snapshot))

    def of_lists(self, lists: Popular | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(``segment_ctr_logit``, on the warm list, on the cold list) of one of the snapshot's segments, or of the
        global list for None (a segment not loaded yet); built at the first ask, kept with the lists they are of."""
        if lists is None:
            return self.ctr, self.overall, self.overall
        cached = self.segments.get(id(lists))
        if cached is not None and cached[0] is lists:
            return cached[1]
        own = self.ctr.copy()
        logits = lists.ctr_logits
        own[_at(self.index, logits)] = rounded_values(np.fromiter(logits.values(), np.float64, len(logits)))
        columns = own, _flags(self.index, lists.warm), _flags(self.index, lists.cold)
        self.segments[id(lists)] = (lists, columns)
        return columns


def _at(index: Mapping[str, int], keys: Iterable[str]) -> np.ndarray:
    return np.fromiter(map(index.__getitem__, keys), np.intp)


def _flags(index: Mapping[str, int], keys: Iterable[str]) -> np.ndarray:
    """A bool column over ``index`` (and its unlisted position), true at ``keys``."""
    out = np.zeros(len(index) + 1, dtype=np.bool_)
    out[_at(index, keys)] = True
    return out


def _column_inputs(snapshot: Snapshot) -> tuple:
    """What :class:`ItemColumns` are built from, each segment's lists one by one (so that a segment added in place
    is seen too)."""
    return (snapshot.overall_rank, snapshot.ctr_logits, snapshot.ctr_floor_logit, snapshot.pool,
            *snapshot.segments.values())  # fmt: skip


@dataclass
class Snapshot:
    """What every feed shares. The loader replaces each attribute whole, in two parts each swapped without an await
    (what every reload reads; then, when due, the popular lists: a request never sees half of either), except
    ``categories``, a cache that fills item by item."""

    overall: tuple[str, ...] = ()
    overall_rank: Mapping[str, int] = field(default_factory=dict)
    segments: dict[str, Popular] = field(default_factory=dict)
    pool: Pool = field(default_factory=Pool)
    unavailable: frozenset[str] = frozenset()
    model_version: str | None = None
    categories: Categories = field(default_factory=Categories)
    ctr_logits: Mapping[str, float] = field(default_factory=dict)
    """item → logit of its global smoothed CTR, for the items of the global list."""
    ctr_floor_logit: float = 0.0
    """The same for items outside it and outside the pool: the prior's (an item without views), or the list's
    last score when the list is full (the item ranks below it)."""
    clock_ms: int | None = None
    """The newest applied event's timestamp (``clock``): the now of item ages, in event time."""
    counted: int | None = None
    """The events applied (the sum of ``counted``) while the clock stands (``clock:events`` at least
    ``pool.graduate_standing_events``: a dataset without timestamps), else None: the now of item ages in events."""
    ranker: RankerState = field(default_factory=RankerState)
    loaded: bool = False
    _columns: ItemColumns | None = field(default=None, repr=False, compare=False)

    def item_columns(self) -> ItemColumns:
        """The :class:`ItemColumns` of the current lists and pool, rebuilt when one of them was replaced."""
        columns = self._columns
        inputs = _column_inputs(self)
        if columns is None or len(columns.inputs) != len(inputs) or any(map(operator.is_not, columns.inputs, inputs)):
            columns = self._columns = ItemColumns.of(self)
        return columns


class SnapshotLoader:
    """Reloads a :class:`Snapshot` from Redis in the background; a failed reload keeps the last copy."""

    def __init__(self, redis: RedisClient | ClusterRedisClient, settings: Settings, snapshot: Snapshot) -> None:
        self.redis = redis
        self.keys = Keys.of(settings)
        self.settings = settings
        self.snapshot = snapshot
        self._popular_at = -np.inf
        self.healthy = False
        self.model_metrics = metrics.ModelVersion()
        self._rng = np.random.default_rng()
        self._lock = asyncio.Lock()
        self._ranker_keys = [
            self.keys.ranker(settings.kafka.events_topic, p) for p in range(settings.kafka.events_partitions)
        ]
        started = time.monotonic()
        metrics.RANKER_WEIGHTS_AGE.set_function(lambda: time.monotonic() - (snapshot.ranker.changed_at or started))

    async def run(self) -> None:
        """Reload forever; a failed reload is counted and retried at the next tick, never raised: Redis errors, and
        any other error too (logged with its traceback), since a loader that died would leave the reader serving
        its last copy, the ranker stale, for the rest of its life. ``healthy`` (/readyz) says whether the last one
        succeeded."""
        interval = min(max(self.settings.reader.pool_cache_s, MIN_REFRESH_S), RANKER_REFRESH_S)
        while True:
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT_S):
                    await self.refresh()
                self.healthy = True
            except (RedisError, OSError, TimeoutError) as exc:
                if self.healthy:
                    log.warning("snapshot reload failed, serving the last copy: %r", exc)
                self._failed()
            except Exception:
                if self.healthy:
                    log.exception("snapshot reload failed on what it read, serving the last copy")
                self._failed()
            await asyncio.sleep(interval)

    def _failed(self) -> None:
        self.healthy = False
        metrics.SNAPSHOT_FAILURES.inc()

    async def refresh(self, *, force_popular: bool = False) -> None:
        """One reload: pool, prior, unavailable set, model version, clock, ranker states; popular lists when due.

        One at a time: a reload forced while the background one awaits Redis would otherwise finish first, and the
        older one would then overwrite it with what it read before (an item marked unavailable would come back)."""
        async with self._lock:
            await self._refresh(force_popular)

    async def _refresh(self, force_popular: bool) -> None:
        """Two parts, each read and computed first, then swapped in by one block without an await: what every reload
        reads (ranker states, pool, unavailable set, clock, model version), then, when due, the popular lists (the
        global list, its CTR logits and floor, every segment's lists). A feed never sees a new global list beside old
        segment lists, and a part that fails half way changes nothing of itself: a popular rebuild that times out
        (under a saturated loop its pauses stretch) leaves the last lists whole and the ranker's weights fresh, and
        a loader failing at its first part for longer than ``ranker_stale_s`` falls back to the fixed blend. Only the
        categories cache fills item by item as the reload reads it."""
        k, snap, now = self.keys, self.snapshot, time.monotonic()
        popular_due = force_popular or now - self._popular_at >= self.settings.reader.popular_refresh_s
        commands: list[tuple] = [
            ("ZRANGE", k("pool"), -self.settings.pool.read_max, -1, "WITHSCORES"),  # the newest, oldest first
            ("GET", k("prior")),
            ("SMEMBERS", k("unavailable")),
            ("GET", k("model:current")),
            ("SMEMBERS", k("segments")),
            ("GET", k("clock")),
            ("GET", k("clock:events")),
            ("HVALS", k("counted")),
            *(("GET", key) for key in self._ranker_keys),  # one GET each: on a cluster each is in its own slot
        ]
        if popular_due:
            commands.append(("ZREVRANGE", k.rank(), 0, POPULAR_DEPTH - 1, "WITHSCORES"))
        replies = await self.redis.execute(*commands)
        pool_raw, prior, unavailable_raw, model_version, segments, clock, at_clock, counted_raw, *rest = replies
        ranker_raw, overall_raw = rest[: len(self._ranker_keys)], rest[len(self._ranker_keys) :]
        ranker = self._ranker(ranker_raw, now)
        created = {item: ts for item, raw in _pairs(pool_raw) if (ts := stored_integer(raw)) is not None}
        overall = _scores(overall_raw[0]) if popular_due else None
        counted = self._counted(at_clock, counted_raw)
        snap.categories.standing(None if counted is None else stored_integer(clock))

        wanted = snap.categories.stale(created, now) + snap.categories.stale(overall or (), now)
        wanted = list(dict.fromkeys([*wanted, *snap.categories.wanted]))[:CATEGORY_BATCH]
        commands = [("HMGET", k.item(item), "categories", "created_ts", "features") for item in wanted]
        if wanted:
            commands.append(("HMGET", k("first"), *wanted))
        if created:
            commands += [("HMGET", k("views"), *created), ("HMGET", k("clicks"), *created)]
        replies = iter(await self.redis.execute(*commands) if commands else [])
        rows = [next(replies) for _ in wanted]
        firsts = next(replies) if wanted else []
        for item, (categories, created_ts, features), first in zip(wanted, rows, firsts, strict=True):
            categories = tuple(dict.fromkeys(c for c in (categories or "").split(",") if c and c.isascii()))
            entry = stored_integer(created_ts), _features(features), stored_integer(first)
            snap.categories.put(item, categories, now, *entry)

        unavailable = frozenset(unavailable_raw)
        views, clicks = (next(replies), next(replies)) if created else ([], [])
        pool = self._pool(created, views, clicks, prior, unavailable, now)
        snap.ranker, snap.clock_ms, snap.unavailable = ranker, stored_integer(clock), unavailable  # the first swap
        snap.counted = counted
        snap.model_version, snap.pool = stored_name(model_version), pool
        metrics.RANKER_ROWS.set(ranker.rows)
        metrics.show_ranker_weights(named_weights(ranker.weights))
        metrics.POOL_ITEMS.set(len(pool.created))
        self.model_metrics.observe(snap.model_version)
        if overall is not None:
            full = len(overall) == POPULAR_DEPTH
            floor = min(self._prior(prior), *overall.values()) if full else self._prior(prior)
            lists = await self._segments(sorted(segments), overall)
            snap.ctr_logits, snap.ctr_floor_logit, snap.overall, snap.overall_rank, snap.segments = (  # second swap
                _logits(overall),
                float(ctr_logit(np.array(floor))),
                tuple(overall),
                positions(overall),
                lists,
            )
            self._popular_at = now
        snap.loaded = True
        snap.item_columns()  # here, not in the first feed request after the reload

    def _ranker(self, raw: list[str | None], now: float) -> RankerState:
        """The partitions' states as read (the client decodes replies as UTF-8 with surrogate escapes, so encoding
        back gives the stored bytes): the weights are fresh as of now."""
        states = [None if value is None else value.encode("utf-8", "surrogateescape") for value in raw]
        return self.snapshot.ranker.refreshed(states, now)

    def _counted(self, at_clock: str | None, counts: list[str]) -> int | None:
        """:attr:`Snapshot.counted` from ``clock:events`` and the partitions' counts (one that is no count: 0)."""
        if (stored_integer(at_clock) or 0) < self.settings.pool.graduate_standing_events:
            return None
        return sum(stored_integer(n) or 0 for n in counts)

    def _prior(self, prior: str | None) -> float:
        """The quantized global CTR the workers scored with (``prior``); the configured default before any, and for a
        stored value that is no finite number (one bad key must not stop the reloads)."""
        try:
            value = float(prior) if prior else math.nan
        except ValueError:
            value = math.nan
        return value if math.isfinite(value) else self.settings.model.ctr_default

    def _pool(
        self,
        created: dict[str, int],
        views: list,
        clicks: list,
        prior: str | None,
        unavailable: frozenset[str],
        now: float,
    ) -> Pool:
        """Beta(α0 + clicks, β0 + views − clicks) per available pool item, α0, β0 of mean the pool's own CTR smoothed
        toward the workers' prior (models/bandit.BetaPrior.of_pool: empirical Bayes over the pool read).

        A feed draws once per shortlisted item, so past ``pool.explore_max`` items the shortlist is the top of one
        Thompson draw over the pool read, made here once per reload: an item's chance to be shortlisted follows
        its posterior as a feed's draw does, and the unlucky ones get a new chance at every reload.
        """
        rows = [
            (item, ts, stored_integer(v) or 0, stored_integer(c) or 0)
            for (item, ts), v, c in zip(created.items(), views, clicks, strict=True)
            if item not in unavailable
        ]
        ctr = self._prior(prior)
        clicks_v = np.array([r[3] for r in rows], dtype=np.float64)
        views_v = np.array([r[2] for r in rows], dtype=np.float64)
        prior = BetaPrior.of_pool(
            clicks_v, views_v, ctr, self.settings.model.ctr_prior_mass, self.settings.pool.bandit_prior_mass
        )
        alpha, beta = prior.posterior(clicks_v, views_v)
        logits = ctr_logit(smoothed_ctr(clicks_v, views_v, ctr, self.settings.model.ctr_prior_mass)).tolist()
        members: dict[str, list[tuple[int, str]]] = {}
        categories = {row[0]: self.snapshot.categories.get(row[0], now) for row in rows}
        for item, created, _, _ in rows:
            for category in categories[item] or ():
                members.setdefault(category, []).append((-created, item))
        short = np.arange(len(rows))
        if len(rows) > self.settings.pool.explore_max:
            short = np.sort(thompson_top_k(alpha, beta, self.settings.pool.explore_max, self._rng))
        items = tuple(rows[k][0] for k in short.tolist())
        index = {item: k for k, item in enumerate(items)}
        return Pool(
            items=items,
            index=index,
            alpha=alpha[short],
            beta=beta[short],
            fresh={c: tuple(sorted(m)) for c, m in members.items()},
            by_category={
                c: np.array([k for _, i in m if (k := index.get(i)) is not None], dtype=np.int64)
                for c, m in members.items()
            },
            uncategorized=np.array([k for k, item in enumerate(items) if categories[item] is None], dtype=np.int64),
            created={row[0]: row[1] for row in rows},
            ctr_logits={row[0]: logit for row, logit in zip(rows, logits, strict=True)},
        )

    async def _segments(self, segments: list[str], overall: dict[str, float]) -> dict[str, Popular]:
        """Per segment: its top list and the global top, each completed with the other ranking's exact
        scores for the items it lacks (popularity.py), ordered for warm and for cold users.

        Done in slices (two small round trips, the merge, both orderings) with SEGMENT_PAUSE_S between
        them: a feed's few loop iterations then rarely meet more than one slice (~1 ms), where back to
        back slices stretched every iteration of a reload and raised the p99 at 1,000 feeds/s to ~40 ms.
        """
        result: dict[str, Popular] = {}
        overall = dict(itertools.islice(overall.items(), SEGMENT_DEPTH))
        for segment in segments:
            top = _scores(
                await self.redis.call("ZREVRANGE", self.keys.rank(segment), 0, SEGMENT_DEPTH - 1, "WITHSCORES")
            )
            only_segment = [i for i in top if i not in overall]
            only_overall = [i for i in overall if i not in top]
            commands = []
            if only_segment:
                commands.append(("ZMSCORE", self.keys.rank(), *only_segment))
            if only_overall:
                commands.append(("ZMSCORE", self.keys.rank(segment), *only_overall))
            replies = iter(await self.redis.execute(*commands) if commands else [])
            full_overall = dict(overall)
            if only_segment:
                full_overall.update((i, float(x)) for i, x in zip(only_segment, next(replies), strict=True) if x)
            if only_overall:
                top.update((i, float(x)) for i, x in zip(only_overall, next(replies), strict=True) if x)
            await asyncio.sleep(SEGMENT_PAUSE_S)
            warm, cold, scores = orders(top, full_overall, self.settings.blend.cold_segment_weight)
            await asyncio.sleep(SEGMENT_PAUSE_S)
            result[segment] = Popular(warm[:SEGMENT_DEPTH], cold[:SEGMENT_DEPTH], _logits(scores))
            await asyncio.sleep(SEGMENT_PAUSE_S)
        return result


def positions(order: Iterable[str]) -> dict[str, int]:
    """item → its 0-based position in a ranked list.

    >>> positions(("a", "b"))
    {'a': 0, 'b': 1}
    """
    return {item: k for k, item in enumerate(order)}


def _logits(scores: Mapping[str, float]) -> dict[str, float]:
    """item → logit of its smoothed-CTR score, computed in one vectorized step."""
    return dict(zip(scores, ctr_logit(np.fromiter(scores.values(), np.float64, len(scores))).tolist(), strict=True))


def stored_integer(raw: str | None) -> int | None:
    """A stored integer (a timestamp, a count), None when absent or not a finite number: one bad field must not stop
    the reloads (the item would be asked for again at each one, and fail it again).

    >>> [stored_integer(raw) for raw in ("1700000000000", "1.7e12", "soon", "inf", None)]
    [1700000000000, 1700000000000, None, None, None]
    """
    try:
        value = float(raw) if raw else math.nan
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(raw) if raw.lstrip("-").isdigit() else int(value)  # type: ignore[union-attr]


def _features(raw: str | None) -> dict[str, float]:
    """An item's ``features`` field (JSON, written by the workers) as name → number; anything else as none.

    >>> _features('{"price": 9.5, "in_stock": 1}'), _features(None), _features("[1]")
    ({'price': 9.5, 'in_stock': 1.0}, {}, {})
    """
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    """A WITHSCORES reply ``[member, score, member, score, …]`` as (member, score) pairs, without members no id can
    be (:func:`stored_name`)."""
    return [(item, score) for item, score in zip(flat[::2], flat[1::2], strict=True) if item.isascii()]


def _scores(flat: list[str]) -> dict[str, float]:
    """A WITHSCORES reply as member → score, in reply order, without members no id can be (:func:`stored_name`).

    >>> _scores(["a", "0.5", b"\\xff".decode(errors="surrogateescape"), "0.3", "b", "0.25"])
    {'a': 0.5, 'b': 0.25}
    """
    return {item: float(score) for item, score in _pairs(flat)}


def stored_name(raw: str | None) -> str | None:
    """A stored id or model version as the reader may answer it, None when none can be that text.

    What the workers and ``recstream train`` store is ASCII (ids match ``ID_PATTERN``, versions are timestamps);
    a value that is not (bytes that are not UTF-8 come with surrogate escapes) was written by something else, and
    carried into an answer it would fail every JSON encoding of it, so every feed would answer 500.

    >>> stored_name("20261205T110313Z.970002-accc38"), stored_name(b"\\xff".decode(errors="surrogateescape"))
    ('20261205T110313Z.970002-accc38', None)
    >>> stored_name(None)
    """
    return raw if raw is not None and raw.isascii() else None
