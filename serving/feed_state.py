"""Per-request Redis I/O of the feed: one pipelined read of the user's keys, one pipelined session write.

That is the whole Redis budget of a feed request (two round trips); everything shared by all
users comes from the in-process snapshot (serving/snapshot.py).

Infinite scroll: a cursor ``<session>.<page>`` names a session list ``user:<u>:feed:<session>``
(one JSON ``[[item, source], …]`` per page served, expiring ``session_ttl_s`` after its last page).
The next page excludes every item in it, so a session never repeats an item; the user id is part
of the key, so a cursor is worthless for another user. The list also lets the events route name
the source of a clicked item for an event that came without one.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
from recstream.serving.blend import Served
from recstream.serving.redis_wire import RedisWire, Script

from recstream.contracts.keys import Keys

CURSOR_PATTERN = r"^[0-9a-f]{16}\.[1-9][0-9]{0,5}$"
_CURSOR = re.compile(CURSOR_PATTERN)
MAX_PAGE = 999_999
"""The last page a session serves (the cursor's page number has at most six digits)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a scroll session stands: its id and how many pages it has served.

    >>> Cursor.parse("0123456789abcdef.3")
    Cursor(session='0123456789abcdef', page=3)
    >>> Cursor.parse("0123456789abcdef.3").following().text
    '0123456789abcdef.4'
    """

    session: str
    page: int

    @classmethod
    def start(cls) -> Cursor:
        return cls(secrets.token_hex(8), 0)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        if not _CURSOR.match(text):
            raise ValueError(f"malformed cursor {text[:40]!r}: expected <16 hex digits>.<page number>")
        session, page = text.split(".")
        return cls(session, int(page))

    def following(self) -> Cursor:
        return Cursor(self.session, self.page + 1)

    @property
    def last(self) -> bool:
        return self.page >= MAX_PAGE

    @property
    def text(self) -> str:
        return f"{self.session}.{self.page}"

    def seed(self, user_id: str) -> int:
        """A per-request seed that reproduces the page for the same (user, session, page)."""
        digest = hashlib.blake2b(f"{user_id}|{self.text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class UserState:
    """The user's keys as one feed needs them; malformed worker values read as empty, never as errors.

    Candidate and history rows stay raw JSON lists, validated row by row as they are consumed
    (``candidates()``, ``history()``): a page looks at a few dozen of the hundreds stored.
    """

    segment: str | None = None
    candidate_rows: list = field(default_factory=list)
    history_rows: list = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    """Items shown or clicked, most recent first."""
    preferred: tuple[str, ...] = ()
    not_interested: frozenset[str] = frozenset()
    served: frozenset[str] = frozenset()
    session_found: bool = False

    @property
    def warm(self) -> bool:
        """Any history (weighted history, or items shown or clicked) makes a user warm; candidates alone
        do not: the workers also build them from onboarding picks, before any history."""
        return bool(self.history_rows or self.seen)

    def candidates(self) -> Iterator[tuple[str, str | None]]:
        """(item, because_item) from ``[[item, score, because_item], …]``, in stored order (best first)."""
        for row in self.candidate_rows:
            if isinstance(row, list) and row and isinstance(row[0], str):
                because = row[2] if len(row) > 2 and isinstance(row[2], str) else None
                yield row[0], because

    def history(self, limit: int) -> list[tuple[str, float]]:
        """(item, weight) of the ``limit`` most recent valid rows of ``[[item, weight, ts], …]``."""
        rows = (r for r in self.history_rows if isinstance(r, list) and len(r) >= 2 and isinstance(r[0], str))
        return [(r[0], float(r[1])) for r in itertools.islice(rows, limit) if isinstance(r[1], int | float)]


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
        served = {row[0] for page in pages or () for row in _json_list(page) if isinstance(row, list) and row}
        return UserState(
            segment=segment,
            candidate_rows=_json_list(cand),
            history_rows=_json_list(hist),
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
            rows = (row for page in pages for row in _json_list(page) if isinstance(row, list) and len(row) == 2)
            found.append(next((str(row[1]) for row in rows if row[0] == item), None))
        return found

    def session_key(self, user_id: str, session: str) -> str:
        return self.keys.user(user_id, f"feed:{session}")


def parse_preferences(raw: str | bytes | None) -> tuple[list[str], list[str]]:
    """``user:<u>:prefs`` → (categories, not_interested).

    >>> parse_preferences('{"categories": ["film"], "not_interested": ["i9"]}')
    (['film'], ['i9'])
    >>> parse_preferences("garbage")
    ([], [])
    """
    doc = _json(raw)
    if not isinstance(doc, dict):
        return [], []
    return _strings(doc.get("categories")), _strings(doc.get("not_interested"))


def _json(raw: str | bytes | None) -> object:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _json_list(raw: str | bytes | None) -> list:
    doc = _json(raw)
    return doc if isinstance(doc, list) else []


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
