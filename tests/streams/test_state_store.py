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


def _scores_by_formula(client: redis.Redis, keys: Keys, m: float) -> dict[str, dict[bytes, float]]:
    """Every ranking recomputed from the stored counters and prior: (c + m·q)/(v + m) globally, then
    (c_s + m·global)/(v_s + m) in each segment that counts the item (models/ctr.py's smoothed CTR)."""
    prior = float(client.get(keys("prior")))
    views, clicks = client.hgetall(keys("views")), client.hgetall(keys("clicks"))
    glob = {i: (int(clicks.get(i, 0)) + m * prior) / (int(v) + m) for i, v in views.items()}
    out = {"rank": glob}
    for s in sorted(x.decode() for x in client.smembers(keys("segments"))):
        sv, sc = client.hgetall(keys.seg(s, "views")), client.hgetall(keys.seg(s, "clicks"))
        out[f"rank:{s}"] = {i: (int(sc.get(i, 0)) + m * glob[i]) / (int(v) + m) for i, v in sv.items()}
    return out


@pytest.mark.parametrize("items", [PAIRS_PER_CALL * 2 - 1, PAIRS_PER_CALL * 2, PAIRS_PER_CALL * 2 + 1])
async def test_rankings_follow_the_counters_when_a_batch_scores_what_it_counted_without_reading_it(
    isolated_settings: Settings, items: int
):
    """Step 4 of the script scores the items step 3 counted from the counts it just wrote, reads the counters of
    the others (a rescore pass's), and reads a segment's clicks only for the items that segment counts. Around the
    script's chunk of 4,000 fields per HMGET: after a batch counting items in one segment, or two, or with no
    clicks, a batch touching a few of them in one segment only, and one whose moved prior starts a rescore pass
    (finished in empty batches), every score is the formula's on the stored counters (exactly: the same IEEE
    operations)."""
    settings = isolated_settings.replace(require_announced_items=False)  # counted items are ranked at once
    keys, m = Keys.of(settings), settings.model.ctr_prior_mass
    tp = f"{settings.kafka.events_topic}:0"
    names = [f"i{k}" for k in range(items)]
    first = Effect(watermarks={tp: (-1, 0)})
    first.counters = CounterDeltas(
        items={i: [3 + k % 5, k % 3, T0] for k, i in enumerate(names)},
        segments={  # s1 counts every item, s2 every other one (with its clicks, if any)
            "s1": {i: [2 + k % 5, k % 3] for k, i in enumerate(names)},
            "s2": {i: [1, 0] for i in names[::2]},
        },
        totals={"views": 10 * items, "clicks": items},
    )
    await apply(settings, first)
    client = redis.Redis.from_url(settings.redis.url)
    assert client.zscore(keys.rank(), names[-1]) is not None
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    second = Effect(watermarks={tp: (0, 1)})  # a few items, counted in s1 only: s2's scores move with the global
    second.counters = CounterDeltas(
        items={i: [1, 1, T0] for i in names[:3]}, segments={"s1": {i: [1, 1] for i in names[:3]}}
    )
    await apply(settings, second)
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    client.set(keys("prior"), "-1")  # the next batch's prior "moved": a pass rescores items it did not count
    third = Effect(watermarks={tp: (1, 2)})
    third.counters = CounterDeltas(items={names[1]: [1, 0, T0]}, segments={"s2": {names[1]: [1, 0]}})
    await apply(settings, third)
    while client.exists(keys("rescore")):  # the rest of the pass, as an idle worker goes on with it
        await apply(settings, Effect())
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    client.close()
