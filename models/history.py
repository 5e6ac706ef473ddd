"""A user's interaction history: summed event weights per item, most recent first, capped.

The online user step reads it (r_ui = summed signed weights, c_ui = 1 + α·r_ui; a negative sum, a disliked
item, is a negative observation, :func:`combine_weights`). It is a pure fold
over the user's events in order, so the same events give the same history however they
were cut into batches: a restarted worker reproduces every user vector exactly.

In memory a history is a dict ``item → weight`` in recency order (least recent first). Why a
dict: folding an event is O(1) (pop and re-insert moves the item to the end), and a dict of
str → float is never tracked by Python's cyclic garbage collector, whereas the stored form
(a list of ``[item, weight]`` lists) is ~100 tracked objects per user. A worker caches a
history per user; as lists, full collections over that cache cost more than the rest of a
live batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

History = dict[str, float]  # item → summed weight, least recent first


def merge_history(history: Mapping[str, float], events: Iterable[tuple[str, float]], cap: int) -> History:
    """Fold ``(item, weight)`` events into a copy of ``history``, keeping at most ``cap`` items.

    The cap applies after every event, not once per call, so an item that fell out and came
    back restarts from zero whether or not both events arrived in the same batch.

    >>> history_rows(merge_history({"a": 1.0}, [("b", 1.0), ("a", 4.0)], cap=10))
    [('a', 5.0), ('b', 1.0)]
    >>> history_rows(merge_history({"a": 1.0, "b": 1.0}, [("c", 1.0)], cap=2))
    [('c', 1.0), ('b', 1.0)]
    >>> history_rows(merge_history({"a": 5.0}, [("a", -4.0), ("a", 1.0)], cap=10))  # a dislike outweighs the rest
    [('a', -4.0)]
    """
    if cap <= 0:
        raise ValueError("cap must be > 0")
    latest = dict(history)
    for item, weight in events:
        latest[item] = combine_weights(latest.pop(item, 0.0), weight)
        if len(latest) > cap:
            del latest[next(iter(latest))]
    return latest


def combine_weights(old: float, new: float) -> float:
    """r_ui after one more event: positives add up, any negative makes the pair a negative observation whose
    magnitude is the sum of the negatives (models/als.py's docstring). Commutative and associative.

    >>> combine_weights(1.0, 4.0), combine_weights(5.0, -4.0), combine_weights(-4.0, 1.0), combine_weights(-4.0, -4.0)
    (5.0, -4.0, -4.0, -8.0)
    """
    return old + new if old >= 0.0 and new >= 0.0 else min(old, 0.0) + min(new, 0.0)


def history_rows(history: Mapping[str, float]) -> list[tuple[str, float]]:
    """The stored form, most recent first: ``orjson.dumps`` writes it as ``[[item, weight], …]``."""
    return list(reversed(history.items()))


def history_from_rows(rows: object, cap: int) -> History:
    """Inverse of :func:`history_rows`, keeping the ``cap`` most recent rows. ValueError unless ``rows`` has the
    stored form (a list of ``[item, finite weight]`` rows): another writer may have left anything under the key.

    >>> history_from_rows([["b", 1], ["a", 2.5]], cap=10)
    {'a': 2.5, 'b': 1.0}
    >>> history_from_rows({"a": 4.0}, cap=10)
    Traceback (most recent call last):
    ValueError: not a list of [item, weight] rows: dict
    >>> history_from_rows([["b", 1.0], ["a", "4"]], cap=10)
    Traceback (most recent call last):
    ValueError: not an [item, weight] row: ['a', '4']
    """
    if not isinstance(rows, list):
        raise ValueError(f"not a list of [item, weight] rows: {type(rows).__name__}")
    history: History = {}
    for row in reversed(rows[:cap]):
        if not (
            isinstance(row, list | tuple)
            and len(row) == 2
            and isinstance(row[0], str)
            and type(row[1]) in (int, float)  # not a bool
            and math.isfinite(row[1])
        ):
            raise ValueError(f"not an [item, weight] row: {row!r:.100}")
        history[row[0]] = float(row[1])
    return history
