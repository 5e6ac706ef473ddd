"""Training (recstream/jobs/training.py): the streamed log, compact columns built a chunk at a time; publishing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
from recstream.models import artifacts as artifacts_module
from recstream.models.als import ALSConfig, train_als
from recstream.models.artifacts import list_versions

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.contracts.keys import Keys
from recstream.jobs import training
from recstream.jobs.sources import Record
from tests.streams.scenario import world

CHUNK = 7


def in_memory_matrix(events: list[Event]) -> np.ndarray:
    """r built the plain way, from the whole list of events: ids in order of first use, summed weights (a pair with
    a dislike: minus its dislikes' weights)."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    for e in events:
        users.setdefault(e.user_id, len(users))
        items.setdefault(e.item_id, len(items))
    weights = {"view": 1.0, "click": 4.0, "rating": 1.0, "dislike": -4.0}  # the defaults, typed out
    positive, negative = np.zeros((len(users), len(items))), np.zeros((len(users), len(items)))
    for e in events:
        w = weights[e.type] * (e.value or 1.0)
        (negative if w < 0 else positive)[users[e.user_id], items[e.item_id]] += w
    return np.where(negative < 0, negative, positive)


def with_other_types(events: list[Event]) -> list[Event]:
    """Every 5th event a rating of 1–5 stars, every 11th a dislike."""
    return [
        e.model_copy(update={"type": "dislike"}) if k % 11 == 10
        else e.model_copy(update={"type": "rating", "value": float(k % 5 + 1)}) if k % 5 == 4
        else e
        for k, e in enumerate(events)
    ]  # fmt: skip


@pytest.mark.parametrize("n_events", [CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3, 1_000])
def test_the_streamed_log_gives_the_matrix_of_the_whole_list(monkeypatch, n_events: int):
    monkeypatch.setattr(training, "EVENTS_PER_CHUNK", CHUNK)
    _, items, events = world(n_users=20, n_items=10, n_events=1_000)
    events = with_other_types(events[:n_events])
    records = [Record("item", item) for item in items] + [Record("event", event) for event in events]
    log = training.collect(records, feedback=DEFAULT_FEEDBACK)
    assert len(log) == n_events
    assert log.ts.tolist() == [e.ts for e in events]
    assert log.positive.tolist() == [e.type in ("click", "rating") for e in events]
    np.testing.assert_array_equal(training.interactions(log).toarray(), in_memory_matrix(events))
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
    assert [len(column) for column in log.columns()] == [0, 0, 0, 0, 0]
    with pytest.raises(training.EmptyLog, match="no valid events"):
        training.train(log, ALSConfig())


def test_an_event_id_repeated_on_the_log_is_counted_once_its_first_event_kept(monkeypatch):
    """A retried POST or a file imported twice puts the same ids on the log again; the workers drop a repeat only
    within their de-duplication window, and training counted every copy. The key is the user and the id, as the
    workers' (``user:event_id``): another user's event of the same id, and events without an id, all count."""
    monkeypatch.setattr(training, "EVENTS_PER_CHUNK", CHUNK)
    _, _, events = world(n_users=5, n_items=5, n_events=20)
    events = [e.model_copy(update={"event_id": f"e{k}"}) for k, e in enumerate(events)]
    other_user = events[3].model_copy(update={"user_id": "someone-else"})
    no_id = events[4].model_copy(update={"event_id": None})
    repeats = [events[0], events[19].model_copy(update={"type": "dislike"}), events[3]]  # across chunks, 2nd changed
    log = training.collect(Record("event", e) for e in [*events, other_user, no_id, no_id, *repeats])
    kept = [*events, other_user, no_id, no_id]
    assert (len(log), log.repeated) == (len(kept), 3)
    assert log.ts.tolist() == [e.ts for e in kept]
    np.testing.assert_array_equal(training.interactions(log).toarray(), in_memory_matrix(kept))
    log.add(Record("event", events[5]))  # after the columns were read: a repeat of an id they hold
    assert (len(log), log.repeated) == (len(kept), 4)


def test_an_item_named_only_by_a_dropped_repeat_is_not_in_the_model():
    """The same user and id for another item (a producer reusing ids): the first event is kept, and the item only the
    repeat named would be an item without a single event; the items keep their order of first use."""
    first = Event(type="click", user_id="u1", item_id="i1", ts=10**12, event_id="e1")
    other = first.model_copy(update={"item_id": "i3", "event_id": "e2"})
    events = [first, first.model_copy(update={"item_id": "i2"}), other]
    log = training.collect(Record("event", e) for e in events)
    assert log.items.tolist() == [0, 1] and log.item_ids == {"i1": 0, "i3": 1}
    np.testing.assert_array_equal(training.interactions(log).toarray(), in_memory_matrix([events[0], events[2]]))


def test_the_model_keeps_every_users_batch_vector_the_fit_made():
    """The online step's anchor reads a user's row of the fit's user factors by id: the ids in the log's numbering."""
    _, _, events = world(n_users=20, n_items=15, n_events=300)
    log = training.collect([Record("event", e) for e in events])
    cfg = ALSConfig(factors=4, random_state=3)
    artifacts, _ = training.train(log, cfg, holdout=0)
    assert artifacts.user_ids == list(log.user_ids) and len(artifacts.user_ids) == 20
    fit = train_als(training.interactions(log), cfg)
    np.testing.assert_array_equal(artifacts.user_factors, fit.user_factors)


@pytest.mark.integration
async def test_a_publish_leaves_the_newest_versions_and_the_one_it_replaced(isolated_settings, tmp_path):
    """RECSTREAM_MODEL_KEEP=2. A rollback points model:current at the oldest version: the next publish keeps it (a
    worker may still serve it), the one after removes it."""
    settings = isolated_settings.replace(model_dir=tmp_path / "models", model_keep=2)
    _, _, events = world(n_users=20, n_items=15, n_events=300)
    artifacts, _ = training.train(training.collect([Record("event", e) for e in events]), ALSConfig(factors=4))
    start = datetime(2026, 12, 6, tzinfo=UTC)

    async def publish(minute: int) -> str:
        return await training.publish(
            settings, dataclasses.replace(artifacts, created_at=start + timedelta(minutes=minute))
        )

    first, second = await publish(0), await publish(1)
    client = redis.Redis.from_url(settings.redis.url)
    current = Keys.of(settings)("model:current")
    client.set(current, first)  # a rollback
    third = await publish(2)
    assert list_versions(settings.model.dir) == [first, second, third]
    fourth = await publish(3)
    assert list_versions(settings.model.dir) == [third, fourth]
    assert client.get(current) == fourth.encode()


@pytest.mark.integration
async def test_a_publish_whose_old_versions_cannot_be_removed_still_publishes(
    isolated_settings, tmp_path, monkeypatch, caplog
):
    """The new version is live when pruning runs: a folder that refuses a removal is a warning, and the next publish
    removes what is left."""
    settings = isolated_settings.replace(model_dir=tmp_path / "models", model_keep=2)
    _, _, events = world(n_users=20, n_items=15, n_events=300)
    artifacts, _ = training.train(training.collect([Record("event", e) for e in events]), ALSConfig(factors=4))
    start = datetime(2026, 12, 6, tzinfo=UTC)
    versions = [
        await training.publish(settings, dataclasses.replace(artifacts, created_at=start + timedelta(minutes=m)))
        for m in range(2)
    ]

    def refuse(path: object, ignore_errors: bool = False) -> None:  # write_model's cleanup ignores errors
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(artifacts_module.shutil, "rmtree", refuse)
    third = await training.publish(settings, dataclasses.replace(artifacts, created_at=start + timedelta(minutes=2)))
    client = redis.Redis.from_url(settings.redis.url)
    assert client.get(Keys.of(settings)("model:current")) == third.encode()
    assert f"model {third} published; removing old versions failed" in caplog.text
    assert "Permission denied" in caplog.text and list_versions(settings.model.dir) == [*versions[1:], third]
    monkeypatch.undo()
    fourth = await training.publish(settings, dataclasses.replace(artifacts, created_at=start + timedelta(minutes=3)))
    assert sorted(p.name for p in settings.model.dir.iterdir()) == [third, fourth]
