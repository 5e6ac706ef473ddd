"""The click-fraud guard of POST /v1/events: clicks per client, and per user per item, within a window.

A click here is an event of a type that counts as a click for CTR (recstream/contracts/feedback.py): those are
what move the popular lists. Other positive types (a like, a purchase) change only their user's own vector.

Why: with writes open to whoever holds the key (a browser app, say), one client could report
hundreds of clicks on one item and push it up every popular list. The policy (README.md,
"Security and limits"):

* a client (its address as the reader sees it) that would pass ``clicks_per_client`` clicks in a
  window gets 429 with ``Retry-After`` for the whole request, and nothing of it is published: a
  client that reports more clicks than any person makes is broken or abusive, and a well-behaved
  one slows down and retries;
* a user's clicks on one item past ``clicks_per_user_item`` in a window are dropped, and the rest
  of the request goes out, views included: repeated clicks are what click fraud looks like, and a
  client that reports them is not wrong to.

Both are counted in ``recstream_reader_clicks_limited_total{limit}``. The counts live in Redis,
so every reader replica sees the same ones: one hash per window, ``clicks:<window number>``,
expiring after two windows, so its size is bounded by the clicks of one window. One script call
per request that holds a click; none for views only. Without Redis the clicks go through (counted
as a degraded ``/v1/events`` answer): refusing real events for want of a counter would lose them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection

from recstream.serving import metrics
from recstream.serving.errors import RedisUnavailable, TooManyClicks
from recstream.serving.guard import RedisGuard
from recstream.serving.redis_client import ClusterRedisClient, RedisClient, Script

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.contracts.keys import Keys
from recstream.contracts.settings import ReaderSettings

EVENTS_ROUTE = "/v1/events"


class ClickGuard:
    """``await guard.admit(client, events)``: the events minus the clicks past the per-(user, item) limit."""

    COUNT = Script("""
    -- KEYS[1]: the window's counters; ARGV: TTL (s), the client's field, the client limit, the (user, item)
    -- limit (0: none), then each (user, item) field and its clicks in this request. Returns {-1} for a
    -- client over its limit (nothing counted), else the clicks admitted per (user, item).
    local client_limit, pair_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
    local clicks = 0
    for k = 6, #ARGV, 2 do clicks = clicks + tonumber(ARGV[k]) end
    local client = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
    if client_limit > 0 and client + clicks > client_limit then return {-1} end
    redis.call('HINCRBY', KEYS[1], ARGV[2], clicks)
    local admitted = {}
    for k = 5, #ARGV, 2 do
      local n = tonumber(ARGV[k + 1])
      if pair_limit > 0 then
        n = math.max(0, math.min(n, pair_limit - tonumber(redis.call('HGET', KEYS[1], ARGV[k]) or '0')))
        if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[k], n) end
      end
      admitted[#admitted + 1] = n
    end
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    return admitted
    """)

    def __init__(
        self,
        redis: RedisClient | ClusterRedisClient,
        keys: Keys,
        settings: ReaderSettings,
        guard: RedisGuard,
        clicks: Collection[str] = DEFAULT_FEEDBACK.clicks,
    ) -> None:
        self.redis = redis
        self.click_types = clicks  # the types that count as clicks for CTR: what moves popular lists
        self.keys = keys
        self.settings = settings
        self.guard = guard
        self._limited = {name: metrics.CLICKS_LIMITED.labels(name) for name in metrics.CLICK_LIMITS}

    async def admit(self, client: str, events: list[Event]) -> list[Event]:
        """Raises TooManyClicks when the client is over its limit; drops clicks past the per-(user, item) one."""
        r = self.settings
        click_types = self.click_types
        clicks = Counter((e.user_id, e.item_id) for e in events if e.type in click_types)
        if not clicks or not (r.clicks_per_client or r.clicks_per_user_item):
            return events
        now = time.time()
        window = int(now // r.click_window_s)
        args: list[str | int] = [2 * r.click_window_s, f"c:{client}", r.clicks_per_client, r.clicks_per_user_item]
        for (user, item), n in clicks.items():
            args += [f"u:{user}:{item}", n]  # ids hold no ':', so a field names one pair
        try:
            admitted = await self.guard(lambda: self.redis.run(self.COUNT, [self.keys(f"clicks:{window}")], args))
        except RedisUnavailable as exc:
            metrics.DEGRADED.labels(EVENTS_ROUTE, exc.cause).inc()
            return events
        if admitted == [-1]:
            self._limited["client"].inc(clicks.total())
            raise TooManyClicks(
                f"more than {r.clicks_per_client} clicks in {r.click_window_s} s", (window + 1) * r.click_window_s - now
            )
        budget = dict(zip(clicks, admitted, strict=True))
        kept = []
        for event in events:
            if event.type in click_types:
                pair = (event.user_id, event.item_id)
                if budget[pair] == 0:
                    continue
                budget[pair] -= 1
            kept.append(event)
        self._limited["user_item"].inc(len(events) - len(kept))
        return kept
