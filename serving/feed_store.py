"""Per-request Redis I/O of the feed: one pipelined read of the user's keys, one pipelined session write.

That is the whole Redis budget of a feed request (two round trips); everything shared by all
users comes from the in-process snapshot (serving/snapshot.py).

The session list ``user:<u>:feed:<session>`` (named by the cursor, serving/cursor.py) holds one
JSON ``[[item, source, features], …]`` per page served (``features``, the encoded vector the item
was served with, only when it has one) and expires ``session_ttl_s`` after its last page. The next
page of the session excludes every item in it; the events route reads it to name the source of a
clicked item for an event that came without one, and to stamp the served features into it.

Reads must not fill Redis: every cursorless feed request starts a session, for any user id. So
every session is listed in an index, a sorted set by last use (by Redis' clock, which every reader
replica shares): a known user's own
(``user:<u>:sessions``, at most ``sessions_per_user``) or, for ids nothing is stored for, the one
of all of them (``sessions:anonymous``, at most ``anonymous_sessions``); a new session past the cap
deletes the least recently used one. Memory taken by reads is then at most
(known users × sessions_per_user + anonymous_sessions) sessions, each no longer than the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from recstream.serving.blend import Served
from recstream.serving.redis_client import ClusterRedisClient, RedisClient, Script
from recstream.serving.user_state import UserState, json_list, parse_preferences

from recstream.contracts.keys import Keys

ATTRIBUTION_SESSIONS = 32
"""Distinct scroll sessions one events request may look up; events naming others go out unattributed."""
ATTRIBUTION_PAGES = 10
"""The most recent pages of a session an events request reads (clicks are on what was just shown). With
the ``feed_max_limit`` of 100, one request makes Redis return at most 32 × 10 pages of 100 rows (~2.5 MB)."""


class FeedStore:
    """The feed's two round trips: the read as five or six plain commands sent in one write, the session write as
    one Lua script call.

    Why the read is not a script: Redis turns a script's replies into Lua tables and back, which for the seen set
    (hundreds of members) cost more than the commands themselves: ~105 µs of Redis CPU per read as a script
    against ~45 µs as a pipeline, on the feeds bench's state (200 seen items), for the same reader CPU. The
    commands arrive in one write (~200 bytes) and Redis runs the commands it read from a client back to back, so
    they see one state as the script did. They are not a transaction: were they split across two reads, a
    worker's batch could land between two of them, and the page would see some of the user's keys as before that
    batch and the others as after it.

    On a Redis Cluster every key of a round trip shares the user's hash slot (``user:seg`` and
    ``sessions:anonymous`` are kept per slot there, recstream/contracts/keys.py), so one node answers it.
    """

    RECORD = Script("""
    -- KEYS[1]: the session list, KEYS[2]: its index, KEYS[3] (a known user's page): the anonymous index, which
    -- lists the session if it began before its user was known; ARGV: the page as JSON, the TTL in seconds, the
    -- index's cap. The evicted sessions are not in KEYS: Redis Cluster would need them on one node. Scored by the
    -- clock of the Redis that holds the index, which every reader shares (a reader's own clock, skewed, made its new
    -- sessions the least recently used, or another reader's), in µs (two sessions started within one ms tied, and
    -- the tie went to the session id's order, not the older one); seconds and padded µs as one string, exact.
    local now = redis.call('TIME')
    redis.call('RPUSH', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    if KEYS[3] then redis.call('ZREM', KEYS[3], KEYS[1]) end
    redis.call('ZADD', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])), KEYS[1])
    local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
    if over > 0 then
      for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do redis.call('DEL', old) end
      redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
    end
    return redis.call('EXPIRE', KEYS[2], ARGV[2])
    """)

    def __init__(self, redis: RedisClient | ClusterRedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def read(self, user_id: str, session: str | None) -> UserState:
        """Round trip 1: segment, both candidate lists, history, seen set, preferences, the session's served items."""
        k = self.keys
        commands = [
            ("HGET", k.user_segments(user_id), user_id),
            ("GET", k.user(user_id, "cand")),
            ("GET", k.user(user_id, "bcand")),
            ("GET", k.user(user_id, "hist")),
            ("ZREVRANGE", k.user(user_id, "seen"), 0, -1),
            ("GET", k.user(user_id, "prefs")),
        ]
        if session is not None:
            commands.append(("LRANGE", self.session_key(user_id, session), 0, -1))
        segment, cand, bcand, hist, seen, prefs, *session_pages = await self.redis.execute(*commands)
        preferred, not_interested = parse_preferences(prefs)
        pages = session_pages[0] if session_pages else []
        served = {row[0] for page in pages for row in json_list(page) if isinstance(row, list) and row}
        return UserState(
            segment=segment,
            candidate_rows=json_list(cand),
            batch_rows=json_list(bcand),
            history_rows=json_list(hist),
            seen=seen,
            preferred=tuple(preferred),
            not_interested=frozenset(not_interested),
            served=frozenset(served),
            session_found=bool(pages),
        )

    async def record(
        self,
        user_id: str,
        session: str,
        page: Sequence[Served],
        vectors: Sequence[str] | None,
        ttl_s: int,
        known: bool,
        cap: int,
    ) -> None:
        """Round trip 2: append the page (``[[item, source, features], …]``) to the session and push its expiry
        out; list the session in the user's index (``known``) or the anonymous one, which keeps ``cap``."""
        rows = (
            [[s.item, s.source] for s in page]
            if vectors is None
            else [[s.item, s.source, vector] for s, vector in zip(page, vectors, strict=True)]
        )
        anonymous = self.keys.anonymous_sessions(user_id)
        # a known user's page takes its session off the anonymous index: left there at its first page's time, it
        # was soon the least recently used, and anonymous first pages past the cap deleted it mid-scroll (410)
        indexes = [self.keys.user(user_id, "sessions"), anonymous] if known else [anonymous]
        keys = [self.session_key(user_id, session), *indexes]
        await self.redis.run(self.RECORD, keys, [orjson.dumps(rows), ttl_s, cap])

    async def sources(self, wanted: list[tuple[str, str, str]]) -> list[tuple[str, str | None] | None]:
        """(source, served features or None) of each (user, session, item), None where unknown; one round trip,
        bounded: each distinct session read once, its last ATTRIBUTION_PAGES pages, the first
        ATTRIBUTION_SESSIONS only."""
        sessions = list(dict.fromkeys((u, s) for u, s, _ in wanted))[:ATTRIBUTION_SESSIONS]
        replies = await self.redis.execute(
            *(("LRANGE", self.session_key(u, s), -ATTRIBUTION_PAGES, -1) for u, s in sessions)
        )
        served = {
            pair: {
                row[0]: (str(row[1]), row[2] if len(row) == 3 and isinstance(row[2], str) else None)
                for page in pages
                for row in json_list(page)
                if isinstance(row, list) and len(row) in (2, 3) and isinstance(row[0], str)
            }
            for pair, pages in zip(sessions, replies, strict=True)
        }
        return [served.get((u, s), {}).get(item) for u, s, item in wanted]

    def session_key(self, user_id: str, session: str) -> str:
        return self.keys.user(user_id, f"feed:{session}")
