"""Prometheus metrics of the reader (all named ``recstream_reader_*``) and the ASGI middleware that times requests.

Route labels are the route *templates* (``/v1/feed/{user_id}``), never raw paths, so a scan of
random ids cannot blow up the label cardinality. Names are what the dashboards and rules in
monitoring/ query; rename nothing without changing them in the same commit (tests/monitoring
runs every panel's and rule's query against a real Prometheus scraping a real reader).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("recstream_reader_requests_total", "HTTP requests by route template and status", ["route", "status"])
LATENCY = Histogram(
    "recstream_reader_request_seconds",
    "HTTP request latency by route template",
    ["route"],
    buckets=(0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ITEMS_SERVED = Counter("recstream_reader_items_served_total", "Feed items served, by source", ["source"])
FEEDS = Counter("recstream_reader_feeds_total", "Feed pages served, by kind of user (warm, cold, degraded)", ["user"])
FEED_KINDS = ("warm", "cold", "degraded")
FEEDS_BY_MODE = Counter(
    "recstream_reader_feeds_by_mode_total",
    "Feed pages served, by how they were made: ranked, the fixed blend (ranker cold, stale or off), degraded",
    ["mode"],
)
RANKER_WEIGHTS_AGE = Gauge(
    "recstream_reader_ranker_weights_age_seconds",
    "Seconds since the ranker weights this reader scores with last changed (their version, Σ rows learned)",
)
RANKER_ROWS = Gauge(
    "recstream_reader_ranker_rows", "Rows learned by the ranker weights this reader scores with: their version"
)
RANKER_WEIGHT = Gauge(
    "recstream_reader_ranker_weight",
    "The averaged ranker weights this reader holds, by feature (bias: the intercept), on each feature's raw scale; "
    "it scores with them while its pages are ranked (recstream_reader_feeds_by_mode_total)",
    ["feature"],
)
DEGRADED = Counter(
    "recstream_reader_degraded_responses_total",
    "Responses answered without Redis (from the in-process popular list), by route and cause",
    ["route", "cause"],
)
REDIS_ROUND_TRIPS = Histogram(
    "recstream_reader_redis_round_trips",
    "Redis round trips a request made (the feed path allows at most 2)",
    ["route"],
    buckets=(0, 1, 2, 3, 4),
)
EVENTS = Counter(
    "recstream_reader_events_published_total",
    "Events accepted by POST /v1/events and published to Kafka, by type (view or click for the feedback types counted "
    "in CTR, else the type's name) and served source (context.source)",
    ["type", "source"],
)
CLICKS_LIMITED = Counter(
    "recstream_reader_clicks_limited_total",
    "Clicks POST /v1/events refused by the click-fraud guard, by limit: client (the request got 429) or "
    "user_item (dropped, the rest of the request published)",
    ["limit"],
)
CLICK_LIMITS = ("client", "user_item")
"""The ``limit`` label of CLICKS_LIMITED (serving/click_guard.py)."""
VIEWS_LIMITED = Counter(
    "recstream_reader_views_limited_total",
    "Views (every event that is not a click) POST /v1/events dropped by the fraud guard, by limit: user_item (past "
    "the views of one user on one item a window allows; the rest of the request published)",
    ["limit"],
)
VIEW_LIMITS = ("user_item",)
"""The ``limit`` label of VIEWS_LIMITED. Views have no client limit: one address may be a server reporting a whole
site's views (tens of times its clicks), which no fixed number fits; a replay names one item again and again, which
the per-(user, item) limit stops."""
FEATURE_ROWS = Counter(
    "recstream_reader_feature_rows_total",
    "Ranking feature rows computed, by whether the item's categories and creation time were in the reader's cache "
    "(known) or not loaded yet (unknown: category affinity and the fresh flag read 0, as after a restart)",
    ["categories"],
)
FEATURE_ROWS_KNOWN, FEATURE_ROWS_UNKNOWN = FEATURE_ROWS.labels("known"), FEATURE_ROWS.labels("unknown")
POOL_ITEMS = Gauge("recstream_reader_pool_items", "Items in the reader's copy of the new-item pool")
SNAPSHOT_FAILURES = Counter(
    "recstream_reader_snapshot_reload_failures_total", "Background reloads of the shared lists that failed"
)
MODEL_INFO = Gauge("recstream_reader_model_info", "The model version in model:current (value 1)", ["version"])
MODEL_CREATED = Gauge(
    "recstream_reader_model_created_timestamp_seconds",
    "UTC creation time of the model in model:current, from its version id (0: no model, or an unparsable id)",
)
DISTINCT_SERVED = Gauge(
    "recstream_reader_distinct_items_served_1h", "Distinct items this reader served in feeds over the last hour"
)
DEGRADED_CAUSES = ("timeout", "error", "skipped")
"""The ``cause`` label of DEGRADED (serving.errors.RedisUnavailable)."""


def create_zero_series(feed_route: str, sources: Iterable[str], modes: Iterable[str]) -> None:
    """Create at 0 the labelled series that dashboards divide by and alerts watch.

    A labelled series is born at its first increment, and ``rate()`` cannot see that increment
    (there is no earlier sample): the first degraded feed would never alert, and a healthy reader
    would show "No data" where it should show 0.
    """
    for kind in FEED_KINDS:
        FEEDS.labels(kind)
    for mode in modes:
        FEEDS_BY_MODE.labels(mode)
    for cause in DEGRADED_CAUSES:
        DEGRADED.labels(feed_route, cause)
    for kind in ("view", "click"):
        for source in (*sources, "none", "other"):
            EVENTS.labels(kind, source)
    for limit in CLICK_LIMITS:
        CLICKS_LIMITED.labels(limit)
    for limit in VIEW_LIMITS:
        VIEWS_LIMITED.labels(limit)


def show_ranker_weights(named: Mapping[str, float] | None) -> None:
    """``recstream_reader_ranker_weight``: a series per weight while the reader holds weights, none while no
    partition has a state yet (zeros would read as a ranker that learned to weigh nothing)."""
    if named is None:
        RANKER_WEIGHT.clear()
        return
    for name, weight in named.items():
        RANKER_WEIGHT.labels(name).set(weight)


def version_created_at(version: str) -> float | None:
    """Epoch seconds (to the second) of a model version id ``YYYYMMDDTHHMMSSZ.ffffff-xxxxxx``
    (models.artifacts.version_id; ids written before 2026-12-05 lack the ``.ffffff``), None if not one.

    >>> version_created_at("20261123T142501Z.123456-0a1b2c"), version_created_at("20261123T142501Z-0a1b2c")
    (1795443901.0, 1795443901.0)
    >>> version_created_at("latest") is None
    True
    """
    try:
        return datetime.strptime(version[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class ModelVersion:
    """Mirrors ``model:current`` into MODEL_INFO and MODEL_CREATED, touching them only when it changes.

    Why the reader exports it: it reads ``model:current`` every ``pool_cache_s`` anyway, and the
    version id encodes when training finished, so "no successful train for N hours" is one PromQL
    comparison with ``time()`` (monitoring/rules/alerts.yml) without a metric in the trainer.
    """

    def __init__(self) -> None:
        self._version: str | None = None

    def observe(self, version: str | None) -> None:
        if version == self._version:
            return
        self._version = version
        MODEL_INFO.clear()
        if version is not None:
            MODEL_INFO.labels(version).set(1)
        MODEL_CREATED.set((version_created_at(version) if version else None) or 0)


class RecentItems:
    """The distinct items seen within a sliding window (catalogue coverage: items served in the last hour).

    Why in process: a distinct count cannot be derived from counters in PromQL, and a Redis
    HyperLogLog would add a write to the feed path, which has a budget of two round trips. An
    OrderedDict in last-seen order expires from its front in O(1) per item, and it holds at most
    the items served within the window (a subset of the catalogue). Per reader: with several
    replicas the dashboards take the largest, a lower bound of the union.

    >>> recent = RecentItems(window_s=60)
    >>> recent.add(["a", "b"], now=0.0); recent.add(["a"], now=30.0)
    >>> recent.count(now=59.0), recent.count(now=61.0), recent.count(now=91.0)
    (2, 1, 0)
    """

    def __init__(self, window_s: float = 3600.0) -> None:
        self.window_s = window_s
        self._last: OrderedDict[str, float] = OrderedDict()

    def add(self, items: Iterable[str], now: float) -> None:
        last = self._last
        for item in items:
            last[item] = now
            last.move_to_end(item)
        self._expire(now)

    def count(self, now: float | None = None) -> int:
        self._expire(time.monotonic() if now is None else now)
        return len(self._last)

    def _expire(self, now: float) -> None:
        last, horizon = self._last, now - self.window_s
        while last and next(iter(last.values())) < horizon:
            last.popitem(last=False)


RECENTLY_SERVED = RecentItems()
DISTINCT_SERVED.set_function(RECENTLY_SERVED.count)


class RequestMetrics:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): counts and times every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, int], tuple[Histogram, Counter]] = {}
        """(route template, status) → its latency and request series: ``labels()`` once, not per request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            children = self._children.get((name, status))
            if children is None:
                children = self._children[name, status] = (LATENCY.labels(name), REQUESTS.labels(name, str(status)))
            children[0].observe(time.perf_counter() - started)
            children[1].inc()
