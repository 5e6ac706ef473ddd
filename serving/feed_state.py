"""Per-request Redis I/O of the feed: one pipelined read of the user's keys, one pipelined session write.

That is the whole Redis budget of a feed request (two round trips); everything shared by all
users comes from the in-process snapshot (serving/snapshot.py).

Infinite scroll: a cursor ``<session>.<page>`` names a session hash ``user:<u>:feed:<session>``
(item → source of every item served in it, expiring ``session_ttl_s`` after its last page). The
next page excludes every item in it, so a session never repeats an item; the user id is part of
the key, so a cursor is worthless for another user. The hash also lets the events route name the
source of a clicked item for an event that came without one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from recstream.keys import Keys
from serving.blend import Served

CURSOR_PATTERN = r"^[0-9a-f]{16}\.[1-9][0-9]{0,5}$"
_CURSOR = re.compile(CURSOR_PATTERN)
MAX_PAGE = 999_999


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
    def text(self) -> str:
        return f"{self.session}.{self.page}"

    def seed(self, user_id: str) -> int:
        """A per-request seed that reproduces the page for the same (user, session, page)."""
        digest = hashlib.blake2b(f"{user_id}|{self.text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class UserState:
    """The user's keys as one feed needs them; malformed worker values read as empty, never as errors."""

    segment: str | None = None
    candidates: list[tuple[str, str | None]] = field(default_factory=list)
    """(item, because_item), best score first."""
    history: list[tuple[str, float]] = field(default_factory=list)
    """(item, weight), most recent first."""
    seen: list[str] = field(default_factory=list)
    preferred: tuple[str, ...] = ()
    not_interested: frozenset[str] = frozenset()
    served: frozenset[str] = frozenset()
    session_found: bool = False

    @property
    def warm(self) -> bool:
        """Any history (weighted history, or items shown or clicked) makes a user warm; candidates alone
        do not: the workers also build them from onboarding picks, before any history."""
        return bool(self.history or self.seen)


async def read_user(redis: Redis, keys: Keys, user_id: str, session: str | None) -> UserState:
    """Round trip 1: segment, candidates, history, seen set, preferences and the session's served items."""
    pipe = redis.pipeline(transaction=False)
    pipe.hget(keys("user:seg"), user_id)
    pipe.get(keys.user(user_id, "cand"))
    pipe.get(keys.user(user_id, "hist"))
    pipe.zrevrange(keys.user(user_id, "seen"), 0, -1)
    pipe.get(keys.user(user_id, "prefs"))
    if session is not None:
        pipe.hkeys(session_key(keys, user_id, session))
    segment, cand, hist, seen, prefs, *served = await pipe.execute()
    preferred, not_interested = parse_preferences(prefs)
    return UserState(
        segment=segment,
        candidates=_candidates(cand),
        history=_history(hist),
        seen=seen,
        preferred=tuple(preferred),
        not_interested=frozenset(not_interested),
        served=frozenset(served[0]) if served else frozenset(),
        session_found=bool(served and served[0]),
    )


async def record_served(
    redis: Redis, keys: Keys, user_id: str, session: str, page: Iterable[Served], ttl_s: int
) -> None:
    """Round trip 2: add the page to the session hash and push its expiry out by ``ttl_s``."""
    key = session_key(keys, user_id, session)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping={s.item: s.source for s in page})
    pipe.expire(key, ttl_s)
    await pipe.execute()


def session_key(keys: Keys, user_id: str, session: str) -> str:
    return keys.user(user_id, f"feed:{session}")


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


def _candidates(raw: str | None) -> list[tuple[str, str | None]]:
    """``[[item, score, because_item], …]`` sorted by score, best first (stable for equal scores)."""
    rows = [r for r in _json_list(raw) if isinstance(r, list) and len(r) >= 2 and isinstance(r[0], str)]
    rows = [r for r in rows if isinstance(r[1], int | float)]
    rows.sort(key=lambda r: -r[1])
    return [(r[0], r[2] if len(r) > 2 and isinstance(r[2], str) else None) for r in rows]


def _history(raw: str | None) -> list[tuple[str, float]]:
    return [
        (r[0], float(r[1]))
        for r in _json_list(raw)
        if isinstance(r, list) and len(r) >= 2 and isinstance(r[0], str) and isinstance(r[1], int | float)
    ]


def _json(raw: str | bytes | None) -> object:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _json_list(raw: str | None) -> list:
    doc = _json(raw)
    return doc if isinstance(doc, list) else []


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
