"""Turn a batch of valid events into counter deltas: one Redis round trip per batch, not per event.

Pure: no Kafka, no Redis. Everything here is an integer sum or a max, so the result does not
depend on how a stream was cut into batches, which is what lets a restarted worker reproduce
a clean run exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.ctr import trend_epochs, trend_increment
from recstream.events import Event

DEFAULT_SEGMENT = "default"


@dataclass
class CounterDeltas:
    """What a batch adds: per item ``[views, clicks, first_ts]``, per (segment, item), totals, trends."""

    items: dict[str, list[int]] = field(default_factory=dict)
    segments: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    trend: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    clock: int = 0


def aggregate(
    events: Sequence[Event], segment_of_user: Mapping[str, str], half_life_ms: int, epoch_half_lives: int
) -> CounterDeltas:
    """Sum a batch's views and clicks per item, per (segment, item), overall and per trend key.

    A user without a known segment counts in ``default``. Each event adds to the two trend
    epochs of :func:`models.ctr.trend_epochs`; the seen set keeps the latest ts per (user, item).

    >>> from recstream.events import Event
    >>> e = [Event(type=t, user_id="u", item_id="i", ts=10**12 + k) for k, t in enumerate(["view", "click"])]
    >>> d = aggregate(e, {"u": "age18-24.F"}, half_life_ms=3_600_000, epoch_half_lives=8)
    >>> d.items["i"], dict(d.segments), dict(d.totals)["clicks:age18-24.F"]
    ([1, 1, 1000000000000], {('age18-24.F', 'i'): [1, 1]}, 1)
    """
    deltas = CounterDeltas()
    if not events:
        return deltas
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    current, previous = trend_epochs(ts, half_life_ms, epoch_half_lives)
    inc_current = trend_increment(ts, current, half_life_ms)
    inc_previous = trend_increment(ts, previous, half_life_ms)
    for k, event in enumerate(events):
        click = event.type == "click"
        what = "clicks" if click else "views"
        segment = segment_of_user.get(event.user_id, DEFAULT_SEGMENT)
        counts = deltas.items.get(event.item_id)
        if counts is None:
            counts = deltas.items[event.item_id] = [0, 0, event.ts]
        counts[1 if click else 0] += 1
        counts[2] = min(counts[2], event.ts)
        deltas.segments[segment, event.item_id][1 if click else 0] += 1
        deltas.totals[what] += 1
        deltas.totals[f"{what}:{segment}"] += 1
        deltas.trend[f"{what}:{int(current[k])}", event.item_id] += int(inc_current[k])
        deltas.trend[f"{what}:{int(previous[k])}", event.item_id] += int(inc_previous[k])
        key = (event.user_id, event.item_id)
        deltas.seen[key] = max(deltas.seen.get(key, 0), event.ts)
        deltas.clock = max(deltas.clock, event.ts)
    return deltas
