"""The feed's cursor: ``<session>.<page>[.<filter>]``, the scroll session it continues, how many pages it served,
and the digest of the request-time filter its pages were served under (serving/filters.py), if any.

Infinite scroll: the session id names the list ``user:<u>:feed:<session>`` of what the session served
(serving/feed_store.py), so the next page excludes every item in it and a session never repeats an
item; the user id is part of that key, so a cursor is worthless for another user. The page number
bounds a session and, with the user and the session, seeds the page's explore draws. The filter digest
keeps a session under one filter: the next page must be asked for with the same filter (its digest
matches), so it continues the filtered list its first page started, without gaps or repeats.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

SESSION_PATTERN = "[0-9a-f]{16}"
"""A session id: 8 random bytes in hex (:meth:`Cursor.start`)."""
FILTER_PATTERN = "[0-9a-f]{8}"
"""A filter's digest (serving/filters.py, ``FeedFilter.digest``)."""
PLAIN_CURSOR_PATTERN = rf"^{SESSION_PATTERN}\.[1-9][0-9]{{0,5}}$"
"""The cursor of a session without a filter."""
CURSOR_PATTERN = rf"^{SESSION_PATTERN}\.[1-9][0-9]{{0,5}}(\.{FILTER_PATTERN})?$"
_CURSOR = re.compile(CURSOR_PATTERN)
_SESSION = re.compile(SESSION_PATTERN)
MAX_PAGE = 999_999
"""The last page a session serves (the cursor's page number has at most six digits)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a scroll session stands: its id and how many pages it has served.

    >>> Cursor.parse("0123456789abcdef.3")
    Cursor(session='0123456789abcdef', page=3, filter=None)
    >>> Cursor.parse("0123456789abcdef.3.00ff00ff").following().text
    '0123456789abcdef.4.00ff00ff'
    >>> Cursor.parse("0123456789abcdef.0")
    Traceback (most recent call last):
    ...
    ValueError: malformed cursor '0123456789abcdef.0': expected <16 hex digits>.<page number>[.<8 hex digits>]

    A session's first page starts from a fresh session at page 0; the last one issues no cursor:

    >>> first = Cursor.start()
    >>> first.page, len(first.session)
    (0, 16)
    >>> Cursor("0123456789abcdef", 999_998).following().last
    True
    """

    session: str
    page: int
    filter: str | None = None

    @classmethod
    def start(cls, filter: str | None = None) -> Cursor:
        return cls(secrets.token_hex(8), 0, filter)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        if not _CURSOR.fullmatch(text):  # match() lets a trailing newline through
            raise ValueError(f"malformed cursor {text[:40]!r}: expected <16 hex digits>.<page number>[.<8 hex digits>]")
        session, page, *digest = text.split(".")
        return cls(session, int(page), digest[0] if digest else None)

    def following(self) -> Cursor:
        return Cursor(self.session, self.page + 1, self.filter)

    @property
    def last(self) -> bool:
        return self.page >= MAX_PAGE

    @property
    def text(self) -> str:
        return f"{self.session}.{self.page}" if self.filter is None else f"{self.session}.{self.page}.{self.filter}"

    def seed(self, user_id: str) -> int:
        """A per-request seed that reproduces the page for the same (user, session, page).

        >>> page = Cursor.parse("0123456789abcdef.2")
        >>> page.seed("u1") == page.seed("u1"), page.seed("u1") == page.seed("u2")
        (True, False)

        53 bits: a page's seed, passed back as ``?seed=``, must survive a JavaScript client, whose numbers are exact
        only up to 2⁵³ (a 63-bit seed came back rounded, and the page was not reproduced).

        >>> seeds = [Cursor.parse(f"0123456789abcdef.{k}").seed("u1") for k in range(1, 200)]
        >>> max(seeds) <= 2**53 and all(int(float(seed)) == seed for seed in seeds)
        True
        """
        digest = hashlib.blake2b(f"{user_id}|{self.text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 11


def is_session(value: object) -> bool:
    """Whether ``value`` is a session id (what a feed returns as ``session`` and events carry as ``context.feed``).

    >>> is_session("0123456789abcdef"), is_session("0123456789ABCDEF"), is_session("0123456789abcdef.1")
    (True, False, False)
    """
    return isinstance(value, str) and _SESSION.fullmatch(value) is not None
