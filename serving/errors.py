"""What the reader's service raises, and the HTTP answer each one becomes (serving/app.py maps them)."""

from __future__ import annotations


class RedisUnavailable(Exception):
    """A round trip failed or was skipped (serving/guard.py); ``cause`` is a metric label: timeout, error or skipped.

    Reads answer degraded (200 with ``degraded: true``) where they can; reading preferences answers 503.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class NotFound(LookupError):
    """404: nobody knows the item."""


class SessionExpired(LookupError):
    """410: the cursor names no live scroll session (it expired or was never issued)."""


class KafkaUnavailable(Exception):
    """503: the broker did not acknowledge a write in time; the write is refused, the reader stays up."""


class EventsRejected(ValueError):
    """422: the body's events fail the contract (all or nothing); ``reasons`` name the first ten."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class TooManyClicks(Exception):
    """429: the client reported more clicks than its limit allows in the window (serving/click_guard.py)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyClicksInOneRequest(ValueError):
    """413: one request holds more new clicks than the client's limit allows in a whole window, so no wait admits it
    (a 429 would be retried for ever); the client must split it."""
