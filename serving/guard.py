"""The degraded-mode decision: whether a request tries Redis at all, and what a failed round trip becomes.

Every Redis round trip of a request runs under ``reader_redis_timeout_s`` (serving/redis_client.py).
A timeout or error raises RedisUnavailable, which the service answers from the in-process popular
list with ``degraded: true`` (never a 5xx). After TRIP_AFTER failures in a row the next requests
skip Redis for COOLDOWN_S, so a dead Redis costs no connection attempt per request while one slow
reply degrades only its own request; the first request after the cooldown tries again, so the
reader recovers by itself.

"In a row" means one after another in time: a failure counts only if its round trip started after the last
counted one failed. Requests in flight together when Redis stalls (a long worker script holds every reply behind
it) are one failure, not many; counted one each, a single 100 ms stall at a few hundred feeds/s tripped the
guard and degraded every feed of the next COOLDOWN_S too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from recstream.serving.errors import RedisUnavailable
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeout

T = TypeVar("T")

COOLDOWN_S = 0.25
TRIP_AFTER = 3


class RedisGuard:
    """Turns a failed round trip into RedisUnavailable; after TRIP_AFTER in a row, skips Redis for COOLDOWN_S."""

    def __init__(self) -> None:
        self._failures = 0
        self._skip_until = 0.0
        self._last_failure = 0.0  # when the last counted failure came back (time.monotonic)

    @property
    def ok(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def __call__(self, round_trip: Callable[[], Awaitable[T]]) -> T:
        if not self.ok:
            raise RedisUnavailable("skipped")
        started = time.monotonic()
        try:
            result = await round_trip()
        except RedisTimeout as exc:  # the round trip's deadline (serving/redis_client.py)
            self._failed(started)
            raise RedisUnavailable("timeout") from exc
        except (RedisError, RedisClusterException, OSError) as exc:  # the cluster's: no node for a slot (a failover)
            self._failed(started)
            raise RedisUnavailable("error") from exc
        self._failures = 0
        return result

    def _failed(self, started: float) -> None:
        """Count a failure whose round trip began at ``started``, unless it overlapped the last counted one."""
        if started < self._last_failure:
            return
        self._last_failure = time.monotonic()
        self._failures += 1
        if self._failures >= TRIP_AFTER:
            self._skip_until = self._last_failure + COOLDOWN_S
