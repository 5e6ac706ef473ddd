from __future__ import annotations

import random

from models.history import merge_history


def test_history_is_the_same_however_events_are_batched():
    rng = random.Random(0)
    events = [(f"i{rng.randrange(12)}", rng.choice([1.0, 4.0])) for _ in range(500)]
    whole = merge_history([], events, cap=8)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(events)), 15))
        history: list = []
        for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
            history = merge_history(history, events[start:end], cap=8)
        assert history == whole


def test_history_is_recent_first_capped_and_sums_weights():
    history = merge_history([], [("a", 1.0), ("b", 1.0), ("a", 4.0), ("c", 1.0)], cap=2)
    assert history == [["c", 1.0], ["a", 5.0]]
