"""Turn a batch of valid events into counter deltas: one Redis round trip per batch, not per event.

Pure: no Kafka, no Redis. Everything here is an integer sum or a max, so the result does not
depend on how a stream was cut into batches, which is what lets a restarted worker reproduce
a clean run exactly. Deltas are grouped by the Redis key they go to (a segment, a trend epoch,
a user), because the apply script reads and writes each key in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import TypeVar

import numpy as np

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.models.ctr import trend_epochs, trend_increment

DEFAULT_SEGMENT = "default"
T = TypeVar("T")


@dataclass
class CounterDeltas:
    """What a batch adds: per item ``[views, clicks, first_ts]``, per segment and item ``[views, clicks]``,
    totals, per trend key and item the fixed-point increment, per user and item the latest ts (seen), per events
    partition its events and where each item first came in them; and, for the metrics only (not Redis),
    ``[views, clicks]`` per experiment variant label (None: none)."""

    items: dict[str, list[int]] = field(default_factory=dict)
    segments: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    trend: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    variants: dict[str | None, list[int]] = field(default_factory=dict)
    clock: int = 0
    at_clock: int = 0
    """Events stamped at ``clock`` itself (capped as it is): the batch script counts them per instant, and a clock
    that stands still for ``pool.graduate_standing_events`` of them measures no age (apply_batch.lua, step 7)."""
    counted: dict[int, int] = field(default_factory=dict)
    """Events partition → the batch's events from it. The script adds them to the partition's count (key
    ``counted``): the events applied from one partition, a function of its log alone, whatever the batches."""
    firsts: dict[int, dict[str, int]] = field(default_factory=dict)
    """Events partition (each of ``counted``) → item → the partition's events in the batch before the item's first
    one there. Added to the count held before the batch, it is where the item came first in the partition in this
    batch; the least over batches is where it came first there, whatever the batches: what the item's age in events
    while the clock stands is estimated from (apply_batch.lua step 3b, serving/features.py)."""


def aggregate(
    events: Sequence[Event],
    segment_of_user: Mapping[str, str],
    half_life_ms: int,
    epoch_half_lives: int,
    arrived_ms: Sequence[int] | None = None,
    ctr_column: Mapping[str, int] = DEFAULT_FEEDBACK.ctr_column,
    partitions: Sequence[tuple[str, int]] | None = None,
) -> CounterDeltas:
    """Sum a batch's views and clicks per item, per (segment, item), overall and per trend key.

    Vectorized: ids become integer codes, and each sum or max is one numpy call (int64: exact) over the batch, not
    dict updates per event; a dict lists its entries in the order of their first event.

    ``ctr_column`` (recstream/contracts/feedback.py) says which types count as a view (0) or a click (1); an event
    of any other type (a purchase, a dislike) counts the item with +0 and enters the seen set, nothing else.

    A user without a known segment counts in ``default``. Each event adds to the two trend
    epochs of :func:`models.ctr.trend_epochs`; the seen set keeps the latest ts per (user, item).

    The event clock (new items graduate from the pool by age on it) is the largest ts, each capped
    by its event's arrival time (``arrived_ms``: its record's timestamp, never past the wall clock):
    an event stamped ahead of its arrival, which the contract accepts up to a day ahead, would
    otherwise move the clock forward for good. A cap per event, not per batch, keeps the clock
    independent of batch cuts.

    ``partitions``, each event's (topic, partition) of the events topic, gives :attr:`CounterDeltas.counted` and
    ``firsts``, by partition number.

    >>> from recstream.contracts.events import Event
    >>> e = [Event(type=t, user_id="u", item_id="i", ts=10**12 + k) for k, t in enumerate(["view", "click"])]
    >>> d = aggregate(e, {"u": "age18-24.F"}, half_life_ms=3_600_000, epoch_half_lives=8)
    >>> d.items["i"], d.segments, d.totals["clicks:age18-24.F"], d.seen, d.variants
    ([1, 1, 1000000000000], {'age18-24.F': {'i': [1, 1]}}, 1, {'u': {'i': 1000000000001}}, {None: [1, 1]})
    >>> late = aggregate(e, {}, 3_600_000, 8, arrived_ms=[10**12 + 5, 10**12 - 7])  # the click arrived "before" it
    >>> late.clock, late.at_clock  # the view's ts, and only the view is at it (the click capped earlier)
    (1000000000000, 1)
    >>> d = aggregate([Event(type="dislike", user_id="u", item_id="j", ts=10**12)], {}, 3_600_000, 8)
    >>> d.items, d.totals, d.seen, d.variants
    ({'j': [0, 0, 1000000000000]}, {}, {'u': {'j': 1000000000000}}, {})
    >>> d = aggregate(e + e[:1], {}, 3_600_000, 8, partitions=[("events", 1), ("events", 0), ("events", 0)])
    >>> d.counted, d.firsts  # "i" came first in partition 0 at its batch's first event of it (the click)
    ({1: 1, 0: 2}, {1: {'i': 0}, 0: {'i': 0}})
    """
    deltas = CounterDeltas()
    if not events:
        return deltas
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    stamped = ts if arrived_ms is None else np.minimum(ts, np.asarray(arrived_ms, dtype=np.int64))
    deltas.clock = int(stamped.max())
    deltas.at_clock = int(np.count_nonzero(stamped == deltas.clock))
    item_names, item = _codes(list(map(attrgetter("item_id"), events)))
    user_names, user = _codes(list(map(attrgetter("user_id"), events)))
    types = map(attrgetter("type"), events)
    col = np.fromiter(map(ctr_column.get, types, repeat(-1)), dtype=np.intp, count=len(events))
    n_items = len(item_names)

    first, pair = _first_seen(user * n_items + item)
    latest = np.zeros(len(first), dtype=np.int64)
    np.maximum.at(latest, pair, ts)
    for u, i, t in zip(user[first].tolist(), item[first].tolist(), latest.tolist(), strict=True):
        deltas.seen.setdefault(user_names[u], {})[item_names[i]] = t
    earliest = np.full(n_items, np.iinfo(np.int64).max)
    np.minimum.at(earliest, item, ts)
    views, clicks = _by_column(item, col, n_items)  # col −1 (a purchase, a dislike): the item is counted with +0
    deltas.items = {i: [v, c, t] for i, v, c, t in zip(item_names, views, clicks, earliest.tolist(), strict=True)}
    if partitions is not None:
        _count_partitions(deltas, partitions, item_names, item)

    ctr = np.flatnonzero(col >= 0)  # from here on, the events that count as a view or a click
    col, item, ts = col[ctr], item[ctr], ts[ctr]
    segment_names, segment = _codes([segment_of_user.get(u, DEFAULT_SEGMENT) for u in user_names])
    segment_names, segment = _renumbered(segment_names, segment[user[ctr]])
    first, pair = _first_seen(segment * n_items + item)
    views, clicks = _by_column(pair, col, len(first))
    for s, i, v, c in zip(segment[first].tolist(), item[first].tolist(), views, clicks, strict=True):
        deltas.segments.setdefault(segment_names[s], {})[item_names[i]] = [v, c]
    totals = {"views": len(ctr) - int(col.sum()), "clicks": int(col.sum())}
    for name, v, c in zip(segment_names, *_by_column(segment, col, len(segment_names)), strict=True):
        totals.update({f"views:{name}": v, f"clicks:{name}": c})
    deltas.totals = {key: n for key, n in totals.items() if n}
    variant_names, variant = _codes([events[k].variant for k in ctr.tolist()])
    views, clicks = _by_column(variant, col, len(variant_names))
    deltas.variants = {name: [v, c] for name, v, c in zip(variant_names, views, clicks, strict=True)}

    # trend: each event adds to (its column, its current epoch), then (its column, its previous epoch); keys in the
    # order (views, clicks) × ascending epoch, each key's items in the order they were first added to it
    current, previous = trend_epochs(ts, half_life_ms, epoch_half_lives)
    epochs = np.unique(np.concatenate([current, previous]))
    key = (col[:, None] * len(epochs) + np.searchsorted(epochs, np.stack([current, previous], axis=1))).ravel()
    increments = np.stack([trend_increment(ts, epoch, half_life_ms) for epoch in (current, previous)], axis=1)
    item = np.repeat(item, 2)
    first, entry = _first_seen(key * n_items + item)
    sums = np.zeros(len(first), dtype=np.int64)  # int64 sums are exact: a key stays below 2^53 (models/ctr.py)
    np.add.at(sums, entry, increments.ravel())
    per_key: dict[int, dict[str, int]] = {}
    for k, i, total in zip(key[first].tolist(), item[first].tolist(), sums.tolist(), strict=True):
        per_key.setdefault(k, {})[item_names[i]] = total
    names = [f"{what}:{e}" for what in ("views", "clicks") for e in epochs.tolist()]
    deltas.trend = {names[k]: per_key[k] for k in sorted(per_key)}
    return deltas


def _count_partitions(
    deltas: CounterDeltas, partitions: Sequence[tuple[str, int]], item_names: list[str], item: np.ndarray
) -> None:
    """Fill ``counted`` and ``firsts``: each event's position among its partition's events of the batch (a stable
    sort by partition), and for each (partition, item) the position of its first event, the least one."""
    names, part = _codes([number for _, number in partitions])
    sizes = np.bincount(part, minlength=len(names))
    order = np.argsort(part, kind="stable")
    position = np.empty(len(part), dtype=np.int64)
    position[order] = np.arange(len(part)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    first, _ = _first_seen(part * len(item_names) + item)
    deltas.counted = dict(zip(names, sizes.tolist(), strict=True))
    of = part[first]
    for k, name in enumerate(names):
        mine = first[of == k]
        deltas.firsts[name] = dict(
            zip(map(item_names.__getitem__, item[mine].tolist()), position[mine].tolist(), strict=True)
        )


def _codes(values: list[T]) -> tuple[list[T], np.ndarray]:
    """The distinct values in the order they first appear, and each value's index among them."""
    names = list(dict.fromkeys(values))
    index = {value: k for k, value in enumerate(names)}
    return names, np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))


def _renumbered(names: list[T], codes: np.ndarray) -> tuple[list[T], np.ndarray]:
    """``names`` and ``codes`` of the values ``codes`` holds, renumbered in the order they first appear in it."""
    first, group = _first_seen(codes)
    return [names[k] for k in codes[first].tolist()], group


def _first_seen(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of equal codes numbered in the order they first appear: each group's first position, each code's group.
    Numbered so, every dict of the deltas lists its entries in event order, not in the codes' sort order."""
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first)
    group = np.empty_like(order)
    group[order] = np.arange(len(order))
    return first[order], group[inverse]


def _by_column(group: np.ndarray, col: np.ndarray, size: int) -> tuple[list[int], list[int]]:
    """Views (column 0) and clicks (column 1) per group."""
    return np.bincount(group[col == 0], minlength=size).tolist(), np.bincount(group[col == 1], minlength=size).tolist()
