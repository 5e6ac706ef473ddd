"""The click-fraud guard of POST /v1/events: clicks per client, and per user per item, within a window.

A click here is an event of a type that counts as a click for CTR or has the positive role (a like, a purchase, …
of the configured types, recstream/contracts/feedback.py): each moves what every user is served, the popular lists
(CTR clicks) and the shared online ranker, which learns every positive event that names its page as a positive row.

Why: with writes open to whoever holds the key (a browser app, say), one client could report
hundreds of clicks on one item and push it up every popular list. The policy (README.md,
"Security and limits"):

* a client (its address as the reader sees it) that would pass ``clicks_per_client`` clicks in a
  window gets 429 with ``Retry-After`` for the whole request, and nothing of it is published: a
  client that reports more clicks than any person makes is broken or abusive, and a well-behaved
  one slows down and retries; a request whose new clicks alone pass the limit gets 413 instead (no
  wait would admit it, and a client would retry a 429 for ever): it must be split;
* a user's clicks on one item past ``clicks_per_user_item`` in a window are dropped, and the rest
  of the request goes out, views included: repeated clicks are what click fraud looks like, and a
  client that reports them is not wrong to;
* a click is counted once per user and event id (what the workers apply once, within their
  ``dedup_window_s``; when that is shorter than the click window, every copy is counted): a request
  resent after a 503 (README) spends neither limit again, and its clicks admitted before are admitted
  again.

Both are counted in ``recstream_reader_clicks_limited_total{limit}``. The counts live in Redis,
so every reader replica sees the same ones: one hash per window, ``clicks:<window number>``,
expiring after two windows, so its size is bounded by the clicks of one window. One script call
per request that holds a click; none for views only. Without Redis the clicks go through (counted
as a degraded ``/v1/events`` answer): refusing real events for want of a counter would lose them.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from recstream.serving import metrics
from recstream.serving.errors import RedisUnavailable, TooManyClicks, TooManyClicksInOneRequest
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
    -- KEYS[1]: the window's counters; ARGV: TTL (s), the client's field, the client limit, the (user, item) limit
    -- (0: none), whether a click is counted once per id ('1') or every time ('0'), then each click of the request
    -- in order: its (user, item) field and its user:event_id (the key the workers de-duplicate by). Returns {-2}
    -- for a request whose new clicks alone pass the client limit, {-1} for a client over its limit (nothing counted
    -- either way), else 1 (admitted) or 0 (dropped) per click. Counted once, a
    -- click this window admitted already (a request resent after a 503; a copy in the same request) is admitted
    -- again without spending the limits: the workers apply it once.
    local client_limit, pair_limit, once = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
    local decided, clicks = {}, 0  -- decided[id]: 1 admitted (before, or by an earlier copy), 0 dropped, false new
    for k = 6, #ARGV, 2 do
      local id = 'e:' .. ARGV[k + 1]
      if not once then
        clicks = clicks + 1
      elseif decided[id] == nil then
        decided[id] = redis.call('HEXISTS', KEYS[1], id) == 1 and 1 or false
        if not decided[id] then clicks = clicks + 1 end
      end
    end
    if client_limit > 0 and clicks > client_limit then return {-2} end  -- alone over the limit: no window admits it
    local client = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
    if client_limit > 0 and client + clicks > client_limit then return {-1} end
    redis.call('HINCRBY', KEYS[1], ARGV[2], clicks)
    local admitted = {}
    for k = 6, #ARGV, 2 do
      local id = 'e:' .. ARGV[k + 1]
      local ok = once and decided[id] or nil  -- 0 is true in Lua: a dropped copy stays dropped
      if ok == nil then  -- a click to decide: the pair limit does
        if pair_limit > 0 and tonumber(redis.call('HGET', KEYS[1], ARGV[k]) or '0') >= pair_limit then
          ok = 0
        else
          ok = 1
          if pair_limit > 0 then redis.call('HINCRBY', KEYS[1], ARGV[k], 1) end
          if once then redis.call('HSET', KEYS[1], id, 1) end
        end
        if once then decided[id] = ok end
      end
      admitted[#admitted + 1] = ok
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
        dedup_window_s: int = 0,
    ) -> None:
        """``dedup_window_s``: the workers' (RECSTREAM_DEDUP_WINDOW_S). A click is counted once per id only when that
        is longer than the click window: the two copies of an id a window admits may be a whole window apart, and
        the workers measure the gap between their Kafka arrivals, a little later; with a window as long or shorter
        (0 turns it off) the workers may apply a resent id again, and each copy is counted."""
        self.once = dedup_window_s > settings.click_window_s
        self.redis = redis
        self.click_types = clicks  # the types limited: CTR clicks and positives (what moves every user's feed)
        self.keys = keys
        self.settings = settings
        self.guard = guard
        self._limited = {name: metrics.CLICKS_LIMITED.labels(name) for name in metrics.CLICK_LIMITS}

    async def admit(self, client: str, events: list[Event]) -> list[Event]:
        """Raises TooManyClicks when the client is over its limit; drops clicks past the per-(user, item) one."""
        r = self.settings
        click_types = self.click_types
        clicks = [e for e in events if e.type in click_types]
        if not clicks or not (r.clicks_per_client or r.clicks_per_user_item):
            return events
        now = time.time()
        window = int(now // r.click_window_s)
        args: list[str | int] = [
            2 * r.click_window_s, f"c:{client}", r.clicks_per_client, r.clicks_per_user_item, int(self.once)
        ]  # fmt: skip
        for e in clicks:
            assert e.event_id is not None, "events reach the guard with their ids (serving/publish.with_event_ids)"
            args += [f"u:{e.user_id}:{e.item_id}", f"{e.user_id}:{e.event_id}"]  # ids hold no ':': one pair each
        try:
            admitted = await self.guard(lambda: self.redis.run(self.COUNT, [self.keys(f"clicks:{window}")], args))
        except RedisUnavailable as exc:
            metrics.DEGRADED.labels(EVENTS_ROUTE, exc.cause).inc()
            return events
        if admitted == [-2]:
            self._limited["client"].inc(len(clicks))
            raise TooManyClicksInOneRequest(
                f"{len(clicks)} clicks in one request: more than the {r.clicks_per_client} a client may report in "
                f"{r.click_window_s} s, so no wait admits them; send them in smaller requests"
            )
        if admitted == [-1]:
            self._limited["client"].inc(len(clicks))
            raise TooManyClicks(
                f"more than {r.clicks_per_client} clicks in {r.click_window_s} s", (window + 1) * r.click_window_s - now
            )
        dropped = {id(e) for e, ok in zip(clicks, admitted, strict=True) if not ok}
        self._limited["user_item"].inc(len(dropped))
        return [e for e in events if id(e) not in dropped]
