"""The fraud guard of POST /v1/events: clicks per client, and every event per user per item, within a window.

A click here is an event of a type that counts as a click for CTR or has the positive role (a like, a purchase, …
of the configured types, recstream/contracts/feedback.py): each moves what every user is served, the popular lists
(CTR clicks) and the shared online ranker, which learns every positive event that names its page as a positive row.
A view here is every other event (an impression, a dislike): the ranker learns each that names its page as a
negative row, and a CTR view pulls its item's CTR down.

Why: with writes open to whoever holds the key (a browser app, say), one client could report
hundreds of clicks on one item and push it up every popular list, or replay the views of one served
item (fresh event ids each time, so the workers' de-duplication keeps them all) and push it down
every list and the ranker with it. The policy (README.md, "Security and limits"):

* a client (its address as the reader sees it) that would pass ``clicks_per_client`` clicks in a
  window gets 429 with ``Retry-After`` for the whole request, and nothing of it is published: a
  client that reports more clicks than any person makes is broken or abusive, and a well-behaved
  one slows down and retries; a request whose new clicks alone pass the limit gets 413 instead (no
  wait would admit it, and a client would retry a 429 for ever): it must be split;
* a user's clicks on one item past ``clicks_per_user_item`` in a window are dropped, and so are their
  views of one item past ``views_per_user_item``; the rest of the request goes out: repeats are what
  fraud looks like, and a client that reports them is not wrong to. A feed shows an item once per
  scroll session, and the worker's seen set keeps it off the next ones within about a second, so a
  person is shown one item once or twice in a window, a replay hundreds of times;
* an event is counted once per user and event id (what the workers apply once, within their
  ``dedup_window_s``; when that is shorter than the window, every copy is counted): a request
  resent after a 503 (README) spends no limit again, and its events admitted before are admitted
  again.

Counted in ``recstream_reader_clicks_limited_total{limit}`` and ``recstream_reader_views_limited_total{limit}``.
The counts live in Redis, so every reader replica sees the same ones: one hash per window,
``clicks:<window number>``, expiring after two windows, so its size is bounded by the events of one
window (an id field per event and a count per (user, item): ~150 bytes a view). One script call per
request and VIEWS_PER_CALL views, which reads and writes its fields by HMGET and HSET of a thousand.
Without Redis the events go through (counted as a degraded ``/v1/events`` answer): refusing real
events for want of a counter would lose them.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from functools import partial

from recstream.serving import metrics
from recstream.serving.errors import RedisUnavailable, TooManyClicks, TooManyClicksInOneRequest
from recstream.serving.guard import RedisGuard
from recstream.serving.redis_client import ClusterRedisClient, RedisClient, Script

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.contracts.keys import Keys
from recstream.contracts.settings import ReaderSettings

EVENTS_ROUTE = "/v1/events"
VIEWS_PER_CALL = 1_000
"""Views one script call decides at most: a request's clicks go in its first call with the first views (a client over
its click limit is refused before anything is counted), its other views in the next calls, in order. Views have no
client limit, so calls in turn decide them as one would. Why: a call blocks Redis for every feed, and a 10,000-view
call took 30-170 ms (2 loaded cores), past the 50 ms a round trip has: the events then went out unguarded."""


class ClickGuard:
    """``await guard.admit(client, events)``: the events minus the clicks and views past their (user, item) limits."""

    COUNT = Script("""
    -- KEYS[1]: the window's counters; ARGV: TTL (s), the client's field, the client limit, whether an event is counted
    -- once per id ('1') or every time ('0'), the (user, item) limits of clicks and of views (0: none), how many of
    -- the events are clicks (they come first), then each event of the request in order: its (user, item) field and
    -- e:<user:event_id> (the key the workers de-duplicate by). Returns {-2} for a request whose new clicks alone
    -- pass the client limit, {-1} for a client over its limit (nothing counted either way), else 1 (admitted) or 0
    -- (dropped) per event. Counted once, an event this window admitted already (a request resent after a 503; a copy
    -- in the same request) is admitted again without spending the limits: the workers apply it once.
    local client_limit, once, clicks = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[7])
    local limits, pair, id, n = {tonumber(ARGV[5]), tonumber(ARGV[6])}, {}, {}, (#ARGV - 7) / 2
    local function limit(k) return limits[k <= clicks and 1 or 2] end
    for k = 1, n do pair[k], id[k] = ARGV[6 + 2 * k], ARGV[7 + 2 * k] end
    local function read(fields)  -- field -> its count (0: absent), by HMGET of a thousand distinct fields at a time
      local distinct, counts = {}, {}
      for _, f in ipairs(fields) do if not counts[f] then counts[f] = 0; distinct[#distinct + 1] = f end end
      for first = 1, #distinct, 1000 do
        local last = math.min(first + 999, #distinct)
        local values = redis.call('HMGET', KEYS[1], unpack(distinct, first, last))
        for k = first, last do counts[distinct[k]] = tonumber(values[k - first + 1]) or 0 end
      end
      return counts
    end
    local function write(fields)  -- field -> value, by HSET of a thousand fields at a time
      local flat = {}
      for f, v in pairs(fields) do flat[#flat + 1] = f; flat[#flat + 1] = v end
      for first = 1, #flat, 2000 do redis.call('HSET', KEYS[1], unpack(flat, first, math.min(first + 1999, #flat))) end
    end
    local decided = {}  -- id -> 1 admitted (before, or by an earlier copy), 0 dropped (by an earlier copy)
    if once then for i, v in pairs(read(id)) do if v > 0 then decided[i] = 1 end end end
    local new, counted = 0, {}  -- the clicks the client limit counts: each copy, or each id not admitted before
    for k = 1, clicks do
      if not once or (decided[id[k]] == nil and not counted[id[k]]) then new = new + 1; counted[id[k]] = true end
    end
    if client_limit > 0 and new > client_limit then return {-2} end  -- alone over the limit: no window admits it
    local client = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
    if client_limit > 0 and new > 0 and client + new > client_limit then return {-1} end  -- views alone pass
    if new > 0 then redis.call('HINCRBY', KEYS[1], ARGV[2], new) end
    local limited = {}
    for k = 1, n do if limit(k) > 0 then limited[#limited + 1] = pair[k] end end
    local counts, changed, admitted = read(limited), {}, {}
    for k = 1, n do
      local ok = once and decided[id[k]] or nil
      if ok == nil then  -- an event to decide: its pair's limit does
        if limit(k) > 0 and counts[pair[k]] >= limit(k) then
          ok = 0
        else
          ok = 1
          if limit(k) > 0 then counts[pair[k]] = counts[pair[k]] + 1; changed[pair[k]] = counts[pair[k]] end
          if once then changed[id[k]] = 1 end
        end
        if once then decided[id[k]] = ok end
      end
      admitted[k] = ok
    end
    write(changed)
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
        """``clicks``: the types limited as clicks (CTR clicks and positives: what moves every user's feed); every
        other type is limited as a view. ``dedup_window_s``: the workers' (RECSTREAM_DEDUP_WINDOW_S). An event is
        counted once per id only when that is longer than the window: the two copies of an id a window admits may
        be a whole window apart, and the workers measure the gap between their Kafka arrivals, a little later; with
        a window as long or shorter (0 turns it off) the workers may apply a resent id again, and each copy is
        counted."""
        self.once = dedup_window_s > settings.click_window_s
        self.redis = redis
        self.click_types = clicks
        self.keys = keys
        self.settings = settings
        self.guard = guard
        self._clicks_limited = {name: metrics.CLICKS_LIMITED.labels(name) for name in metrics.CLICK_LIMITS}
        self._views_limited = metrics.VIEWS_LIMITED.labels(*metrics.VIEW_LIMITS)

    async def admit(self, client: str, events: list[Event]) -> list[Event]:
        """Raises TooManyClicks when the client is over its limit; drops the clicks and views past the per-(user, item)
        limits."""
        r = self.settings
        click_types = self.click_types
        clicks = [e for e in events if e.type in click_types] if r.clicks_per_client or r.clicks_per_user_item else []
        views = [e for e in events if e.type not in click_types] if r.views_per_user_item else []
        if not clicks and not views:
            return events
        now = time.time()
        window = int(now // r.click_window_s)
        key = self.keys(f"clicks:{window}")
        admitted: list[int] = []
        for first in range(0, max(len(views), 1), VIEWS_PER_CALL):
            args: list[str | int] = [
                2 * r.click_window_s, f"c:{client}", r.clicks_per_client, int(self.once),
                r.clicks_per_user_item, r.views_per_user_item, len(clicks) if first == 0 else 0,
            ]  # fmt: skip
            for kind, group in (("u", clicks if first == 0 else []), ("v", views[first : first + VIEWS_PER_CALL])):
                for e in group:
                    assert e.event_id is not None, "events reach the guard with ids (serving/publish.with_event_ids)"
                    args += [f"{kind}:{e.user_id}:{e.item_id}", f"e:{e.user_id}:{e.event_id}"]  # ids hold no ':'
            try:
                reply = await self.guard(partial(self.redis.run, self.COUNT, [key], args))
            except RedisUnavailable as exc:  # this call's events and the next calls' go through
                metrics.DEGRADED.labels(EVENTS_ROUTE, exc.cause).inc()
                break
            if reply == [-2]:
                self._clicks_limited["client"].inc(len(clicks))
                raise TooManyClicksInOneRequest(
                    f"{len(clicks)} clicks in one request: more than the {r.clicks_per_client} a client may report "
                    f"in {r.click_window_s} s, so no wait admits them; send them in smaller requests"
                )
            if reply == [-1]:
                self._clicks_limited["client"].inc(len(clicks))
                raise TooManyClicks(
                    f"more than {r.clicks_per_client} clicks in {r.click_window_s} s",
                    (window + 1) * r.click_window_s - now,
                )
            admitted += reply
        dropped = {id(e) for e, ok in zip(clicks + views, admitted, strict=False) if not ok}  # undecided: admitted
        self._clicks_limited["user_item"].inc(admitted[: len(clicks)].count(0))  # the replies: clicks, then views
        self._views_limited.inc(admitted[len(clicks) :].count(0))
        return [e for e in events if id(e) not in dropped]
