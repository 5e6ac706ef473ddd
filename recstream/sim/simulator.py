"""The closed loop: simulated users of a World fetch feeds from the real reader, view them, click, report.

Each feed request: an activity-weighted user (so users come back) asks the reader for
``GET /v1/feed/{u}?limit=k&seed=…`` over HTTP; the user views every served item (an impression)
and clicks each one with its true probability ``world.click_probability(u, i, now)``; the views
and clicks go back through ``POST /v1/events`` with ``context.source``, ``context.feed`` (the page's
scroll session, so the reader stamps each event with the feature vector it served the item with and
the workers' ranker learns from it) and the feed's ``variant`` when the reader named one; the reader
publishes them to Kafka and the workers apply them as they would a real client's.
New items reach the ``items`` topic when the world creates them.
Simulation time is the wall clock (event timestamps are real), so a world meant to be simulated
in minutes sets its arrival rate and appeal half-life in minutes too.

The simulator knows the truth, so each feed is scored against the oracle of that moment:

    regret = Σ_{i ∈ oracle top-k} p(u, i, t) − Σ_{i ∈ served, not shown to u before} p(u, i, t)

t the moment the page arrived, the oracle choosing among the items that existed when the feed was
asked for (a slower reader is not charged for items created while it answered) and that the user
has not been shown yet. A repeat (an item the user was shown before, on an earlier page or
earlier on this one) earns nothing and is not clicked: the oracle may not repeat either, and a
memoryless click on a repeat would credit a page for what it showed again. A short page counts its
missing slots as 0.

Click draws are per feed and item: feed n's uniform for item i is the i-th value of the stream
seeded by (seed, n, CLICK_STREAM), so two rows that serve the same item on feed n draw the same
click for it, wherever on the page it sits.

Discovery: a *new* item (created after the run started) is discovered when it enters the top
``POPULAR_TOP`` of the global popular ranking (the workers' smoothed-CTR ranking ``rank`` in Redis,
polled every ``RANKING_POLL_S``); its impressions before that are the price of the discovery.
Reported for the top decile of new items by true quality.

:class:`Ledger` is the bookkeeping (pure, unit-tested on a hand-computed world);
:class:`Simulator` is the I/O around it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from recstream.contracts.events import Rejected, validate
from recstream.contracts.keys import Keys
from recstream.contracts.settings import PoolSettings, Settings
from recstream.eventlog.producer import EventProducer
from recstream.sim.world import World, WorldConfig

TOP_QUANTILE = 0.9
"""Top decile: new items whose true quality is at or above the 0.9 quantile of the run's new items."""
POPULAR_TOP = 20
"""An item has reached the popular ranking when it is among its first 20 (two pages of 10)."""
RANKING_POLL_S = 0.5
CLICK_STREAM = 1
"""Feed n's click draws come from the stream seeded (seed, n, CLICK_STREAM): (seed, n) alone is, for n = 0, the
stream the seed's users and arrival gaps come from (a trailing 0 word seeds as nothing)."""
HTTP_TIMEOUT_S = 10.0
RESEND = frozenset({429, 503})
"""An events POST answered with these is sent again (README: a 503 is worth a resend, a 429 after its wait)."""
POST_ATTEMPTS = 3
RESEND_WAIT_S, RESEND_WAIT_MAX_S = 0.2, 2.0

FRESH_WORLD = WorldConfig(
    n_users=1_000,
    n_items=200,
    new_items_per_hour=3_600,
    appeal_half_life_h=2 / 60,
    initial_age_span_h=0.1,
    quality_sd=1.5,
)
"""A fresh-content world on a clock of minutes (a news or short-video feed sped up, so a run of a minute
is a day's dynamics): a new item a second (the rate bench/policies.py measures at), appeal halving every
2 minutes. The start catalogue is 6 minutes old, so the calibrated 4% CTR of a random impression there
means a fresh item is clicked ~2.5× as often as that on average, and a 10-minute-old one hardly at all.
Quality varies more than taste (sd 1.5 against 1): some new items are hits, most are not, as in such feeds."""

STABLE_WORLD = WorldConfig(
    n_users=1_000,
    n_items=1_000,
    new_items_per_hour=240,
    appeal_half_life_h=None,
    affinity_sd=1.5,
    quality_sd=0.5,
    browse_recent=0.0,
)
"""A stable-catalogue world (a film or product catalogue): no appeal fading, so an item is as good a year
later; taste varies more than quality (sd 1.5 against 0.5), so who the user is matters more than what is
popular; a new item every 15 s, one per ~300 feeds at the simulator's 20 feeds/s; browsing ignores recency.
The world of issue 16 where a popular-only feed beat the default blend."""

SPARSE_WORLD = STABLE_WORLD.model_copy(update={"n_users": 10_000, "base_ctr": 0.02})
"""The stable world with sparse clicks: ten times the users sharing the same traffic and half the click rate,
so a user has a few views and rarely a click (a long tail of occasional visitors)."""

DENSE_WORLD = STABLE_WORLD.model_copy(update={"n_users": 200, "base_ctr": 0.08})
"""The stable world with dense clicks and long histories: a fifth of the users share the traffic and click
twice as often, so a user's history runs to hundreds of items (the held-out dataset of issue 16)."""

WORLDS: dict[str, WorldConfig] = {
    "fresh": FRESH_WORLD,
    "stable": STABLE_WORLD,
    "sparse": SPARSE_WORLD,
    "dense": DENSE_WORLD,
}
"""The named worlds, so no default is tuned to one of them (bench/validate.py, bench/policies.py --world)."""


def pool_age_for(world: WorldConfig) -> int:
    """The new-item pool's graduation age for a world: twice its appeal half-life, the ratio of the
    defaults (48 h for 24 h), so a sped-up world gets a pool on its own clock. Fading off: the default."""
    half_life_h = world.appeal_half_life_h
    return int(2 * half_life_h * 3600) if half_life_h else PoolSettings.model_fields["graduate_age_s"].default


class SimConfig(BaseModel):
    """How the simulated users behave; the world (tastes, items, arrival, fading) is the WorldConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, description="users, clicks and the reader's explore draws")
    feeds_per_s: float = Field(20.0, gt=0, description="feed requests offered per second (Poisson)")
    concurrency: int = Field(16, ge=1, description="feed requests in flight at most")
    limit: int = Field(10, ge=1, le=100, description="k: items per feed page")


@dataclass
class Counts:
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class ArmCounts(Counts):
    """Per A/B variant: its feeds and their regret too."""

    feeds: int = 0
    regret: float = 0.0


@dataclass
class SimResult:
    """What a run did. Live while the run goes (the demo's panel reads it), final after."""

    feeds: int = 0
    """feed requests answered, scored and reported (their events accepted): regret, CTR and shares count these"""
    failed: int = 0
    """feed requests that failed at any step, the page or the POST of its events: none of them is among ``feeds``"""
    degraded: int = 0
    """feeds the reader answered without Redis (its page's ``degraded``)"""
    ranked: int = 0
    """feeds the reader ordered with its online ranker (its page's ``ranked``)"""
    events_posted: int = 0
    items_published: int = 0
    totals: Counts = field(default_factory=Counts)
    regret: float = 0.0
    oracle_value: float = 0.0
    by_source: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    by_variant: dict[str, ArmCounts] = field(default_factory=lambda: defaultdict(ArmCounts))
    discovered_after: dict[int, int] = field(default_factory=dict)
    """new item → its impressions before it entered the popular ranking's top"""
    top_new: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ctr(self) -> float:
        return self.totals.ctr

    @property
    def regret_per_feed(self) -> float:
        return self.regret / self.feeds if self.feeds else 0.0

    @property
    def ranked_share(self) -> float:
        """The share of the feeds that were ranked (the rest: the fixed blend, or degraded)."""
        return self.ranked / self.feeds if self.feeds else 0.0

    @property
    def top_discovered(self) -> list[int]:
        return [i for i in self.top_new if i in self.discovered_after]

    @property
    def median_impressions_to_discovery(self) -> float | None:
        found = [self.discovered_after[i] for i in self.top_discovered]
        return float(np.median(found)) if found else None

    def summary(self) -> dict[str, Any]:
        """Flat figures for tables and JSON."""
        return {
            "feeds": self.feeds,
            "failed": self.failed,
            "degraded": self.degraded,
            "ranked_share": self.ranked_share,
            "impressions": self.totals.impressions,
            "clicks": self.totals.clicks,
            "ctr": self.ctr,
            "regret_per_feed": self.regret_per_feed,
            "ctr_by_source": {s: c.ctr for s, c in sorted(self.by_source.items())},
            "impressions_by_source": {s: c.impressions for s, c in sorted(self.by_source.items())},
            "by_variant": {
                v: {"feeds": a.feeds, "impressions": a.impressions, "clicks": a.clicks, "regret": a.regret}
                for v, a in sorted(self.by_variant.items())
            },
            "top_new_items": len(self.top_new),
            "top_new_discovered": len(self.top_discovered),
            "median_impressions_to_discovery": self.median_impressions_to_discovery,
            "items_published": self.items_published,
            "seconds": self.seconds,
        }


@dataclass(frozen=True, slots=True)
class Shown:
    """One served item as the simulator sees it."""

    item: int
    source: str
    variant: str | None = None


@dataclass(frozen=True)
class ScoredPage:
    """A served page scored against the truth (:meth:`Ledger.score`), not counted yet."""

    page: list[Shown]
    clicks: list[bool]
    best: float
    """Σ p over the oracle top-k"""
    got: float
    """Σ p over the served items, repeats at 0"""
    variant: str | None


class Ledger:
    """Scores feeds against the world's truth and keeps the counts (pure: no I/O, no clock).

    ``start_ms``: items created after it are the run's new items (for discovery).
    """

    def __init__(self, world: World, start_ms: int, limit: int) -> None:
        self.world = world
        self.start_ms = start_ms
        self.limit = limit
        self.result = SimResult()
        self.shown: dict[int, set[int]] = defaultdict(set)
        self._impressions: dict[int, int] = defaultdict(int)

    def saw(self, user: int, items: Iterable[int]) -> None:
        """Items the user was shown before the run (its history): the oracle will not offer them again."""
        self.shown[user].update(items)

    def oracle(self, user: int, now_ms: int, asked_ms: int | None = None) -> np.ndarray:
        """The oracle feed: the k items that existed at ``asked_ms`` (default ``now_ms``) not yet shown to the user
        with the highest true p at ``now_ms``."""
        available = np.arange(int(self.world.available_items(now_ms if asked_ms is None else asked_ms)))
        fresh = available[~np.isin(available, np.fromiter(self.shown[user], np.int64, len(self.shown[user])))]
        return self.world.oracle_top_k(user, now_ms, self.limit, fresh)

    def values(self, user: int, served: Sequence[int], now_ms: int) -> np.ndarray:
        """Each served item's true p at now_ms, 0 for a repeat (shown to the user before, or earlier on the page)."""
        if not served:
            return np.empty(0)
        shown, first = self.shown[user], {}
        new = [item not in shown and first.setdefault(item, k) == k for k, item in enumerate(served)]
        return self.world.click_probability(user, np.asarray(served, np.int64), now_ms) * np.asarray(new)

    def best(self, user: int, now_ms: int, asked_ms: int | None = None) -> float:
        """Σ p over the oracle top-k for this user at now_ms."""
        return float(self.world.click_probability(user, self.oracle(user, now_ms, asked_ms), now_ms).sum())

    def regret(self, user: int, served: Sequence[int], now_ms: int, asked_ms: int | None = None) -> tuple[float, float]:
        """(Σ p over the oracle top-k, Σ p over the served items, repeats at 0) for this user at now_ms."""
        return self.best(user, now_ms, asked_ms), float(self.values(user, served, now_ms).sum())

    def score(
        self,
        user: int,
        page: Sequence[Shown],
        now_ms: int,
        rng: np.random.Generator,
        variant: str | None = None,
        asked_ms: int | None = None,
    ) -> ScoredPage:
        """Score one served page and draw the user's clicks (each new item with its true p, the uniform of item i the
        i-th of ``rng``'s stream; a repeat is not clicked); the user has seen its items from now on, but nothing is
        counted until :meth:`count`. ``asked_ms``: when the feed was asked for (the oracle's catalogue; default
        now_ms).

        ``variant``: the A/B variant the reader named for the page, counted even when the page is empty (its
        regret counts against that variant as it does overall); its items may name theirs too."""
        items = [s.item for s in page]
        p = self.values(user, items, now_ms)
        best = self.best(user, now_ms, asked_ms)
        draws = rng.random(max(items) + 1)[items] if items else np.empty(0)
        self.shown[user].update(items)
        return ScoredPage(list(page), (draws < p).tolist(), best, float(p.sum()), variant)

    def count(self, scored: ScoredPage) -> list[bool]:
        """Count a scored page as a feed: its regret, impressions and clicks, overall, per source and per variant;
        returns the clicks."""
        r, page, clicks = self.result, scored.page, scored.clicks
        regret = scored.best - scored.got
        r.feeds += 1
        r.regret += regret
        r.oracle_value += scored.best
        for shown, clicked in zip(page, clicks, strict=True):
            for counts in (r.totals, r.by_source[shown.source]):
                counts.impressions += 1
                counts.clicks += clicked
            self._impressions[shown.item] += 1
        named = {scored.variant} if scored.variant else set()
        for variant in {s.variant for s in page if s.variant is not None} | named:
            arm = r.by_variant[variant]
            arm.feeds += 1
            arm.regret += regret
            mine = [c for s, c in zip(page, clicks, strict=True) if s.variant == variant]
            arm.impressions += len(mine)
            arm.clicks += sum(mine)
        return clicks

    def ranked(self, items: Iterable[int]) -> None:
        """Items now in the popular ranking's top: each new one not discovered yet is, after its impressions so far."""
        for item in items:
            if item >= 0 and item not in self.result.discovered_after and self.world.created_ms[item] > self.start_ms:
                self.result.discovered_after[item] = self._impressions[item]

    def finish(self, end_ms: int) -> SimResult:
        """Settle the top decile of the new items created by ``end_ms`` (the simulator's: when it stopped offering
        feeds, not when the last answer came, so a row whose last requests waited longer has no extra new items)."""
        world, r = self.world, self.result
        new = np.flatnonzero(world.created_ms[: int(world.available_items(end_ms))] > self.start_ms)
        if new.size:
            cut = np.quantile(world.quality[new], TOP_QUANTILE)
            r.top_new = new[world.quality[new] >= cut].tolist()
        return r


class Simulator:
    """Simulated users against a running reader (and, through it, Kafka and the workers).

    ``asyncio.run(Simulator(world, "http://127.0.0.1:8080", settings, SimConfig(seed=1)).run(seconds=60))``
    returns a :class:`SimResult` (``feeds=1000`` bounds it by feeds instead).
    """

    def __init__(
        self,
        world: World,
        reader_url: str,
        settings: Settings,
        config: SimConfig | None = None,
        *,
        announced_items: int = 0,
        announced_users: Iterable[int] = (),
        history: Mapping[int, Iterable[int]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``announced_items``: the first items already on the items topic; ``history``: user → items
        already shown to them (their seen sets); ``headers``: sent with every request, besides
        ``X-API-Key`` with the settings' ``reader.api_key`` when set (POST /v1/events needs it)."""
        self.world = world
        self.reader_url = reader_url.rstrip("/")
        self.settings = settings
        self.config = config or SimConfig()
        self.announced_items = announced_items
        self.announced_users = set(announced_users)
        self.history = history or {}
        key = settings.reader.api_key
        self.headers = ({"X-API-Key": key.get_secret_value()} if key is not None else {}) | dict(headers or {})
        self.ledger: Ledger | None = None

    @property
    def result(self) -> SimResult:
        """The live counts (empty before the run starts)."""
        return self.ledger.result if self.ledger else SimResult()

    async def run(
        self, seconds: float | None = None, feeds: int | None = None, start_ms: int | None = None
    ) -> SimResult:
        """Offer feeds at ``feeds_per_s`` until ``seconds`` have passed or ``feeds`` were offered.

        ``start_ms``: wait for this wall-clock time first, so runs that took different times to set up
        still cover the same stretch of the world's timeline (arrivals, fading)."""
        import aiohttp

        if seconds is None and feeds is None:
            raise ValueError("give seconds or feeds (or both)")
        if start_ms is not None:
            await asyncio.sleep(max(0.0, (start_ms - _now_ms()) / 1000))
        cfg = self.config
        started, start_ms = time.monotonic(), _now_ms()
        self.ledger = ledger = Ledger(self.world, start_ms, cfg.limit)
        for user, items in self.history.items():
            ledger.saw(user, items)
        rng = np.random.default_rng(cfg.seed)
        in_flight = asyncio.Semaphore(cfg.concurrency)
        tasks: set[asyncio.Task] = set()
        offered_until: int | None = None  # the new items of the run: those created while feeds were offered
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=cfg.concurrency * 2)
        try:
            async with (
                EventProducer(self.settings) as producer,
                aiohttp.ClientSession(timeout=timeout, connector=connector, headers=self.headers) as http,
            ):
                await self._publish_items(producer, start_ms)
                poller = asyncio.create_task(self._poll_ranking(ledger))
                due, n = time.monotonic(), 0
                while (feeds is None or n < feeds) and (seconds is None or time.monotonic() - started < seconds):
                    due += rng.exponential(1.0 / cfg.feeds_per_s)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await self._publish_items(producer, _now_ms())
                    user = int(self.world.sample_users(1, rng)[0])
                    if user not in self.announced_users:
                        self.announced_users.add(user)
                        await producer.send_user(_valid(self.world.user_message(user, _now_ms())))  # type: ignore[arg-type]
                    await in_flight.acquire()
                    task = asyncio.create_task(self._one_feed(http, ledger, user, n, in_flight))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    n += 1
                offered_until = _now_ms()
                await asyncio.gather(*tasks)
                poller.cancel()
                await producer.flush()
        finally:  # also when cancelled (the demo's Ctrl-C): the result so far is settled
            ledger.result.seconds = time.monotonic() - started
            ledger.finish(_now_ms() if offered_until is None else offered_until)
        return ledger.result

    async def _poll_ranking(self, ledger: Ledger) -> None:
        """Watch the top of the workers' global ranking for discoveries (a failed poll is retried next time)."""
        from redis.exceptions import RedisError

        from recstream.store.connection import connect

        key = Keys.of(self.settings).rank()
        redis = connect(self.settings)
        try:
            while True:
                try:
                    top = await redis.zrevrange(key, 0, POPULAR_TOP - 1)
                    ledger.ranked(self.world.item_index(i.decode()) for i in top)
                except (RedisError, OSError):
                    pass
                await asyncio.sleep(RANKING_POLL_S)
        finally:
            await redis.aclose()

    async def _publish_items(self, producer: EventProducer, now_ms: int) -> None:
        """Every item the world created up to now_ms that is not on the items topic yet."""
        upto = int(self.world.available_items(now_ms))
        for item in range(self.announced_items, upto):
            message = self.world.item_message(item, max(int(self.world.created_ms[item]), now_ms - 1))
            await producer.send_item(_valid(message))  # type: ignore[arg-type]
        if upto > self.announced_items:
            self.ledger.result.items_published += upto - self.announced_items  # type: ignore[union-attr]
            self.announced_items = upto
            await producer.flush()

    async def _one_feed(self, http: Any, ledger: Ledger, user: int, n: int, in_flight: asyncio.Semaphore) -> None:
        """Fetch, score, click, report one feed; a failure at any step (the feed, or the POST of its events) is
        counted once, as failed, never raised, and the feed is then not counted as one: ``feeds`` and ``failed``
        split the requests, as bench/policies.py's validity check reads them (feeds + failed requests, failed +
        degraded failures)."""
        import aiohttp

        seed = self.config.seed * 1_000_003 + n
        user_id = self.world.user_ids[user]
        try:
            url, asked_ms = f"{self.reader_url}/v1/feed/{user_id}", _now_ms()
            async with http.get(url, params={"limit": self.config.limit, "seed": seed}) as response:
                response.raise_for_status()
                page = orjson.loads(await response.read())
            now_ms = _now_ms()
            shown = [
                Shown(self.world.item_index(it["item_id"]), it["source"], it.get("variant", page.get("variant")))
                for it in page["items"]
            ]
            shown = [s for s in shown if s.item >= 0]
            rng = np.random.default_rng([self.config.seed, n, CLICK_STREAM])
            scored = ledger.score(user, shown, now_ms, rng, page.get("variant"), asked_ms)
            prefix = event_prefix(self.config.seed, ledger.start_ms, n)
            events = _events(user_id, self.world, shown, scored.clicks, now_ms, prefix, page.get("session"))
            if events:
                await post_events(http, self.reader_url, orjson.dumps(events))
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, KeyError):
            ledger.result.failed += 1
        else:
            ledger.count(scored)
            ledger.result.events_posted += len(events)
            ledger.result.degraded += bool(page.get("degraded"))
            ledger.result.ranked += bool(page.get("ranked"))
        finally:
            in_flight.release()


def event_prefix(seed: int, run_start_ms: int, n: int) -> str:
    """The event ids of a run's feed ``n`` start with this: with the run's start in them, a second run of one seed
    (the demo's is always 7) within the workers' de-duplication window is not dropped as a resend of the first's.

    >>> event_prefix(7, 1_700_000_000_000, 12)
    'sim7-1700000000000-12-'
    """
    return f"sim{seed}-{run_start_ms}-{n}-"


async def post_events(http: Any, reader_url: str, body: bytes) -> None:
    """POST a feed's events; after a 503 (Kafka unreachable) or a 429 (the click limit) the same body again, as the
    README tells a client (its event ids make a resend count once), up to :data:`POST_ATTEMPTS` times, waiting what
    the answer's ``Retry-After`` says (at most :data:`RESEND_WAIT_MAX_S`). Raises ``aiohttp.ClientResponseError``
    when the last attempt is refused too."""
    for attempt in range(1, POST_ATTEMPTS + 1):
        async with http.post(f"{reader_url}/v1/events", data=body, headers={"content-type": "application/json"}) as r:
            if r.status not in RESEND or attempt == POST_ATTEMPTS:
                r.raise_for_status()
                return
            wait = _seconds(r.headers.get("Retry-After"), RESEND_WAIT_S * attempt)
        await asyncio.sleep(min(wait, RESEND_WAIT_MAX_S))


def _seconds(header: str | None, default: float) -> float:
    """A ``Retry-After`` of seconds, else ``default`` (absent, an HTTP date, or not a number at all)."""
    try:
        return max(0.0, float(header)) if header is not None else default
    except ValueError:
        return default


def _events(
    user_id: str,
    world: World,
    shown: Sequence[Shown],
    clicks: Sequence[bool],
    now_ms: int,
    prefix: str,
    session: str | None = None,
) -> list[dict[str, Any]]:
    """A view per shown item, a click after each clicked one, with its source and the page's scroll session
    (when it has one) as context and the feed's A/B variant (when it named one) as the event's ``variant``."""
    page = {} if session is None else {"feed": session}
    events = []
    for k, (s, clicked) in enumerate(zip(shown, clicks, strict=True)):
        for kind in ("view", "click") if clicked else ("view",):
            event = {"type": kind, "user_id": user_id, "item_id": world.item_ids[s.item], "ts": now_ms,
                     "event_id": f"{prefix}{k}{kind[0]}", "context": {"source": s.source, **page}}  # fmt: skip
            if s.variant is not None:
                event["variant"] = s.variant
            events.append(event)
    return events


def _valid(message: dict[str, Any]) -> object:
    """The world's item or user dict as the contract's model (its ``kind`` names the topic)."""
    value = validate({k: v for k, v in message.items() if k != "kind"}, message["kind"], 2**53)
    if isinstance(value, Rejected):
        raise ValueError(f"the world made an invalid {message['kind']}: {value.reason}")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)
