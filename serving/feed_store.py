"""Per-request Redis I/O of the feed: one pipelined read of the user's keys, one pipelined session write.

That is the whole Redis budget of a feed request (two round trips); everything shared by all
users comes from the in-process snapshot (serving/snapshot.py).

The session list ``user:<u>:feed:<session>`` (named by the cursor, serving/cursor.py) holds one
JSON ``[[item, source], …]`` per page served and expires ``session_ttl_s`` after its last page.
The next page of the session excludes every item in it; the events route reads it to name the
source of a clicked item for an event that came without one.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from recstream.serving.blend import Served
from recstream.serving.redis_wire import RedisWire, Script
from recstream.serving.user_state import UserState, json_list, parse_preferences

from recstream.contracts.keys import Keys


class FeedStore:
    """The feed's two round trips, each one Lua script call: one command to pack, one reply to parse.

    For Redis Cluster, the user's keys would need a ``{user}`` hash tag and ``user:seg`` a per-user
    key, so that one script's keys live on one node (ARCHITECTURE.md, scale-out path).
    """

    READ = Script("""
    -- KEYS: user:seg, user:<u>:cand, :hist, :seen, :prefs [, the session list]; ARGV[1]: the user id
    local session = false
    if KEYS[6] then session = redis.call('LRANGE', KEYS[6], 0, -1) end
    return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]),
            redis.call('ZREVRANGE', KEYS[4], 0, -1), redis.call('GET', KEYS[5]), session}
    """)
    RECORD = Script("""
    -- KEYS[1]: the session list; ARGV: the page as JSON, the TTL in seconds
    redis.call('RPUSH', KEYS[1], ARGV[1])
    return redis.call('EXPIRE', KEYS[1], ARGV[2])
    """)

    def __init__(self, wire: RedisWire, keys: Keys) -> None:
        self.wire = wire
        self.keys = keys

    async def read(self, user_id: str, session: str | None) -> UserState:
        """Round trip 1: segment, candidates, history, seen set, preferences and the session's served items."""
        k = self.keys
        user_keys = [k("user:seg"), *(k.user(user_id, what) for what in ("cand", "hist", "seen", "prefs"))]
        if session is not None:
            user_keys.append(self.session_key(user_id, session))
        segment, cand, hist, seen, prefs, pages = await self.wire.run(self.READ, user_keys, [user_id])
        preferred, not_interested = parse_preferences(prefs)
        served = {row[0] for page in pages or () for row in json_list(page) if isinstance(row, list) and row}
        return UserState(
            segment=segment,
            candidate_rows=json_list(cand),
            history_rows=json_list(hist),
            seen=seen,
            preferred=tuple(preferred),
            not_interested=frozenset(not_interested),
            served=frozenset(served),
            session_found=bool(pages),
        )

    async def record(self, user_id: str, session: str, page: Iterable[Served], ttl_s: int) -> None:
        """Round trip 2: append the page (``[[item, source], …]``) to the session and push its expiry out."""
        value = orjson.dumps([[s.item, s.source] for s in page])
        await self.wire.run(self.RECORD, [self.session_key(user_id, session)], [value, ttl_s])

    async def sources(self, wanted: list[tuple[str, str, str]]) -> list[str | None]:
        """The source each (user, session, item) was served from, None where unknown; one round trip."""
        replies = await self.wire.execute(*(("LRANGE", self.session_key(u, s), 0, -1) for u, s, _ in wanted))
        found = []
        for (_, _, item), pages in zip(wanted, replies, strict=True):
            rows = (row for page in pages for row in json_list(page) if isinstance(row, list) and len(row) == 2)
            found.append(next((str(row[1]) for row in rows if row[0] == item), None))
        return found

    def session_key(self, user_id: str, session: str) -> str:
        return self.keys.user(user_id, f"feed:{session}")
