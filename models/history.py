"""A user's interaction history: summed event weights per item, most recent first, capped.

The online user step reads it (r_ui = summed weights, c_ui = 1 + α·r_ui). It is a pure fold
over the user's events in order, so the same events give the same history however they
were cut into batches: a restarted worker reproduces every user vector exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

Entry = list  # [item_id: str, summed weight: float]


def merge_history(history: Iterable[Entry], events: Iterable[tuple[str, float]], cap: int) -> list[Entry]:
    """Fold ``(item, weight)`` events into a recent-first history of at most ``cap`` items.

    The cap applies after every event, not once per call, so an item that fell out and came
    back restarts from zero whether or not both events arrived in the same batch.

    >>> merge_history([["a", 1.0]], [("b", 1.0), ("a", 4.0)], cap=10)
    [['a', 5.0], ['b', 1.0]]
    >>> merge_history([["a", 1.0], ["b", 1.0]], [("c", 1.0)], cap=2)
    [['c', 1.0], ['a', 1.0]]
    """
    if cap <= 0:
        raise ValueError("cap must be > 0")
    latest: dict[str, float] = {}
    for item, weight in reversed(list(history)[:cap]):  # oldest first: dict order is recency order
        latest[item] = float(weight)
    for item, weight in events:
        latest[item] = latest.pop(item, 0.0) + weight
        if len(latest) > cap:
            del latest[next(iter(latest))]
    return [[item, weight] for item, weight in reversed(latest.items())]
