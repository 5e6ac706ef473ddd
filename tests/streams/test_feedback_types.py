"""Feedback types end to end (issue 17 item 1): each role posted to the real reader, through Kafka and a real worker,
read back from Redis and the reader's feed; unknown types dead-lettered; a configured set reaching the worker."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer
from recstream.models.artifacts import read_model

from recstream.contracts.events import Event
from recstream.contracts.settings import Settings
from tests.conftest import wait_until
from tests.serving.conftest import reader_client
from tests.streams.scenario import T0, publish, publish_raw, trained
from tests.streams.test_personalization import candidates, catalogue, taste_log

pytestmark = pytest.mark.integration
KEY = "feedback-writes-key"


def history(client: redis.Redis, user: str) -> dict[str, float]:
    raw = client.get(f"rs:user:{user}:hist")
    return {item: weight for item, weight in orjson.loads(raw)} if raw else {}


def vector(client: redis.Redis, user: str) -> np.ndarray | None:
    raw = client.get(f"rs:user:{user}:vec")
    return None if raw is None else np.frombuffer(raw, dtype="<f4")


def counts(client: redis.Redis, item: str) -> tuple[int, int]:
    """(views, clicks) the workers counted for the item."""
    return tuple(int(client.hget(f"rs:{what}", item) or 0) for what in ("views", "clicks"))  # type: ignore[return-value]


def expected_vector(settings: Settings, version: str, rows: list[tuple[str, float]]) -> np.ndarray:
    """The user step written out independently from the stored history (most recent first): item factors Y, signed
    weights r, |c| = 1 + α·|r|·γ^rank, p = [r > 0]; x = (YᵀY + λI + Σ (|c| − 1) y yᵀ)⁻¹ Σ p·|c|·y."""
    model = read_model(settings.model.dir, version)
    cfg, y = model.config, model.item_factors.astype(np.float64)
    index = {item: k for k, item in enumerate(model.item_ids)}
    a = y.T @ y + cfg.regularization * np.eye(y.shape[1])
    b = np.zeros(y.shape[1])
    for rank, (item, r) in enumerate(rows):
        c = 1 + cfg.alpha * abs(r) * cfg.recency_decay**rank
        f = y[index[item]]
        a += (c - 1) * np.outer(f, f)
        b += c * f if r > 0 else 0.0
    return np.linalg.solve(a, b)


async def test_each_feedback_role_through_the_reader_kafka_a_worker_and_redis(
    isolated_settings, worker_factory, tmp_path
):
    items = catalogue()
    settings, version = await trained(isolated_settings.replace(api_key=KEY), tmp_path, taste_log(), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    await publish(settings, items=items)
    trained_items = set(read_model(settings.model.dir, version).item_ids)
    news = [i.item_id for i in items[:50] if i.item_id in trained_items][:6]
    user = "fan"

    async with reader_client(settings, {"X-API-Key": KEY}) as reader:

        async def post(kind: str, item: str, ts: int, **more: object) -> None:
            body = {"type": kind, "user_id": user, "item_id": item, "ts": ts, **more}
            answer = await reader.post("/v1/events", json=body)
            assert answer.status_code == 202, answer.text

        # positive, outside CTR (like): a refresh point; its weight in the history; no view or click counted
        for k, item in enumerate(news[:3]):
            await post("like", item, T0 + k)
        wait_until(lambda: len(history(client, user)) == 3 and vector(client, user) is not None, what="the likes")
        assert history(client, user) == dict.fromkeys(news[:3], 4.0)
        assert all(counts(client, item) == (0, 0) for item in news[:3]) and not client.hgetall("rs:totals")
        liked_vector = vector(client, user)

        # impression (view): a CTR view; joins the history but is no refresh point, so the vector stays
        await post("view", news[3], T0 + 10)
        wait_until(lambda: news[3] in history(client, user), what="the view")
        assert counts(client, news[3]) == (1, 0) and history(client, user)[news[3]] == 1.0
        np.testing.assert_array_equal(vector(client, user), liked_vector)

        # positive in CTR (click) and valued (rating): a click counted, the rating's stars are its weight
        await post("click", news[4], T0 + 11)
        await post("rating", news[5], T0 + 12, value=5)
        wait_until(lambda: news[5] in history(client, user), what="the click and the rating")
        assert counts(client, news[4]) == (0, 1) and counts(client, news[5]) == (0, 0)
        assert (history(client, user)[news[4]], history(client, user)[news[5]]) == (4.0, 5.0)
        assert not np.array_equal(vector(client, user), liked_vector), "a click and a rating are refresh points"

        # negative (dislike): the feed's best personal item leaves the feed and the candidates, and the user step
        # makes it a negative observation
        page = (await reader.get(f"/v1/feed/{user}", params={"limit": 10})).json()["items"]
        disliked = next(i["item_id"] for i in page if i["source"] == "personal" and i["item_id"] in trained_items)
        before = vector(client, user)
        totals_before = client.hgetall("rs:totals")
        await post("dislike", disliked, T0 + 20)
        wait_until(lambda: disliked in history(client, user), what="the dislike")
        rows = list(orjson.loads(client.get(f"rs:user:{user}:hist")))
        assert rows[0] == [disliked, -4.0]
        after = vector(client, user)
        np.testing.assert_allclose(after, expected_vector(settings, version, rows), rtol=0, atol=1e-4)
        factors = read_model(settings.model.dir, version)
        y = factors.item_factors[factors.item_ids.index(disliked)]
        assert y @ after < y @ before, "the disliked item's score fell"
        assert counts(client, disliked) == (0, 0) and client.hgetall("rs:totals") == totals_before
        assert disliked not in candidates(client, user)
        because = {c[2] for c in orjson.loads(client.get(f"rs:user:{user}:cand"))}
        assert disliked not in because and because <= set(news), "no candidate is 'because you watched' a dislike"
        for _ in range(3):  # new scroll sessions: none shows it
            page = (await reader.get(f"/v1/feed/{user}", params={"limit": 20})).json()["items"]
            assert page and disliked not in {i["item_id"] for i in page}

        # an unknown type is refused by the reader, naming the configured ones
        answer = await reader.post("/v1/events", json={"type": "share", "user_id": user, "item_id": news[0], "ts": T0})
        assert answer.status_code == 422 and "unknown feedback type 'share'" in answer.text


async def dead_letters(settings: Settings, at_least: int) -> list:
    consumer = AIOKafkaConsumer(settings.kafka.dlq_topic, bootstrap_servers=settings.kafka.bootstrap,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    try:
        letters: list = []
        deadline = time.monotonic() + 60
        while len(letters) < at_least and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            letters += [m for part in batch.values() for m in part]
        return letters
    finally:
        await consumer.stop()


async def test_the_configured_set_reaches_the_worker_and_unknown_types_are_dead_lettered(
    isolated_settings, worker_factory
):
    """A set of the operator's own (RECSTREAM_FEEDBACK_TYPES in the worker's environment): its types count as
    configured, a default type it does not name goes to the dead-letter topic with the reason, and the rest of the
    message is applied."""
    settings = isolated_settings.replace(
        feedback_types={
            "impression": {"role": "impression", "weight": 1, "ctr": True},
            "share": {"role": "positive", "weight": 2, "ctr": True},
            "hide": {"role": "negative", "weight": 1},
        }
    )
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    ok = [Event(type=t, user_id="u1", item_id="i1", ts=T0 + k) for k, t in enumerate(["impression", "share", "hide"])]
    await publish(settings, events=ok)
    view = b'{"type":"view","user_id":"u1","item_id":"i2","ts":%d}' % T0
    share = b'{"type":"share","user_id":"u1","item_id":"i2","ts":%d}' % T0
    await publish_raw(settings, b"[%s, %s]" % (view, share), key=b"u1")
    wait_until(lambda: counts(client, "i2") == (0, 1), what="the share beside the unknown view")
    assert counts(client, "i1") == (1, 1) and client.zscore("rs:user:u1:seen", "i1") is not None
    [letter] = await dead_letters(settings, 1)
    reason = dict(letter.headers)["reason"].decode()
    assert reason == "type: unknown feedback type 'view' (configured: impression, share, hide)"
    assert orjson.loads(letter.value)["type"] == "view"
