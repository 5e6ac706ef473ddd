"""Turn a batch of valid events into counter deltas: one Redis round trip per batch, not per event.

Pure: no Kafka, no Redis. Everything here is an integer sum or a max, so the result does not
depend on how a stream was cut into batches, which is what lets a restarted worker reproduce
a clean run exactly. Deltas are grouped by the Redis key they go to (a segment, a trend epoch,
a user), because the apply script reads and writes each key in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.models.ctr import trend_epochs, trend_increment

DEFAULT_SEGMENT = "default"


@dataclass
class CounterDeltas:
    """What a batch adds: per item ``[views, clicks, first_ts]``, per segment and item ``[views, clicks]``,
    totals, per trend key and item the fixed-point increment, per user and item the latest ts (seen);
    and, for the metrics only (not Redis), ``[views, clicks]`` per experiment variant label (None: none)."""

    items: dict[str, list[int]] = field(default_factory=dict)
    segments: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    trend: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    variants: dict[str | None, list[int]] = field(default_factory=dict)
    clock: int = 0


def aggregate(
    events: Sequence[Event],
    segment_of_user: Mapping[str, str],
    half_life_ms: int,
    epoch_half_lives: int,
    arrived_ms: Sequence[int] | None = None,
    ctr_column: Mapping[str, int] = DEFAULT_FEEDBACK.ctr_column,
) -> CounterDeltas:
    """Sum a batch's views and clicks per item, per (segment, item), overall and per trend key.

    ``ctr_column`` (recstream/contracts/feedback.py) says which types count as a view (0) or a click (1); an event
    of any other type (a purchase, a dislike) counts the item with +0 and enters the seen set, nothing else.

    A user without a known segment counts in ``default``. Each event adds to the two trend
    epochs of :func:`models.ctr.trend_epochs`; the seen set keeps the latest ts per (user, item).

    The event clock (new items graduate from the pool by age on it) is the largest ts, each capped
    by its event's arrival time (``arrived_ms``: its record's timestamp, never past the wall clock):
    an event stamped ahead of its arrival, which the contract accepts up to a day ahead, would
    otherwise move the clock forward for good. A cap per event, not per batch, keeps the clock
    independent of batch cuts.

    >>> from recstream.contracts.events import Event
    >>> e = [Event(type=t, user_id="u", item_id="i", ts=10**12 + k) for k, t in enumerate(["view", "click"])]
    >>> d = aggregate(e, {"u": "age18-24.F"}, half_life_ms=3_600_000, epoch_half_lives=8)
    >>> d.items["i"], d.segments, d.totals["clicks:age18-24.F"], d.seen, d.variants
    ([1, 1, 1000000000000], {'age18-24.F': {'i': [1, 1]}}, 1, {'u': {'i': 1000000000001}}, {None: [1, 1]})
    >>> aggregate(e, {}, 3_600_000, 8, arrived_ms=[10**12 + 5, 10**12 - 7]).clock  # the click arrived "before" it
    1000000000000
    >>> d = aggregate([Event(type="dislike", user_id="u", item_id="j", ts=10**12)], {}, 3_600_000, 8)
    >>> d.items, d.totals, d.seen, d.variants
    ({'j': [0, 0, 1000000000000]}, {}, {'u': {'j': 1000000000000}}, {})
    """
    deltas = CounterDeltas()
    if not events:
        return deltas
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    current, previous = trend_epochs(ts, half_life_ms, epoch_half_lives)
    # the trend keys this batch touches: (views, clicks) × each distinct epoch, named once
    epochs = np.unique(np.concatenate([current, previous])).tolist()
    trend_keys = {
        (col, e): deltas.trend.setdefault(f"{what}:{e}", {})
        for col, what in enumerate(("views", "clicks"))
        for e in epochs
    }
    items, segments, seen, variants, totals = deltas.items, deltas.segments, deltas.seen, deltas.variants, [0, 0]
    per_segment: dict[str, list[int]] = {}
    columns = zip(
        events,
        ts.tolist(),
        current.tolist(),
        previous.tolist(),
        trend_increment(ts, current, half_life_ms).tolist(),
        trend_increment(ts, previous, half_life_ms).tolist(),
        strict=True,
    )
    for event, t, cur, prev, inc_cur, inc_prev in columns:
        item, user = event.item_id, event.user_id
        user_seen = seen.get(user)
        if user_seen is None:
            seen[user] = {item: t}
        elif t > user_seen.get(item, 0):
            user_seen[item] = t
        col = ctr_column.get(event.type)
        counts = items.get(item)
        if counts is None:
            counts = items[item] = [0, 0, t]
        elif t < counts[2]:
            counts[2] = t
        if col is None:  # outside CTR (a purchase, a dislike): the item is counted, with +0 views and clicks
            continue
        counts[col] += 1
        segment = segment_of_user.get(user, DEFAULT_SEGMENT)
        seg_items = segments.get(segment)
        if seg_items is None:
            seg_items = segments[segment] = {}
            per_segment[segment] = [0, 0]
        seg_counts = seg_items.get(item)
        if seg_counts is None:
            seg_items[item] = [1 - col, col]
        else:
            seg_counts[col] += 1
        per_segment[segment][col] += 1
        totals[col] += 1
        per_variant = variants.get(event.variant)
        if per_variant is None:
            per_variant = variants[event.variant] = [0, 0]
        per_variant[col] += 1
        key = trend_keys[col, cur]
        key[item] = key.get(item, 0) + inc_cur
        key = trend_keys[col, prev]
        key[item] = key.get(item, 0) + inc_prev
    deltas.totals = {name: n for name, n in zip(("views", "clicks"), totals, strict=True) if n}
    for segment, (views, clicks) in per_segment.items():
        deltas.totals.update({f"{name}:{segment}": n for name, n in (("views", views), ("clicks", clicks)) if n})
    deltas.trend = {suffix: increments for suffix, increments in deltas.trend.items() if increments}
    clock = ts if arrived_ms is None else np.minimum(ts, np.asarray(arrived_ms, dtype=np.int64))
    deltas.clock = int(clock.max())
    return deltas
