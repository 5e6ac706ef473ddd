"""A user's state as one feed needs it, parsed leniently from what the workers and the reader stored.

The workers write ``user:<u>:cand``, ``:bcand``, ``:hist`` and ``:seen``; ``:prefs`` comes from the preferences
route (and from the workers, out of the user event). A malformed value reads as empty, never as an
error: one bad key must not take a user's feed down.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import orjson

Candidates = tuple[list[tuple[str, str | None]], dict[str, int]]
"""A candidate list's valid (item, because_item) rows in stored order, and item → its first position."""


@dataclass(frozen=True, slots=True)
class UserState:
    """The user's keys as one feed needs them; malformed worker values read as empty, never as errors.

    Candidate and history rows stay raw JSON lists, validated row by row as they are consumed
    (``candidate_list()``, ``history()``): a page looks at a few dozen of the hundreds stored.

    >>> user = UserState(candidate_rows=[["i1", 0.9, "i7"], ["i2", 0.5], "junk"], history_rows=[["i7", 1.0, 5]])
    >>> user.candidate_list(), user.history(10), user.warm
    ([('i1', 'i7'), ('i2', None)], [('i7', 1.0)], True)
    """

    segment: str | None = None
    candidate_rows: list = field(default_factory=list)
    batch_rows: list = field(default_factory=list)
    """The batch list (``user:<u>:bcand``): the same rows by the batch fit's own user vector; empty for a user the
    model version does not know."""
    history_rows: list = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    """Items shown or clicked, most recent first."""
    preferred: tuple[str, ...] = ()
    not_interested: frozenset[str] = frozenset()
    served: frozenset[str] = frozenset()
    session_found: bool = False
    _candidates: Candidates | None = field(default=None, init=False, repr=False, compare=False)
    _batch: Candidates | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def warm(self) -> bool:
        """Any history (weighted history, or items shown or clicked) makes a user warm; candidates alone
        do not: the workers also build them from onboarding picks, before any history."""
        return bool(self.history_rows or self.seen)

    @property
    def known(self) -> bool:
        """Something is stored for the user (a segment from attributes, history, candidates, preferences); an id
        nobody ever wrote for is not known, and its scroll sessions share one capped index (serving/feed_store.py)."""
        return bool(
            self.segment
            or self.candidate_rows
            or self.history_rows
            or self.seen
            or self.preferred
            or self.not_interested
        )

    def candidate_list(self) -> list[tuple[str, str | None]]:
        """(item, because_item) from ``[[item, score, because_item], …]``, in stored order (best first): the parsed
        list itself (read it, never change it), which C iterators can walk twice, once for the rows and once for
        their items (serving/feed's ranked union)."""
        return self._parsed()[0]

    def candidate_positions(self) -> dict[str, int]:
        """item → its 0-based position on the candidate list (best first, ALS score order), first row of an item kept.

        >>> UserState(candidate_rows=[["i1", 0.9, "i7"], "junk", ["i2"], ["i1", 0.1]]).candidate_positions()
        {'i1': 0, 'i2': 1}
        """
        return self._parsed()[1]

    def batch_list(self) -> list[tuple[str, str | None]]:
        """:meth:`candidate_list` of the batch list."""
        return self._parsed("_batch")[0]

    def batch_positions(self) -> dict[str, int]:
        """:meth:`candidate_positions` on the batch list.

        >>> UserState(batch_rows=[["i3", 0.4, None], ["i1", 0.2, "i7"]]).batch_positions()
        {'i3': 0, 'i1': 1}
        """
        return self._parsed("_batch")[1]

    def _parsed(self, slot: str = "_candidates") -> Candidates:
        """A list's valid rows and their positions (``_candidates``: the candidate list, ``_batch``: the batch list),
        parsed once: a page walks the candidate list three times (the personal source, the popular head's
        reordering, the features)."""
        parsed = getattr(self, slot)
        if parsed is None:
            parsed = _candidates(self.candidate_rows if slot == "_candidates" else self.batch_rows)
            object.__setattr__(self, slot, parsed)
        return parsed

    def history(self, limit: int) -> list[tuple[str, float]]:
        """(item, weight) of the ``limit`` most recent valid rows of ``[[item, weight, ts], …]``."""
        rows = (r for r in self.history_rows if isinstance(r, list) and len(r) >= 2 and isinstance(r[0], str))
        return [(r[0], float(r[1])) for r in itertools.islice(rows, limit) if isinstance(r[1], int | float)]


def _candidates(stored: list) -> Candidates:
    """The valid rows of ``[[item, score, because_item], …]`` and their positions."""
    rows = [
        (row[0], row[2] if len(row) > 2 and isinstance(row[2], str) else None)
        for row in stored
        if isinstance(row, list) and row and isinstance(row[0], str)
    ]
    positions: dict[str, int] = {}
    for position, (item, _) in enumerate(rows):
        positions.setdefault(item, position)
    return rows, positions


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


def json_list(raw: str | bytes | None) -> list:
    """A stored JSON list; anything else (missing, malformed, another type) reads as empty.

    >>> json_list('[["i1", 0.5]]'), json_list("{}"), json_list(b"[1,"), json_list(None)
    ([['i1', 0.5]], [], [], [])
    """
    doc = _json(raw)
    return doc if isinstance(doc, list) else []


def _json(raw: str | bytes | None) -> object:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
