"""What GET /v1/feed/{user_id} accepts, defined once for the two that check it.

app.py declares the route's parameters from these rules; fast_feed.py checks raw requests against
them. The user id follows the event contract (``ID_PATTERN``, at most ``MAX_ID_LEN`` characters),
the cursor is a cursor (serving/cursor.py), ``seed`` any non-negative 64-bit signed integer, and
``limit`` at least MIN_LIMIT and at most ``settings.reader.feed_max_limit``; the request-time filters
(``category``, ``exclude``, ``filter``) follow serving/filters.py. :meth:`FeedQuery.parse` admits only what
is *plainly* within those rules on the raw bytes, and only unfiltered requests (a filter and a filtered
session's cursor are the route's); whatever it refuses goes to the FastAPI route, which decides (and
produces the precise 4xx).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from recstream.serving.cursor import PLAIN_CURSOR_PATTERN, Cursor
from recstream.serving.filters import FILTER_PARAMETERS

from recstream.contracts.events import ID_PATTERN, MAX_ID_LEN
from recstream.contracts.settings import Settings

FEED_ROUTE = "/v1/feed/{user_id}"
DEFAULT_LIMIT = 20
MIN_LIMIT = 1
MIN_SEED = 0
MAX_SEED = 2**63 - 1
PARAMETERS = ("limit", "cursor", "seed")
"""The query parameters the fast path admits; any other one is not plainly valid."""
ROUTE_PARAMETERS = (*PARAMETERS, *FILTER_PARAMETERS)
"""Every query parameter of the route, in the order it declares them."""

FeedCall = tuple[str, int, Cursor | None, int | None]
_PREFIX = FEED_ROUTE.removesuffix("{user_id}")
_ID = re.compile(ID_PATTERN)
_CURSOR = re.compile(PLAIN_CURSOR_PATTERN.encode())
_NAMES = tuple(name.encode() for name in PARAMETERS)


@dataclass(frozen=True, slots=True)
class FeedQuery:
    """The limit's bounds, which come from the settings; the other rules are this module's constants."""

    default_limit: int
    max_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedQuery:
        return cls(min(DEFAULT_LIMIT, settings.reader.feed_max_limit), settings.reader.feed_max_limit)

    def parse(self, path: str, query_string: bytes) -> FeedCall | None:
        """(user, limit, cursor, seed) when the request is plainly valid, else None (the route decides).

        >>> query = FeedQuery(default_limit=20, max_limit=100)
        >>> query.parse("/v1/feed/u1", b"limit=5&seed=7")
        ('u1', 5, None, 7)
        >>> query.parse("/v1/feed/u1", b"")
        ('u1', 20, None, None)
        >>> [query.parse(p, q) for p, q in [("/v1/feed/u 1", b""), ("/v1/feed/u1\\n", b""), ("/v1/feed/u1", b"limit=0"),
        ...     ("/v1/feed/u1", b"limit=101"), ("/v1/feed/u1", b"limit=5&limit=6"), ("/v1/feed/u1", b"x=1"),
        ...     ("/v1/feed/u1", b"category=news"), ("/v1/feed/u1", b"cursor=0123456789abcdef.1.00ff00ff")]]
        [None, None, None, None, None, None, None, None]
        """
        user = path[len(_PREFIX) :]
        if not path.startswith(_PREFIX) or not 0 < len(user) <= MAX_ID_LEN or not _ID.fullmatch(user):
            return None
        values: dict[bytes, bytes] = {}
        for part in query_string.split(b"&") if query_string else ():
            key, _, value = part.partition(b"=")
            if key in values or key not in _NAMES:
                return None
            values[key] = value
        limit, cursor, seed = (values.get(name) for name in _NAMES)
        if limit is not None and not _within(limit, MIN_LIMIT, self.max_limit):
            return None
        if seed is not None and not _within(seed, MIN_SEED, MAX_SEED):
            return None
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            return None
        return (
            user,
            self.default_limit if limit is None else int(limit),
            None if cursor is None else Cursor.parse(cursor.decode()),
            None if seed is None else int(seed),
        )


def _within(raw: bytes, low: int, high: int) -> bool:
    """Plain decimal digits (no sign, no spaces; no more digits than ``high`` has) for a value in [low, high]."""
    return raw.isdigit() and len(raw) <= len(str(high)) and low <= int(raw) <= high
