"""A user's interaction history: summed event weights per item, most recent first, capped.

The online user step reads it (r_ui = summed weights, c_ui = 1 + α·r_ui). It is a pure fold
over the user's events in order, so the same events give the same history however they
were cut into batches: a restarted worker reproduces every user vector exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

Entry = list  # [item_id: str, weight: float, last_ts: int]


def merge_history(history: Iterable[Entry], events: Iterable[tuple[str, float, int]], cap: int) -> list[Entry]:
    """Fold ``(item, weight, ts)`` events into a recent-first history of at most ``cap`` items.

    The cap applies after every event, not once per call, so an item that fell out and came
    back restarts from zero whether or not both events arrived in the same batch.

    >>> merge_history([["a", 1.0, 5]], [("b", 1.0, 6), ("a", 4.0, 7)], cap=10)
    [['a', 5.0, 7], ['b', 1.0, 6]]
    >>> merge_history([["a", 1.0, 5], ["b", 1.0, 4]], [("c", 1.0, 6)], cap=2)
    [['c', 1.0, 6], ['a', 1.0, 5]]
    """
    if cap <= 0:
        raise ValueError("cap must be > 0")
    latest: dict[str, Entry] = {}
    for item, weight, ts in reversed(list(history)[:cap]):  # oldest first: dict order is recency order
        latest[item] = [item, float(weight), int(ts)]
    for item, weight, ts in events:
        entry = latest.pop(item, [item, 0.0, ts])
        latest[item] = [item, entry[1] + weight, ts]
        if len(latest) > cap:
            del latest[next(iter(latest))]
    return list(reversed(latest.values()))
