"""What the batch script writes is exactly what the effect holds: blobs and ranker states travel concatenated in
one binary argument (each cut back out by its byte range), seen sets, user segments and event ids as JSON objects.
Real Redis, the worker's own store."""

from __future__ import annotations

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.store.aggregate import CounterDeltas
from recstream.store.state import Effect, StateStore

pytestmark = pytest.mark.integration

PAIRS_PER_CALL = 2_000  # apply_batch.lua's CHUNK of 4,000 arguments: field-value pairs per HSET call
T0 = 1_700_000_000_000


async def apply(settings: Settings, effect: Effect) -> None:
    client = AsyncRedis.from_url(settings.redis.url)
    try:
        await StateStore(client, settings).apply(effect)
    finally:
        await client.aclose()


async def test_blobs_and_ranker_states_come_back_byte_for_byte(isolated_settings: Settings):
    """Values of every length (empty, one byte, binary with NUL and 0xff, a long one) around and between each
    other, a key written twice in one batch (the later value wins, as in effect order), and a ranker state."""
    settings = isolated_settings
    keys = Keys.of(settings)
    values = [b"", b"\x00", b"\xff\x00\xfe" * 3, b"", bytes(range(256)) * 40, b"x"]
    effect = Effect(watermarks={f"{settings.kafka.events_topic}:0": (-1, 0)})
    effect.blobs = [(f"user:u{k}:vec", value) for k, value in enumerate(values)]
    effect.blobs += [("user:u1:vec", b"later"), ("item:i1:similar", b"[]")]
    effect.rankers = {(settings.kafka.events_topic, 0): b"\x00state\xff"}
    await apply(settings, effect)
    client = redis.Redis.from_url(settings.redis.url)
    stored = [client.get(keys.user(f"u{k}", "vec")) for k in range(len(values))]
    assert stored == [values[0], b"later", *values[2:]]
    assert client.get(keys("item:i1:similar")) == b"[]"
    assert client.get(keys.ranker(settings.kafka.events_topic, 0)) == b"\x00state\xff"
    client.close()


@pytest.mark.parametrize("users", [PAIRS_PER_CALL - 1, PAIRS_PER_CALL, PAIRS_PER_CALL + 1])
async def test_seen_sets_segments_and_event_ids_of_every_user_are_written(isolated_settings: Settings, users: int):
    """Around the script's chunk of one HSET call: every user's segment, seen set (latest ts per item, capped at
    ``seen_cap`` most recent) and event id is stored, whatever the count."""
    settings = isolated_settings.replace(seen_cap=2)
    keys = Keys.of(settings)
    tp = f"{settings.kafka.events_topic}:0"
    effect = Effect(watermarks={tp: (-1, 0)})
    names = [f"u{k}" for k in range(users)]
    effect.user_segments = {user: f"seg{k % 3}" for k, user in enumerate(names)}
    effect.counters = CounterDeltas(seen={user: {"a": T0, "b": T0 + 2, "c": T0 + 1} for user in names})
    effect.event_ids = {tp: {f"{user}:e": T0 + k for k, user in enumerate(names)}}
    await apply(settings, effect)
    client = redis.Redis.from_url(settings.redis.url)
    assert client.hgetall(keys("user:seg")) == {u.encode(): f"seg{k % 3}".encode() for k, u in enumerate(names)}
    for user in (names[0], names[-1]):
        assert client.zrange(keys.user(user, "seen"), 0, -1, withscores=True) == [(b"c", T0 + 1), (b"b", T0 + 2)]
    stored_ids = client.zrange(keys.event_ids(settings.kafka.events_topic, 0), 0, -1, withscores=True)
    assert stored_ids == [(f"{user}:e".encode(), T0 + k) for k, user in enumerate(names)]
    client.close()
