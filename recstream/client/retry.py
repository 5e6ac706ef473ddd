"""When the client tries a request again, how long it waits, and the error it raises when it stops.

Retried: connection failures, timeouts, and the answers that mean "not now" (429, 502, 503, 504); a
``Retry-After`` is honoured. Never retried: any other 4xx (the request itself is wrong) or a 500 (a
bug the same request would hit again). A POST of events is safe to repeat because every event carries
an ``event_id`` fixed before the first attempt (routes.py): the workers apply an id once when its copies arrive
within their de-duplication window (RECSTREAM_DEDUP_WINDOW_S, 300 s; see :data:`MAX_RETRIES`), and
``recstream train`` counts it once.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
MAX_RETRIES = 10
"""The most retries of a request. Its waits add up to at most ``retries`` × ``max_s`` (100 s at the default 10 s
cap), so that, its attempts taking seconds, its copies arrive within the workers' 300 s de-duplication window."""
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport failures worth another attempt: connect/read/write/pool timeouts, refused or reset connections, and
a keep-alive connection the server closed without answering."""


class RecstreamError(Exception):
    """A request the reader refused or that did not get through: ``status`` (None: no answer) and ``detail``.

    ``detail`` is the reader's problem detail: a message, or for a 422 the list of bad fields and why.
    """

    def __init__(self, status: int | None, detail: object, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status or 'no answer'}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, failure: httpx.Response | Exception) -> RecstreamError:
        if isinstance(failure, Exception):
            return cls(None, f"{type(failure).__name__}: {failure}")
        try:
            detail = failure.json()["detail"]
        except (ValueError, TypeError, KeyError):
            detail = failure.text[:500]
        return cls(failure.status_code, detail, retry_after_s(failure.headers.get("retry-after")))


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: before retry ``k`` (from 0), a uniform draw in
    ``[0, min(max_s, base_s·2^k)]``, so clients that failed together do not come back together.

    A ``Retry-After`` is a floor on the wait; one longer than ``max_s`` ends the retries at once (the
    caller learns it from ``RecstreamError.retry_after_s`` instead of a client blocked for that long).
    """

    retries: int = 3
    base_s: float = 0.2
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ValueError(f"retries must be from 0 to {MAX_RETRIES}, got {self.retries}")
        if not (0 <= self.base_s < math.inf and 0 <= self.max_s < math.inf):
            raise ValueError(f"back-off seconds must be finite and >= 0, got {self}")

    def wait(self, attempt: int, failure: httpx.Response | Exception) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0: the first); raises the error when not to retry.

        >>> backoff = Backoff(retries=2, base_s=1.0, rng=random.Random(1))
        >>> 0 <= backoff.wait(1, httpx.Response(503)) <= 2.0
        True
        >>> backoff.wait(0, httpx.Response(429, headers={"Retry-After": "3"}))
        3.0
        >>> backoff.wait(0, httpx.Response(404, json={"detail": "no such item"}))
        Traceback (most recent call last):
        ...
        recstream.client.retry.RecstreamError: 404: no such item
        """
        error = RecstreamError.of(failure)
        if attempt >= self.retries or not retried(failure):
            raise error from failure if isinstance(failure, Exception) else None
        # attempt < retries <= MAX_RETRIES, so 2**attempt converts to a float (past 2**1023 it raised OverflowError);
        # a huge base_s makes inf, which max_s caps
        delay = self.rng.uniform(0.0, min(self.max_s, self.base_s * 2**attempt))
        if error.retry_after_s is None:
            return delay
        if error.retry_after_s > self.max_s:
            raise error
        return max(delay, error.retry_after_s)


def retried(failure: httpx.Response | Exception) -> bool:
    if isinstance(failure, Exception):
        return isinstance(failure, TRANSIENT)
    return failure.status_code in RETRIED_STATUSES


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None if absent or unreadable.

    >>> retry_after_s("2")
    2.0
    >>> retry_after_s("Wed, 21 Oct 2026 07:28:00 GMT", now=datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC))
    30.0
    >>> retry_after_s("soon") is None, retry_after_s("²") is None
    (True, True)
    """
    if value is None:
        return None
    if (seconds := value.strip()).isascii() and seconds.isdigit():  # not "²", which isdigit() takes
        return float(seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": a date in UTC from a sender that does not say so
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
