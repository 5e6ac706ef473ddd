"""Fold-ins reach a worker's live model through Redis: the stored ones when a model loads, later ones from the log."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
from recstream.streams.live_model import LiveModel

from recstream.contracts.events import ItemEvent
from tests.conftest import wait_until
from tests.streams.scenario import T0, trained, world

pytestmark = pytest.mark.integration


async def test_a_loading_model_applies_stored_fold_ins_then_follows_the_log(isolated_settings, tmp_path):
    _, items, events = world(n_users=30, n_items=40, n_events=2_000)
    settings, version = await trained(isolated_settings, tmp_path, events, items)
    client = redis.Redis.from_url(settings.redis.url)
    model = LiveModel(settings)
    new = [ItemEvent(op="new", item_id=f"new{k}", ts=T0, categories=["news"]) for k in range(3)]
    for item in [*items, *new]:
        model.apply_item(item)
    store = model.fold_ins
    v0, v1, v2 = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    client.sadd("rs:foldin:pending", "new0", "new1", "new2")
    client.hset("rs:foldin:users:new0", "u1", 5.0)
    assert await store.save(version, [("new0", v0, b"[]"), ("new1", None, None)]) == 1
    assert await store.save(version, [("new0", v1, None)]) == 0, "stored once: new0 is no longer pending"
    assert client.smembers("rs:foldin:pending") == {b"new2"} and not client.exists("rs:foldin:users:new0")
    assert client.hkeys(f"rs:foldin:{version}") == [b"new0"], "new1 resolved without a vector"

    follower = asyncio.create_task(model.follow_fold_ins())
    try:
        await model.ensure(version)
        assert model.current is not None
        assert np.array_equal(model.current.step.factors[model.current.rows["new0"]], v0)
        await store.save(version, [("new2", v2, None)])
        for _ in range(100):
            if np.array_equal(model.current.step.factors[model.current.rows["new2"]], v2):
                break
            await asyncio.sleep(0.05)
        assert np.array_equal(model.current.step.factors[model.current.rows["new2"]], v2), "applied from the log"
        assert model.current.index.query(v2, 1)[0][0] == "new2"
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await store.redis.aclose()
    wait_until(lambda: client.xlen("rs:foldin:log") == 2, what="two fold-ins logged")
