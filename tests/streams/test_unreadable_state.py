"""A value in Redis that no worker writes (another writer's, a hand edit) never stops a real worker: a fold-in log
entry or stored fold-in that is not a vector of the model's size is skipped, a model pointer that is not UTF-8 is a
broken version (the model served is kept), a user's history of another shape is read as empty. Each skip is logged
and counted; the worker stays up and the next events' state is what it would be without the bad value."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pytest
import redis
from recstream.models.artifacts import read_model

from recstream.contracts.events import Event, ItemEvent, partition_for
from recstream.contracts.settings import Settings
from recstream.shell.demo import metric_sum
from recstream.shell.infra import Child
from tests.conftest import wait_until
from tests.streams.scenario import T0, applied_events, publish, trained, world

pytestmark = pytest.mark.integration


def unreadable(worker: Child, kind: str) -> float:
    return metric_sum(worker.metrics(), f'recstream_worker_unreadable_state_total{{kind="{kind}"}}')


def followed(worker: Child) -> float:
    """Fold-in log entries that parsed, applied or skipped as unfit: recstream_worker_fold_ins_followed_total."""
    return metric_sum(worker.metrics(), "recstream_worker_fold_ins_followed_total ")


def candidates(client: redis.Redis, user: str) -> list[str]:
    raw = client.get(f"rs:user:{user}:cand")
    return [row[0] for row in orjson.loads(raw)] if raw else []


async def a_trained_world(settings: Settings, tmp_path) -> tuple[Settings, str, list[ItemEvent], np.ndarray]:
    """A 16-factor model, its items plus the new items ok1..ok4, and a fold-in vector that makes a new item the
    first candidate of whoever clicked i1 alone: 1,000 × i1's factor (i1 is in their history, so not a candidate)."""
    _, items, events = world(n_users=30, n_items=40, n_events=2_000)
    settings, version = await trained(settings, tmp_path, events, items)
    model = read_model(settings.model.dir, version)
    winner = 1_000 * model.item_factors[model.item_ids.index("i1")]
    new = [ItemEvent(op="new", item_id=f"ok{k}", ts=T0, created_ts=T0, categories=["news"]) for k in range(1, 5)]
    return settings, version, [*items, *new], winner.astype("<f4")


def click(user: str, item: str, at: int = 0) -> Event:
    return Event(type="click", user_id=user, item_id=item, ts=T0 + at)


async def test_malformed_fold_in_log_entries_are_skipped_and_the_worker_keeps_applying(
    isolated_settings, worker_factory, tmp_path
):
    """A 3-byte vector in the log killed the worker (ValueError out of the fold-in follower ended the faust app); a
    vector of 2 values for a 16-factor model did the same (a shape mismatch in the index)."""
    settings, version, items, winner = await a_trained_world(isolated_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, items=items, events=[click("w0", "i2")])
    wait_until(lambda: candidates(client, "w0"), what="the model loaded")
    good = winner.tobytes()
    for fields in (
        {"version": version, "item": "zz1", "vec": b"abc"},
        {"version": version, "item": "ok1", "vec": np.ones(2, "<f4").tobytes()},
        {"version": version, "item": "ok1", "vec": np.full(16, np.nan, "<f4").tobytes()},
        {"version": version, "item": b"\xff", "vec": good},
        {"item": "ok1", "vec": good},
        {"version": version, "item": "ok1", "vec": good},  # the one to apply
    ):
        client.xadd("rs:foldin:log", fields)
    # the follower may read the entries in two reads, the good one after the bad ones were counted: wait until the
    # three that parse (two unfit, one good) went through it too
    wait_until(
        lambda: unreadable(worker, "fold_in_log") == 5 and followed(worker) >= 3,
        what="the five bad entries counted, the good one followed",
    )

    await publish(settings, events=[click("n1", "i1", at=1)])
    wait_until(lambda: applied_events(client, "rs") == 2, what="the next event applied")
    wait_until(lambda: candidates(client, "n1"), what="n1's candidates")
    assert candidates(client, "n1")[0] == "ok1", "the good entry after the bad ones was applied"
    assert worker.alive() and unreadable(worker, "fold_in_log") == 5


async def test_bad_stored_fold_ins_are_skipped_and_the_model_still_loads(isolated_settings, worker_factory, tmp_path):
    """8 bytes stored under the version for a 16-factor model: every batch failed loading it (shape mismatch) and
    none applied, for good."""
    settings, version, items, winner = await a_trained_world(isolated_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    client.hset(
        f"rs:foldin:{version}",
        mapping={
            "ok1": np.ones(2, "<f4").tobytes(),
            "ok2": b"abc",
            "ok3": np.full(16, np.inf, "<f4").tobytes(),
            b"\xff": winner.tobytes(),
            "ok4": winner.tobytes(),  # the one to apply
        },
    )
    worker = worker_factory(settings)
    await publish(settings, items=items, events=[click("n1", "i1")])
    wait_until(lambda: applied_events(client, "rs") == 1, what="the event applied")
    wait_until(lambda: candidates(client, "n1"), what="n1's candidates")
    assert candidates(client, "n1")[0] == "ok4", "the model loaded with its good stored fold-in"
    assert worker.alive() and unreadable(worker, "fold_in") == 4


async def test_a_model_pointer_that_is_not_utf8_keeps_the_model_served(isolated_settings, worker_factory, tmp_path):
    """``model:current`` = "\\xff": every events batch raised UnicodeDecodeError and none applied, for good."""
    settings, _, items, _ = await a_trained_world(isolated_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, items=items, events=[click("w0", "i2")])
    wait_until(lambda: candidates(client, "w0"), what="the model loaded")
    client.set("rs:model:current", b"\xff")

    await publish(settings, events=[click("n1", "i1", at=1), Event(type="view", user_id="w0", item_id="i3", ts=T0)])
    wait_until(lambda: applied_events(client, "rs") == 3, what="the next events applied")
    wait_until(lambda: candidates(client, "n1"), what="n1's candidates, from the model kept")
    assert orjson.loads(client.get("rs:user:w0:hist")) == [["i3", 1.0], ["i2", 4.0]]
    assert metric_sum(worker.metrics(), "recstream_worker_model_load_failures_total") == 1
    assert worker.alive()


async def test_histories_of_another_shape_are_read_as_empty_and_hold_no_one(
    isolated_settings, worker_factory, tmp_path
):
    """A history stored as a JSON object made every batch holding its user fail (too many values to unpack), and
    with it every other user of the batch, for good; so did one that is not JSON."""
    settings, _, items, _ = await a_trained_world(isolated_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    bad = [b'{"i1": 4.0}', b"garbage{", b"\xff\xfe", b'[["i1", "4"]]', b'[["i1"]]', b"[[1, 4.0]]",
           b'[["i1", true]]', b'"i1"']  # fmt: skip
    n = settings.kafka.events_partitions
    same = (f"ug{k}" for k in itertools.count() if partition_for(f"ug{k}", n) == partition_for("uh", n))
    users = list(itertools.islice(same, len(bad)))  # on uh's partition: one batch with uh
    for user, value in zip(users, bad, strict=True):
        client.set(f"rs:user:{user}:hist", value)
    client.set("rs:user:uh:hist", b'[["i2", 1.0]]')
    worker = worker_factory(settings)

    await publish(settings, items=items, events=[click(user, "i3") for user in [*users, "uh"]])
    wait_until(lambda: applied_events(client, "rs") == len(bad) + 1, what="every user's event applied")
    for user in users:
        assert orjson.loads(client.get(f"rs:user:{user}:hist")) == [["i3", 4.0]], user
        assert candidates(client, user), user
    assert orjson.loads(client.get("rs:user:uh:hist")) == [["i3", 4.0], ["i2", 1.0]]
    assert worker.alive() and unreadable(worker, "history") == len(bad)


async def test_a_segment_that_is_not_utf8_is_read_as_none_and_holds_no_one(isolated_settings, worker_factory, tmp_path):
    """A user's ``user:seg`` entry in bytes that are not UTF-8 made every batch holding the user fail to decode it,
    and with it every other user of the batch, for good: the user's events now count in the default segment, as an
    unknown user's do."""
    settings, _, items, _ = await a_trained_world(isolated_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis.url)
    n = settings.kafka.events_partitions
    user = next(f"us{k}" for k in itertools.count() if partition_for(f"us{k}", n) == partition_for("uh", n))
    client.hset("rs:user:seg", user, b"\xff\xfe")
    worker = worker_factory(settings)

    await publish(settings, items=items, events=[click(user, "i3"), click("uh", "i4")])
    wait_until(lambda: applied_events(client, "rs") == 2, what="both users' events applied")
    assert orjson.loads(client.get(f"rs:user:{user}:hist")) == [["i3", 4.0]]
    assert orjson.loads(client.get("rs:user:uh:hist")) == [["i4", 4.0]]
    assert worker.alive() and unreadable(worker, "segment") == 1


async def test_a_fold_in_input_weight_that_is_no_number_leaves_its_user_out_and_every_fold_in_is_made(
    isolated_settings, worker_factory, tmp_path
):
    """A field of ``foldin:users:<i>`` whose weight is no number (another writer's; the batch script already leaves
    it uncounted) raised out of every fold-in of the batch that graduated the item: no new item was folded in, the good
    ones neither, and every later batch retried. Now the field is left out, counted, and both items get fold-ins."""
    settings, version, items, _ = await a_trained_world(isolated_settings, tmp_path)
    settings = settings.replace(pool_graduate_views=3)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, items=items, events=[click("w0", "i2")])
    wait_until(lambda: candidates(client, "w0"), what="the model loaded")
    await publish(settings, events=[click("n1", "ok1", at=1), click("n2", "ok2", at=2)])
    wait_until(lambda: client.hlen("rs:foldin:users:ok1") == client.hlen("rs:foldin:users:ok2") == 1, what="users")
    client.hset("rs:foldin:users:ok1", "zz", "abc")
    views = [
        Event(type="view", user_id=f"v{k}", item_id=item, ts=T0 + 10 + k) for k in range(3) for item in ("ok1", "ok2")
    ]
    await publish(settings, events=views)
    wait_until(lambda: {b"ok1", b"ok2"} <= set(client.hkeys(f"rs:foldin:{version}")), what="both items folded in")
    assert worker.alive() and unreadable(worker, "fold_in_user") >= 1
