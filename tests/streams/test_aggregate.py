"""recstream/store/aggregate.py sums a batch with numpy; these tests hold it to the plain per-event fold it stands
for, to the entry and to the order of every dict (the apply script gets the deltas as they are)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from recstream.models.ctr import trend_epochs, trend_increment

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.store.aggregate import DEFAULT_SEGMENT, CounterDeltas, aggregate

HALF_LIFE_MS, EPOCH_HALF_LIVES = 3_600_000, 2  # epochs of 2 h: a batch over a few hours spans several
SEGMENTS = {"u0": "age18-24.F", "u1": "age25-34.M", "u2": "age18-24.F"}  # u3, u4: the default segment


def per_event(events: list[Event], arrived_ms: list[int]) -> CounterDeltas:
    """The deltas event by event, from aggregate's docstring: what the vectorized sums must equal."""
    deltas, ctr_column = CounterDeltas(), DEFAULT_FEEDBACK.ctr_column
    keys: dict[tuple[int, int], dict[str, int]] = {}
    totals: dict[str, list[int]] = {}  # "": overall, else per segment; [views, clicks]
    for event in events:
        item, ts = event.item_id, event.ts
        seen = deltas.seen.setdefault(event.user_id, {})
        seen[item] = max(seen.get(item, ts), ts)
        counts = deltas.items.setdefault(item, [0, 0, ts])
        counts[2] = min(counts[2], ts)
        col = ctr_column.get(event.type)
        if col is None:
            continue
        counts[col] += 1
        segment = SEGMENTS.get(event.user_id, DEFAULT_SEGMENT)
        deltas.segments.setdefault(segment, {}).setdefault(item, [0, 0])[col] += 1
        deltas.variants.setdefault(event.variant, [0, 0])[col] += 1
        for total in ("", segment):
            totals.setdefault(total, [0, 0])[col] += 1
        for epoch in (int(e[0]) for e in trend_epochs([ts], HALF_LIFE_MS, EPOCH_HALF_LIVES)):
            key = keys.setdefault((col, epoch), {})
            key[item] = key.get(item, 0) + int(trend_increment([ts], [epoch], HALF_LIFE_MS)[0])
    names = {(col, epoch): f"{('views', 'clicks')[col]}:{epoch}" for col, epoch in keys}
    deltas.trend = {names[key]: keys[key] for key in sorted(keys)}
    deltas.totals = {
        f"{name}:{total}" if total else name: n
        for total, counts in totals.items()
        for name, n in zip(("views", "clicks"), counts, strict=True)
        if n
    }
    stamped = [min(event.ts, arrived) for event, arrived in zip(events, arrived_ms, strict=True)]
    deltas.clock = max(stamped)
    deltas.at_clock = stamped.count(deltas.clock)
    return deltas


events = st.lists(
    st.builds(
        Event,
        type=st.sampled_from(sorted(DEFAULT_FEEDBACK.root)),
        user_id=st.sampled_from([f"u{k}" for k in range(5)]),
        item_id=st.sampled_from([f"i{k}" for k in range(6)]),
        ts=st.integers(10**12, 10**12 + 6 * HALF_LIFE_MS) | st.just(10**12 + 6 * HALF_LIFE_MS),  # ties at the clock
        variant=st.sampled_from([None, "exp:a", "exp:b"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events=events, late=st.lists(st.integers(-HALF_LIFE_MS, HALF_LIFE_MS), min_size=40, max_size=40))
def test_the_sums_are_the_per_event_fold_in_its_order(events: list[Event], late: list[int]) -> None:
    arrived = [event.ts + delay for event, delay in zip(events, late, strict=False)]
    got = aggregate(events, SEGMENTS, HALF_LIFE_MS, EPOCH_HALF_LIVES, arrived, DEFAULT_FEEDBACK.ctr_column)
    want = per_event(events, arrived)
    assert repr(got) == repr(want)  # repr: equal dicts in another order would pass ==
