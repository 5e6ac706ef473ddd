"""How long a worker's retry loop waits before its next attempt: doubling waits, capped.

Why one class: every loop that must outlast an outage (a batch, a gap check, the fold-in log, the committed
offsets) waits the same way, first_s, 2·first_s, … up to max_s, and starts over once an attempt succeeds;
written out in each loop, the copies drifted (one capped at 5 s, the others at 1 s). No jitter, unlike the HTTP
client's waits (recstream/client/retry.py), which spread many clients that failed together: a worker is one process.
"""

from __future__ import annotations

import asyncio

FIRST_S = 0.1
MAX_S = 1.0
"""The longest wait: a worker back from an outage applies again within a second of its end."""


class RetryDelays:
    """Waits ``first_s · 2^k`` before retry k + 1, at most ``max_s``; :meth:`reset` after a success.

    >>> backoff = RetryDelays(first_s=0.1, max_s=0.3)
    >>> [backoff.advance() for _ in range(4)]
    [0.1, 0.2, 0.3, 0.3]
    >>> backoff.reset(); backoff.delay
    0.1
    """

    __slots__ = ("delay", "first_s", "max_s")

    def __init__(self, first_s: float = FIRST_S, max_s: float = MAX_S) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"back-off needs 0 < first_s <= max_s, got {first_s} and {max_s}")
        self.first_s, self.max_s = first_s, max_s
        self.delay = first_s
        """The wait before the next attempt, for the log line that announces it."""

    def advance(self) -> float:
        """The wait before the next attempt; the one after it is twice as long, up to ``max_s``."""
        delay, self.delay = self.delay, min(2 * self.delay, self.max_s)
        return delay

    async def wait(self) -> None:
        """Sleep the wait before the next attempt (:attr:`delay`, as the log line said), and double the next."""
        await asyncio.sleep(self.advance())

    def reset(self) -> None:
        """After a success: the next failure waits ``first_s`` again."""
        self.delay = self.first_s
