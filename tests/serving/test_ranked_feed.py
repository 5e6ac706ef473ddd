"""The ranking stage end to end: ranker states in Redis as the workers write them (FTRL bytes under
``Keys.ranker(topic, p)``), the real reader on the world a real worker built from Kafka, pages read back
from their scroll sessions and attributed events read back from the events topic."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from recstream.models.ranker import FTRLRanker

from bench.feeds import modes
from recstream.contracts.events import decode
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import CONTEXT_KEY, FEATURES, decode_features, rounded
from recstream.contracts.settings import Settings
from tests.serving.conftest import DAY_MS, KEY, T0, World, feed, isolated_topics, reader_client, reload, trained_ranker

pytestmark = pytest.mark.integration
WORLD_TIME = T0 + 3 * DAY_MS + 3_600_000
MIN_ROWS = 100


@contextmanager
def ranker_states(world: World, settings: Settings) -> Iterator[Callable[[str, str], list[FTRLRanker]]]:
    """A writer of one trained state per events partition (:func:`trained_ranker`); the keys are deleted at the end."""
    keys = [
        Keys(settings.redis.prefix).ranker(settings.kafka.events_topic, p)
        for p in range(settings.kafka.events_partitions)
    ]
    client = world.redis()

    def write(clicked: str, skipped: str) -> list[FTRLRanker]:
        rankers = [trained_ranker(clicked, skipped, seed=p) for p in range(len(keys))]
        client.mset({key: ranker.to_bytes() for key, ranker in zip(keys, rankers, strict=True)})
        return rankers

    try:
        yield write
    finally:
        client.delete(*keys)
        client.close()


def session_rows(world: World, user: str, session: str) -> dict[str, list]:
    """item → [item, source, features] as the reader recorded the session's pages."""
    pages = world.redis().lrange(f"rs:user:{user}:feed:{session}", 0, -1)
    return {row[0]: row for page in pages for row in json.loads(page)}


def flag(vector: np.ndarray, name: str) -> float:
    return float(vector[FEATURES.index(name)])


async def own_topics(world: World) -> Settings:
    """The world's Redis and state on topics of their own: the ranker keys they name are this test's alone."""
    return (await isolated_topics(world.settings)).replace(ranker_min_rows=MIN_ROWS)


async def test_a_ranked_page_puts_the_clicked_generators_items_first_and_the_order_flips_with_the_weights(world):
    settings = await own_topics(world)
    user = world.warm[8]
    with ranker_states(world, settings) as write:
        async with reader_client(settings) as reader:
            for clicked, skipped in (("popular", "personal"), ("personal", "popular")):
                rankers = write(clicked, skipped)
                await reload(reader)
                text = (await reader.get("/metrics")).text
                assert f"recstream_reader_ranker_rows {float(sum(r.n_updates for r in rankers))}" in text
                age = re.search(r"^recstream_reader_ranker_weights_age_seconds (\S+)$", text, re.M)
                assert age and 0 <= float(age.group(1)) < 5, "the version read just now"
                page = await feed(reader, user, limit=20, seed=5)
                assert page["ranked"] and len(page["items"]) == 20
                rows = session_rows(world, user, page["session"])
                ranked = [i for i in page["items"] if i["source"] != "explore"]
                vectors = [decode_features(rows[i["item_id"]][2]) for i in ranked]
                lead = [flag(v, clicked) - flag(v, skipped) for v in vectors]  # +1: only the clicked one proposed it
                assert lead == sorted(lead, reverse=True), (clicked, lead)
                assert lead.count(1.0) >= 5 and lead[0] == 1.0
                first = ranked[0]
                assert (first["source"], first["top_feature"]) == (clicked, clicked)
                scores = [i["score"] for i in ranked]
                assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
                assert all(i["score"] is not None for i in page["items"]), "explore items are scored too"


def exported_weights(text: str) -> dict[str, float]:
    """feature → value of the reader's ``recstream_reader_ranker_weight`` series in a /metrics text."""
    pattern = r'^recstream_reader_ranker_weight\{feature="(\w+)"\} (\S+)$'
    return {name: float(value) for name, value in re.findall(pattern, text, re.M)}


async def test_the_reader_shows_the_weights_it_holds_and_none_once_the_states_are_gone(world):
    settings = await own_topics(world)
    async with reader_client(settings) as reader:
        with ranker_states(world, settings) as write:
            for clicked, skipped in (("popular", "personal"), ("personal", "popular")):  # the second flips the signs
                rankers = write(clicked, skipped)
                await reload(reader)
                mean = np.mean([r.weights for r in rankers], axis=0).tolist()
                want = dict(zip(("bias", *FEATURES), mean, strict=True))
                shown = (await reader.get("/v1/stats")).json()["ranker_weights"]
                assert shown == want and shown[clicked] > 0 > shown[skipped]
                assert exported_weights((await reader.get("/metrics")).text) == want
        await reload(reader)  # every partition's state deleted
        assert (await reader.get("/v1/stats")).json()["ranker_weights"] is None
        assert exported_weights((await reader.get("/metrics")).text) == {}, "no series: not a ranker of zeros"


async def test_while_the_ranker_is_cold_the_page_is_the_fixed_blend(world):
    settings = await own_topics(world)
    async with reader_client(settings) as cold, reader_client(settings.replace(ranker=False)) as off:
        before = modes((await cold.get("/metrics")).text)  # one registry for the process: earlier tests' too
        for user in [*world.warm[:4], world.cold[0]]:
            pages = [await feed(reader, user, limit=20, seed=9) for reader in (cold, off)]
            triples = [[(i["item_id"], i["source"], i["reason"]) for i in p["items"]] for p in pages]
            assert triples[0] == triples[1]
            assert not pages[0]["ranked"] and not pages[1]["ranked"]
            assert {(i["score"], i["top_feature"]) for p in pages for i in p["items"]} == {(None, None)}
        warm = await feed(cold, world.warm[0], limit=20)
        assert Counter(i["source"] for i in warm["items"]) == {"personal": 8, "popular": 8, "fresh": 2, "explore": 2}
        # the vectors are logged anyway: the ranker learns from fixed pages while it is cold
        rows = session_rows(world, world.warm[0], warm["session"])
        assert all(decode_features(rows[i["item_id"]][2]) is not None for i in warm["items"])
        after = modes((await cold.get("/metrics")).text)
    assert after - before == {"fixed-cold": 6, "fixed-off": 5}, "cold, not stale"


async def test_the_features_logged_and_attributed_are_the_ones_the_reader_scored(world):
    settings = await own_topics(world)
    user = world.warm[9]
    with ranker_states(world, settings) as write:
        weights = np.mean([r.weights for r in write("popular", "personal")], axis=0)
        async with reader_client(settings, KEY) as reader:
            page = await feed(reader, user, limit=20)
            assert page["ranked"]
            rows = session_rows(world, user, page["session"])
            for item in page["items"]:
                _, source, served = rows[item["item_id"]]
                vector = decode_features(served)
                assert source == item["source"] and vector.tolist() == rounded(vector).tolist()
                contributions = weights[1:] * vector
                logit = weights[0] + math.fsum(contributions.tolist())
                assert item["score"] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12, abs=0)
                raised = {name: c for name, c in zip(FEATURES, contributions, strict=True) if name != "warm" and c > 0}
                assert item["top_feature"] == (max(raised, key=raised.get) if raised else None)

            shown = page["items"][:5]
            session = page["session"]
            contexts = [
                {"feed": session},
                {"feed": session, CONTEXT_KEY: "forged"},
                {"feed": session},
                {"source": shown[3]["source"], CONTEXT_KEY: "forged"},  # no session: nothing to stamp, rf dropped
                None,
            ]
            events = [
                {
                    "type": "click" if k == 2 else "view",
                    "user_id": user,
                    "item_id": item["item_id"],
                    "ts": WORLD_TIME + k,
                    "event_id": f"ranked-{user}-{k}-{time.monotonic_ns()}",
                    "context": context,
                }
                for k, (item, context) in enumerate(zip(shown, contexts, strict=True))
            ]
            resp = await reader.post("/v1/events", json=events)
            assert resp.status_code == 202, resp.text
            metrics = (await reader.get("/metrics")).text

    published = await published_contexts(settings, {e["event_id"]: e["item_id"] for e in events})
    for event in events[:3]:
        context = published[event["event_id"]]
        assert context[CONTEXT_KEY] == rows[event["item_id"]][2], "the session's string, to the character"
        assert context["source"] == rows[event["item_id"]][1]
    assert CONTEXT_KEY not in published[events[3]["event_id"]], "a client's own vector never reaches the log"
    assert published[events[4]["event_id"]] is None

    route = 'route="/v1/feed/{user_id}"'
    lines = metrics.splitlines()
    count = next(x for x in lines if x.startswith(f"recstream_reader_redis_round_trips_count{{{route}}}"))
    within = next(x for x in lines if x.startswith(f'recstream_reader_redis_round_trips_bucket{{le="2.0",{route}}}'))
    assert count.split()[-1] == within.split()[-1], "ranked feeds too make at most 2 Redis round trips"


async def published_contexts(settings: Settings, wanted: dict[str, str]) -> dict[str, dict | None]:
    """event id → context of the events with these ids, read back from the events topic."""
    consumer = AIOKafkaConsumer(
        settings.kafka.events_topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, dict | None] = {}
    try:
        deadline = time.monotonic() + 20
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    events, _ = decode(message.value, "event", 2**53)
                    found.update({e.event_id: e.context for e in events if e.event_id in wanted})
    finally:
        await consumer.stop()
    assert len(found) == len(wanted), f"events missing from the topic: {set(wanted) - set(found)}"
    return found
