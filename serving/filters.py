"""Request-time filters of ``GET /v1/feed/{user_id}``: categories, excluded ids, conditions on item features.

Three optional query parameters, each given at most once, all of which an item must pass:

* ``category=news`` or ``category=news,sport`` — items in at least one of these categories (at most
  MAX_CATEGORIES);
* ``exclude=i1,i2`` — never these item ids (at most MAX_EXCLUDE);
* ``filter=in_stock=true,price<20`` — every clause holds (at most MAX_CLAUSES). A clause is
  ``<feature><op><value>``: a feature of the item (its ``features``, numbers, recstream/contracts/events.py),
  an operator ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, and a number or ``true``/``false`` (1/0). An item
  without the feature fails the clause.

Names and ids follow the event contract (``ID_PATTERN``, at most MAX_ID_LEN characters), so the separators
``,`` and the operators never occur inside one. Anything else is a :class:`FilterError` naming the parameter
and what is wrong (the route's 400). The feed applies a filter while it fills slots (serving/feed.py): each
source's lazy list moves on past what the filter refuses, so a narrow filter draws deeper into the lists instead
of leaving slots empty. An item whose categories and features the reader has not loaded yet is held back.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from recstream.contracts.events import ID_PATTERN, MAX_ID_LEN

MAX_CATEGORIES = 16
MAX_EXCLUDE = 100
"""Excluded ids of one request: 100 ids of 64 characters keep the URL under 7 kB, well within servers' 8 kB
request-line limits."""
MAX_CLAUSES = 8
MAX_VALUE_LEN = 32
FILTER_PARAMETERS = ("category", "exclude", "filter")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_NAME = re.compile(ID_PATTERN)
_CLAUSE = re.compile(r"([^=!<>]*)(!=|<=|>=|=|<|>)(.*)")
_WORDS = {"true": 1.0, "false": 0.0}


class FilterError(ValueError):
    """A filter parameter that does not parse; the message names the parameter and the problem."""


@dataclass(frozen=True, slots=True)
class Clause:
    """One condition on a feature: ``feature op value``."""

    feature: str
    op: str
    value: float

    def holds(self, features: Mapping[str, float]) -> bool:
        x = features.get(self.feature)
        return x is not None and OPERATORS[self.op](x, self.value)

    @property
    def text(self) -> str:
        return f"{self.feature}{self.op}{self.value!r}"


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """What one request allows. Empty (:data:`NO_FILTER`) allows everything.

    >>> f = FeedFilter.parse(category="news,sport", exclude="i1", filter="in_stock=true,price<20")
    >>> f.admits(("news",), {"in_stock": 1.0, "price": 9.5}), f.admits(("film",), {"in_stock": 1.0, "price": 9.5})
    (True, False)
    >>> f.admits(("news",), {"in_stock": 1.0}), f.admits(None, {}), "i1" in f.exclude
    (False, False, True)
    >>> FeedFilter.parse(filter="price>=x")
    Traceback (most recent call last):
    ...
    recstream.serving.filters.FilterError: filter: 'price>=x': the value must be a number, true or false
    """

    categories: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    clauses: tuple[Clause, ...] = ()

    @classmethod
    def parse(cls, category: str | None = None, exclude: str | None = None, filter: str | None = None) -> FeedFilter:
        """The filter the three query parameters spell (None: not given)."""
        return cls(
            frozenset(_names("category", category, MAX_CATEGORIES)),
            frozenset(_names("exclude", exclude, MAX_EXCLUDE)),
            tuple(_clause(text) for text in _parts("filter", filter, MAX_CLAUSES)),
        )

    @property
    def narrows(self) -> bool:
        """Whether items must be looked at (categories or features), not only their ids."""
        return bool(self.categories or self.clauses)

    def __bool__(self) -> bool:
        return bool(self.narrows or self.exclude)

    def admits(self, categories: Iterable[str] | None, features: Mapping[str, float]) -> bool:
        """Whether an item with these categories (None: not known yet, held back) and features passes."""
        if categories is None:
            return not self.narrows
        if self.categories and self.categories.isdisjoint(categories):
            return False
        return all(clause.holds(features) for clause in self.clauses)

    @property
    def digest(self) -> str | None:
        """8 hex digits naming the filter, for the cursor to carry (None for no filter): the same filter in any
        spelling (order of ids, ``true`` or ``1``) gives the same digest.

        >>> a = FeedFilter.parse(category="b,a", exclude="x,y", filter="in_stock=true,price<20")
        >>> a.digest == FeedFilter.parse(category="a,b", exclude="y,x", filter="price<20.0,in_stock=1").digest
        True
        >>> a.digest == FeedFilter.parse(category="a").digest, NO_FILTER.digest
        (False, None)
        """
        if not self:
            return None
        canonical = "|".join(
            [",".join(sorted(self.categories)), ",".join(sorted(self.exclude)), *sorted(c.text for c in self.clauses)]
        )
        return hashlib.blake2b(canonical.encode(), digest_size=4).hexdigest()


NO_FILTER = FeedFilter()


def _parts(parameter: str, raw: str | None, limit: int) -> list[str]:
    """The comma-separated parts of a parameter, at most ``limit`` of them, none empty. Only the values are
    counted against the limit, so ``limit`` ids and a trailing comma are refused for the empty value, not as too
    many.

    >>> _parts("exclude", "a,b", 2)
    ['a', 'b']
    >>> _parts("exclude", "a,b,", 2)
    Traceback (most recent call last):
    ...
    recstream.serving.filters.FilterError: exclude: an empty value (comma-separated, no spaces, no trailing comma)
    >>> _parts("exclude", "a,b,c,", 2)
    Traceback (most recent call last):
    ...
    recstream.serving.filters.FilterError: exclude: 3 values, at most 2 are allowed
    """
    if raw is None:
        return []
    parts = raw.split(",")
    values = sum(1 for part in parts if part)
    if values > limit:
        raise FilterError(f"{parameter}: {values} values, at most {limit} are allowed")
    if values < len(parts):
        raise FilterError(f"{parameter}: an empty value (comma-separated, no spaces, no trailing comma)")
    return parts


def _names(parameter: str, raw: str | None, limit: int) -> list[str]:
    parts = _parts(parameter, raw, limit)
    for part in parts:
        _check_name(parameter, part)
    return parts


def _check_name(parameter: str, name: str) -> None:
    if len(name) > MAX_ID_LEN or not _NAME.fullmatch(name):  # match() lets a trailing newline through
        raise FilterError(f"{parameter}: {name[:MAX_ID_LEN]!r} is not an id (1-{MAX_ID_LEN} of A-Z a-z 0-9 _ . -)")


def _clause(text: str) -> Clause:
    """``<feature><op><value>``.

    >>> _clause("in_stock=true"), _clause("price<=20")
    (Clause(feature='in_stock', op='=', value=1.0), Clause(feature='price', op='<=', value=20.0))
    >>> _clause("price~20")
    Traceback (most recent call last):
    ...
    recstream.serving.filters.FilterError: filter: 'price~20': expected <feature><op><value>, op one of != <= >= = < >
    """
    match = _CLAUSE.fullmatch(text)
    shown = repr(text[: MAX_ID_LEN + MAX_VALUE_LEN])
    if match is None:
        raise FilterError(f"filter: {shown}: expected <feature><op><value>, op one of {' '.join(OPERATORS)}")
    feature, op, raw = match.groups()
    _check_name("filter", feature)
    if len(raw) > MAX_VALUE_LEN:
        raise FilterError(f"filter: {shown}: the value is longer than {MAX_VALUE_LEN} characters")
    value = _WORDS.get(raw.lower())
    if value is None:
        try:
            value = float(raw)
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise FilterError(f"filter: {shown}: the value must be a number, true or false")
    return Clause(feature, op, value)
