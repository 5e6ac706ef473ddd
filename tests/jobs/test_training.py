"""The streamed training log (recstream/jobs/training.py): compact columns built a chunk at a time."""

from __future__ import annotations

import numpy as np
import pytest
from recstream.models.als import ALSConfig

from recstream.contracts.events import Event
from recstream.jobs import training
from recstream.jobs.sources import Record
from tests.streams.scenario import world

CHUNK = 7


def in_memory_matrix(events: list[Event], cfg: ALSConfig) -> np.ndarray:
    """r built the plain way, from the whole list of events: ids in order of first use, summed weights."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    for e in events:
        users.setdefault(e.user_id, len(users))
        items.setdefault(e.item_id, len(items))
    r = np.zeros((len(users), len(items)))
    for e in events:
        r[users[e.user_id], items[e.item_id]] += cfg.click_weight if e.type == "click" else cfg.view_weight
    return r


@pytest.mark.parametrize("n_events", [CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3, 1_000])
def test_the_streamed_log_gives_the_matrix_of_the_whole_list(monkeypatch, n_events: int):
    monkeypatch.setattr(training, "EVENTS_PER_CHUNK", CHUNK)
    _, items, events = world(n_users=20, n_items=10, n_events=1_000)
    events = events[:n_events]
    records = [Record("item", item) for item in items] + [Record("event", event) for event in events]
    cfg = ALSConfig(view_weight=1.0, click_weight=4.0)
    log = training.collect(records)
    assert len(log) == n_events
    assert log.ts.tolist() == [e.ts for e in events]
    assert log.clicks.tolist() == [e.type == "click" for e in events]
    np.testing.assert_array_equal(training.interactions(log, cfg).toarray(), in_memory_matrix(events, cfg))
    assert log.content == {item.item_id: item for item in items}


def test_events_added_after_the_columns_were_read_join_them(monkeypatch):
    monkeypatch.setattr(training, "EVENTS_PER_CHUNK", CHUNK)
    _, _, events = world(n_users=5, n_items=5, n_events=30)
    log = training.collect(Record("event", e) for e in events[:10])
    assert len(log.users) == 10
    for event in events[10:]:
        log.add(Record("event", event))
    assert log.ts.tolist() == [e.ts for e in events]


def test_an_empty_log_has_empty_columns_and_is_refused_by_train():
    log = training.collect([])
    assert [len(column) for column in log.columns()] == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="no events"):
        training.train(log, ALSConfig())
