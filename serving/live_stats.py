"""Rates over the last few seconds for the JSON stats route (a browser page reads it, not Prometheus).

Cumulative totals are sampled at most once a second; a rate is the difference between now and
the oldest sample in the window divided by the elapsed time, so no timer task is needed.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

WINDOW_S = 10


class LiveStats:
    """Counters with per-second rates over a sliding window, plus recent feed latencies.

    >>> stats = LiveStats()
    >>> stats.add("feeds", 3, now=0.0); stats.add("feeds", 2, now=2.0)
    >>> stats.rate("feeds", now=2.0)
    2.5
    """

    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.totals: Counter[str] = Counter()
        self._samples: deque[tuple[float, Counter[str]]] = deque(maxlen=window_s + 1)
        self._latencies: deque[float] = deque(maxlen=4096)

    def add(self, name: str, n: int = 1, now: float | None = None) -> None:
        self._sample(time.monotonic() if now is None else now)
        self.totals[name] += n

    def latency(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def rate(self, name: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._sample(now)
        then, old = self._samples[0]
        return (self.totals[name] - old[name]) / max(now - then, 1.0)

    def latency_ms(self, q: float) -> float | None:
        """The q-quantile (0..1) of the recent feed latencies, in ms."""
        return float(np.quantile(np.fromiter(self._latencies, float), q) * 1000) if self._latencies else None

    def _sample(self, now: float) -> None:
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.totals.copy()))
