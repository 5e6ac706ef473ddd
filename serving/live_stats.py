"""Rates over the last few seconds for the JSON stats route (a browser page reads it, not Prometheus).

Two kinds of input. Counts the reader makes itself (``add``) are cumulative totals sampled at most
once a second; a rate is the difference between now and the oldest sample in the window divided by
the elapsed time, so no timer task is needed. Readings taken elsewhere (``read``: the workers'
totals and event clock in Redis, read when the route is polled) are kept as timestamped values in
the window: a cumulative reading gives a rate or a ratio of increases, a gauge gives quantiles.
The reader records its feeds and events through ``feed`` / ``events``, the workers' figures through
``read_workers``, and ``figures`` is the route's body.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping

import numpy as np
from recstream.serving.blend import SOURCES

WINDOW_S = 10


class LiveStats:
    """Counters with per-second rates over a sliding window, recent feed latencies, and outside readings.

    >>> stats = LiveStats()
    >>> stats.add("feeds", 3, now=0.0); stats.add("feeds", 2, now=2.0)
    >>> stats.rate("feeds", now=2.0)
    2.5
    >>> stats.read({"views": 100, "clicks": 4}, now=0.0); stats.read({"views": 150, "clicks": 9}, now=5.0)
    >>> stats.reading_rate("views", now=5.0), stats.reading_ratio("clicks", "views", now=5.0)
    (10.0, 0.1)
    """

    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self.totals: Counter[str] = Counter()
        self._samples: deque[tuple[float, Counter[str]]] = deque(maxlen=window_s + 1)
        self._latencies: deque[float] = deque(maxlen=4096)
        self._readings: dict[str, deque[tuple[float, float]]] = {}

    def add(self, name: str, n: int = 1, now: float | None = None) -> None:
        self._sample(time.monotonic() if now is None else now)
        self.totals[name] += n

    def latency(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def feed(self, served: Mapping[str, int], degraded: bool, seconds: float) -> None:
        """A feed answered: items per source, whether degraded, how long it took."""
        for source, n in served.items():
            self.add(f"served:{source}", n)
        self.add("feeds")
        if degraded:
            self.add("degraded")
        self.latency(seconds)

    def events(self, published: Iterable[tuple[str, str]]) -> None:
        """Events published, as (kind, source label) each: ``view`` or ``click`` for a type counted in CTR (what the
        CTR panels divide), else the type's own name."""
        published = list(published)
        for kind, label in published:
            self.add(f"{kind}:{label}")
        self.add("events", len(published))
        self.add("clicks", sum(kind == "click" for kind, _ in published))

    def read_workers(self, views: int, clicks: int, clock: int | None, now_ms: float) -> None:
        """The workers' applied totals and event clock (the newest applied event's time) from Redis.

        Freshness (event time → now) is read only when events were applied since the last reading:
        an idle stream has no newest event whose age would mean anything.
        """
        readings = {"applied:views": views, "applied:clicks": clicks, "applied": views + clicks}
        previous = self.latest("applied")
        if clock is not None and previous is not None and readings["applied"] > previous:
            readings["freshness_ms"] = max(now_ms - clock, 0.0)
        self.read(readings)

    def figures(self, pool_items: int, model_version: str | None, redis: bool) -> dict:
        """The body of GET /v1/stats: the reader's own figures, the workers', and the three given."""
        feeds = self.rate("feeds")
        totals = self.totals
        ctr = {}
        for source in SOURCES:
            views, clicks = totals[f"view:{source}"], totals[f"click:{source}"]
            ctr[source] = clicks / views if views else None
        return {
            "feeds_per_s": feeds,
            "events_per_s": self.rate("events"),
            "clicks_per_s": self.rate("clicks"),
            "degraded_share": self.rate("degraded") / feeds if feeds else 0.0,
            "feed_p50_ms": self.latency_ms(0.5),
            "feed_p99_ms": self.latency_ms(0.99),
            "served_by_source": {s: totals[f"served:{s}"] for s in SOURCES},
            "ctr_by_source": ctr,
            "pool_items": pool_items,
            "model_version": model_version,
            "redis": redis,
            "applied_events_per_s": self.reading_rate("applied"),
            "online_ctr": self.reading_ratio("applied:clicks", "applied:views"),
            "freshness_p99_ms": self.reading_quantile("freshness_ms", 0.99),
        }

    def rate(self, name: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._sample(now)
        then, old = self._samples[0]
        return (self.totals[name] - old[name]) / max(now - then, 1.0)

    def latency_ms(self, q: float) -> float | None:
        """The q-quantile (0..1) of the recent feed latencies, in ms."""
        return float(np.quantile(np.fromiter(self._latencies, float), q) * 1000) if self._latencies else None

    def read(self, values: dict[str, float], now: float | None = None) -> None:
        """Record readings taken now; those older than the window are dropped."""
        now = time.monotonic() if now is None else now
        for name, value in values.items():
            series = self._readings.setdefault(name, deque())
            series.append((now, value))
            while now - series[0][0] > self.window_s:
                series.popleft()

    def latest(self, name: str) -> float | None:
        """The last reading of ``name``, however old."""
        series = self._readings.get(name)
        return series[-1][1] if series else None

    def reading_rate(self, name: str, now: float | None = None) -> float | None:
        """Increase per second of a cumulative reading over the window; None before two readings."""
        span = self._span(name, now)
        return None if span is None else span[1] / span[0]

    def reading_ratio(self, numerator: str, denominator: str, now: float | None = None) -> float | None:
        """Increase of one cumulative reading over the other's in the window (e.g. clicks / views)."""
        top, bottom = self._span(numerator, now), self._span(denominator, now)
        return None if top is None or bottom is None or bottom[1] <= 0 else top[1] / bottom[1]

    def reading_quantile(self, name: str, q: float, now: float | None = None) -> float | None:
        """The q-quantile (0..1) of a gauge's readings in the window."""
        values = [v for _, v in self._recent(name, now)]
        return float(np.quantile(values, q)) if values else None

    def _recent(self, name: str, now: float | None) -> list[tuple[float, float]]:
        now = time.monotonic() if now is None else now
        return [(t, v) for t, v in self._readings.get(name, ()) if now - t <= self.window_s]

    def _span(self, name: str, now: float | None) -> tuple[float, float] | None:
        """(seconds, increase) between the oldest and newest readings in the window."""
        recent = self._recent(name, now)
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return None
        return recent[-1][0] - recent[0][0], recent[-1][1] - recent[0][1]

    def _sample(self, now: float) -> None:
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.totals.copy()))
