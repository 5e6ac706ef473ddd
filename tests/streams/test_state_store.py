"""What the batch script writes is exactly what the effect holds: blobs and ranker states travel concatenated in
one binary argument (each cut back out by its byte range), seen sets, user segments and event ids as JSON objects.
Real Redis, the worker's own store."""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from recstream.contracts.events import Event
from recstream.contracts.keys import Keys
from recstream.contracts.settings import YEAR_S, Settings
from recstream.store.aggregate import CounterDeltas, aggregate
from recstream.store.state import DELETE, SCRIPT, Effect, StateStore

pytestmark = pytest.mark.integration

PAIRS_PER_CALL = 2_000  # apply_batch.lua's CHUNK of 4,000 arguments: field-value pairs per HSET call
T0 = 1_700_000_000_000


async def apply(settings: Settings, effect: Effect) -> None:
    client = AsyncRedis.from_url(settings.redis.url)
    try:
        await StateStore(client, settings).apply(effect)
    finally:
        await client.aclose()


async def finish(settings: Settings, client: redis.Redis) -> None:
    """Empty batches until no rescore pass is open and no item waits for its per-segment scores, as an idle worker
    goes on with them (streams/processor.py, finish_pending)."""
    keys = Keys.of(settings)
    while client.exists(keys("rescore")) or client.scard(keys("segments:rescore")):
        await apply(settings, Effect())


async def test_blobs_and_ranker_states_come_back_byte_for_byte(isolated_settings: Settings):
    """Values of every length (one byte, binary with NUL and 0xff, a long one) around and between deletions (DELETE,
    no bytes: the key is gone), a key written twice in one batch (the later value wins, as in effect order), a key
    deleted and written in one batch (written), and a ranker state."""
    settings = isolated_settings
    keys = Keys.of(settings)
    values = [DELETE, b"\x00", b"\xff\x00\xfe" * 3, DELETE, bytes(range(256)) * 40, b"x"]
    client = redis.Redis.from_url(settings.redis.url)
    client.mset({keys.user(f"u{k}", "vec"): b"before" for k in (0, 3, 6)})
    effect = Effect(watermarks={f"{settings.kafka.events_topic}:0": (-1, 0)})
    effect.blobs = [(f"user:u{k}:vec", value) for k, value in enumerate(values)]
    effect.blobs += [("user:u1:vec", b"later"), ("item:i1:similar", b"[]")]
    effect.blobs += [("user:u6:vec", b"kept"), ("user:u6:vec", DELETE)]
    effect.rankers = {(settings.kafka.events_topic, 0): b"\x00state\xff"}
    await apply(settings, effect)
    stored = [client.get(keys.user(f"u{k}", "vec")) for k in range(len(values) + 1)]
    assert stored == [None, b"later", *values[2:3], None, *values[4:], b"kept"]
    assert client.get(keys("item:i1:similar")) == b"[]"
    assert client.get(keys.ranker(settings.kafka.events_topic, 0)) == b"\x00state\xff"
    client.close()


@pytest.mark.parametrize("deleted", [2 * PAIRS_PER_CALL - 1, 2 * PAIRS_PER_CALL, 2 * PAIRS_PER_CALL + 1])
async def test_every_deleted_blob_key_is_gone_around_a_call_of_keys(isolated_settings: Settings, deleted: int):
    """Around the script's chunk of one DEL call (4,000 keys): every key a batch deletes is gone, the keys it writes
    beside them are written."""
    settings = isolated_settings
    keys = Keys.of(settings)
    client = redis.Redis.from_url(settings.redis.url)
    client.mset({keys.user(f"u{k}", "bcand"): b"[]" for k in range(deleted + 1)})
    effect = Effect(watermarks={f"{settings.kafka.events_topic}:0": (-1, 0)})
    effect.blobs = [(f"user:u{k}:bcand", DELETE) for k in range(deleted)] + [("user:w:bcand", b"[[1]]")]
    await apply(settings, effect)
    left = client.mget([keys.user(f"u{k}", "bcand") for k in range(deleted + 1)])
    assert left == [None] * deleted + [b"[]"]
    assert client.get(keys.user("w", "bcand")) == b"[[1]]"
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


@pytest.mark.parametrize("window_s", [0, 1])
async def test_a_batch_applies_at_the_smallest_de_duplication_windows(isolated_settings: Settings, window_s: int):
    """``dedup_window_s`` 0 (no de-duplication, the settings' lower bound) applies batches as 1 does (the script once
    refused every batch below 1 ms, so a worker set to 0 applied nothing); ids are kept only with a window."""
    settings = isolated_settings.replace(dedup_window_s=window_s)
    keys = Keys.of(settings)
    tp = f"{settings.kafka.events_topic}:0"
    effect = Effect(watermarks={tp: (-1, 0)})
    effect.counters = CounterDeltas(seen={"u1": {"a": T0}})
    effect.event_ids = {tp: {"u1:e": T0}}
    await apply(settings, effect)
    client = redis.Redis.from_url(settings.redis.url)
    assert client.hget(keys("wm"), tp) is not None and client.zrange(keys.user("u1", "seen"), 0, -1) == [b"a"]
    ids = keys.event_ids(settings.kafka.events_topic, 0)
    assert client.exists(ids) == (1 if window_s else 0)
    assert window_s == 0 or client.pttl(ids) == -1, "trimmed by arrival time, never expired by the wall clock"
    client.close()


@pytest.mark.parametrize("below", [1, 0], ids=["bound-1", "bound"])
async def test_a_batch_applies_at_the_longest_trend_half_life_and_pool_graduation_the_settings_take(
    isolated_settings: Settings, below: int
):
    """``trend_half_life_s``, ``pool_graduate_age_s`` and ``pool_graduate_views`` at their bounds (and one under),
    with the most trend epochs: the script takes them in ms, and the trend keys' TTL. Past what it holds (ms from
    2^53, views past 64 bits for orjson) they were accepted at start and every batch failed, forever; the bound + 1
    is refused at start (tests/contracts/test_settings.py)."""
    half_life_s = YEAR_S - below
    settings = isolated_settings.replace(
        trend_half_life_s=half_life_s, trend_epoch_half_lives=16, pool_graduate_age_s=YEAR_S - below,
        pool_graduate_views=10**9 - below, require_announced_items=False,
    )  # fmt: skip
    keys, tp = Keys.of(settings), f"{settings.kafka.events_topic}:0"
    events = [Event(type=kind, user_id="u1", item_id="i1", ts=T0) for kind in ("view", "click")]
    effect = Effect(watermarks={tp: (-1, 0)})
    effect.counters = aggregate(events, {}, half_life_s * 1000, 16)
    await apply(settings, effect)
    client = redis.Redis.from_url(settings.redis.url)
    assert client.hget(keys("wm"), tp) == b"0", "applied"
    trends = list(client.scan_iter(keys("trend:*")))
    assert len(trends) == 4, "views and clicks, each in its current and previous epoch"
    assert all(3 * half_life_s * 16 - 60 <= client.ttl(key) <= 3 * half_life_s * 16 for key in trends)
    assert client.zscore(keys("pool"), "i1") is not None, "graduated neither by its views nor by its age"
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
    operations), once the items waiting for their per-segment scores are ranked too."""
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
    await finish(settings, client)  # a call ranks the segment scores of about 1,000 items (RESCORE_ITEMS)
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    second = Effect(watermarks={tp: (0, 1)})  # a few items, counted in s1 only: s2's scores move with the global
    second.counters = CounterDeltas(
        items={i: [1, 1, T0] for i in names[:3]}, segments={"s1": {i: [1, 1] for i in names[:3]}}
    )
    await apply(settings, second)
    await finish(settings, client)
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    client.set(keys("prior"), "-1")  # the next batch's prior "moved": a pass rescores items it did not count
    third = Effect(watermarks={tp: (1, 2)})
    third.counters = CounterDeltas(items={names[1]: [1, 0, T0]}, segments={"s2": {names[1]: [1, 0]}})
    await apply(settings, third)
    await finish(settings, client)  # the rest of the pass
    assert _scores_by_formula(client, keys, m) == {
        name: dict(client.zrange(keys(name), 0, -1, withscores=True)) for name in ("rank", "rank:s1", "rank:s2")
    }
    client.close()


# --- refusals: nothing of a batch is written when a later command would fail ------------------------------


def _snapshot(client: redis.Redis) -> tuple[dict[bytes, bytes], set[bytes]]:
    """Every key's serialized value (type, content) and which keys expire: equal snapshots, nothing written."""
    keys = sorted(client.scan_iter(count=1_000))
    return {key: client.dump(key) for key in keys}, {key for key in keys if client.pttl(key) >= 0}


def _two_batches(settings: Settings) -> tuple[Effect, Effect]:
    """A batch that sets up items, a segment, users and event ids, and the next one, which counts items i1 (known)
    and i3, i4 (new), in segment s1, for users u1 and u2, with trend increments, event ids and a history blob."""
    tp = f"{settings.kafka.events_topic}:0"
    first = Effect(watermarks={tp: (-1, 0)})
    first.counters = CounterDeltas(
        items={"i1": [2, 1, T0], "i2": [1, 0, T0]},
        segments={"s1": {"i1": [2, 1], "i2": [1, 0]}},
        totals={"views": 3, "clicks": 1},
        trend={"views:1": {"i1": 1_000}},
        seen={"u1": {"i1": T0}},
        clock=T0,
        counted={0: 3},
        firsts={0: {"i1": 0, "i2": 2}},
    )
    first.user_segments = {"u1": "s1"}
    first.event_ids = {tp: {"u1:e1": T0}}
    second = Effect(watermarks={tp: (0, 1)})
    second.counters = CounterDeltas(
        items={"i1": [1, 1, T0 + 1], "i3": [1, 0, T0 + 1], "i4": [2, 1, T0 + 1]},
        segments={"s1": {"i1": [1, 1], "i3": [1, 0], "i4": [2, 1]}},
        totals={"views": 4, "clicks": 2},
        trend={"views:1": {"i1": 1_000, "i3": 500}},
        seen={"u1": {"i3": T0 + 1}, "u2": {"i4": T0 + 1}},
        clock=T0 + 1,
        counted={0: 4},
        firsts={0: {"i1": 0, "i3": 1, "i4": 2}},
    )
    second.user_segments = {"u2": "s1"}
    second.event_ids = {tp: {"u1:e2": T0 + 1, "u2:e3": T0 + 1}}
    second.blobs = [("user:u2:hist", b"[]")]
    return first, second


# Each key of the wrong type is one the old script reached after its first write (the counters of step 3 or the
# new item i3's hash): the WRONGTYPE left those writes without the watermark, and every retry applied them again.
WRONG_TYPES = {
    "new item's hash": (lambda keys, topic: keys.item("i4"), "hash"),
    "segment ranking": (lambda keys, topic: keys.rank("s1"), "zset"),
    "items waiting for their segment scores": (lambda keys, topic: keys("segments:rescore"), "set"),
    "user's seen set": (lambda keys, topic: keys.user("u2", "seen"), "zset"),
    "event ids": (lambda keys, topic: keys.event_ids(topic, 0), "zset"),
    "events counted per partition": (lambda keys, topic: keys("counted"), "hash"),
    "items' first events": (lambda keys, topic: keys("first"), "hash"),
}


@pytest.mark.parametrize("name", list(WRONG_TYPES))
async def test_a_key_of_the_wrong_type_refuses_the_batch_with_nothing_written(isolated_settings: Settings, name: str):
    """A key the batch writes holds a string: the script refuses before its first write (every key's value and
    expiry as before, watermarks unmoved), names the key and both types, and the worker counts the refusal as its
    own failure (``other``: /healthz turns red), not as Redis's (``redis_error``, retried behind a green one). Once
    the key is gone the same batch applies."""
    from recstream.streams.processor import WAITING_REASONS, retry_reason

    settings = isolated_settings.replace(require_announced_items=False)  # counted items are ranked at once
    keys = Keys.of(settings)
    key_of, kind = WRONG_TYPES[name]
    key = key_of(keys, settings.kafka.events_topic)
    first, second = _two_batches(settings)
    await apply(settings, first)
    client = redis.Redis.from_url(settings.redis.url)
    client.set(key, "not a " + kind)
    before = _snapshot(client)
    with pytest.raises(redis.exceptions.ResponseError) as refusal:
        await apply(settings, second)
    assert _snapshot(client) == before, "nothing of the refused batch may be written"
    assert str(refusal.value).startswith(f"RECSTREAM_STATE {key} is a string, expected a {kind}")
    assert retry_reason(refusal.value) == "other" and "other" not in WAITING_REASONS
    client.delete(key)
    await apply(settings, second)
    assert client.hget(keys.watermarks(None), f"{settings.kafka.events_topic}:0") == b"1"
    assert client.hgetall(keys("views")) == {b"i1": b"3", b"i2": b"1", b"i3": b"1", b"i4": b"2"}
    client.close()


# Where a number that is not finite can reach the script (orjson writes none: a NaN float becomes null), crafted
# into the payload the worker's own store builds. The old script wrote the counters and then failed on ZADD's NaN
# (a seen set's, a trend key's), or wrote infinite counts and arrivals without failing at all.
NOT_FINITE = {  # how to craft it, and what the refusal says of the value
    "seen ts NaN": (lambda payload: payload["seen"]["u2"].update(i4=math.nan), "i4 at nan"),
    "trend increment NaN": (lambda payload: payload["trend"][0][1].__setitem__(0, ("i1", math.nan)), '"i1" + nan'),
    "views delta inf": (lambda payload: payload["items"][1][1].__setitem__(0, math.inf), "views false + inf"),
    "arrival -inf": (lambda payload: _first_arrival(payload).__setitem__(0, "-inf"), 'arrival is "-inf", expected'),
    "arrival not text": (lambda payload: _first_arrival(payload).__setitem__(0, 5), "arrival is 5, expected"),
    "event id not text": (lambda payload: _first_arrival(payload)[1].append(7), "id is 7, expected a string"),
    "seen ts null": (lambda payload: payload["seen"]["u2"].update(i4=None), "the batch is malformed"),
    "events at the clock NaN": (lambda payload: payload.update(at_clock=math.nan), "the events at the clock is nan"),
    "events at the clock 1.5": (lambda payload: payload.update(at_clock=1.5), "the events at the clock is 1.5"),
}


def _first_arrival(payload: dict) -> list:
    """The payload's first group of event ids, ``[arrival ms as text, [user:event_id, …]]`` (StateStore._payloads)."""
    return next(iter(payload["eids"].values()))[0]


@pytest.mark.parametrize("name", [*NOT_FINITE, None])
async def test_a_number_that_is_not_finite_refuses_the_batch_with_nothing_written(
    isolated_settings: Settings, name: str | None
):
    """A NaN, an infinity or a null where the script takes a number, a number where it takes text (an arrival,
    an event id): refused before the first write, every key as
    it was, counted as the worker's own failure. The control (None): the same round-tripped payload unchanged
    applies, so a refusal comes from the value, not from the crafting."""
    from recstream.streams.processor import retry_reason

    settings = isolated_settings.replace(require_announced_items=False)
    first, second = _two_batches(settings)
    await apply(settings, first)
    client = redis.Redis.from_url(settings.redis.url)
    store = StateStore(AsyncRedis.from_url(settings.redis.url), settings)
    [(slot, (payload, values))] = store._payloads(second).items()
    payload = json.loads(json.dumps(payload))  # tuples as lists, as the script reads them
    script = client.register_script(SCRIPT)
    before = _snapshot(client)
    if name is None:
        script(keys=[f"{slot}:wm"], args=[json.dumps(payload), values])
        assert _snapshot(client) != before, "the unchanged batch applies"
    else:
        craft, said = NOT_FINITE[name]
        craft(payload)
        with pytest.raises(redis.exceptions.ResponseError) as refusal:
            script(keys=[f"{slot}:wm"], args=[json.dumps(payload, allow_nan=True), values])
        assert _snapshot(client) == before, "nothing of the refused batch may be written"
        assert str(refusal.value).startswith("RECSTREAM_STATE ") and retry_reason(refusal.value) == "other"
        assert said in str(refusal.value)
    await store.redis.aclose()
    client.close()


async def test_an_item_made_available_before_any_view_enters_no_ranking(isolated_settings: Settings):
    """An item announced hidden, then shown, with no event yet entered ``rank`` at exactly the prior, where no
    rescore pass (they walk the counted items) would ever move it, and a clean replay puts nothing."""
    settings = isolated_settings
    keys, tp = Keys.of(settings), f"{settings.kafka.items_topic}:0"
    for offset, available in enumerate((False, True)):
        effect = Effect(watermarks={tp: (offset - 1, offset)})
        effect.meta = [("i-new", "news", T0, T0 + offset, available, "{}")]
        await apply(settings, effect)
    client = redis.Redis.from_url(settings.redis.url)
    assert not client.sismember(keys("unavailable"), "i-new") and client.zscore(keys.rank(), "i-new") is None
    client.close()


async def test_an_erasure_of_another_user_costs_no_cached_history_whoever_reads_first(isolated_settings: Settings):
    """The events, items and users processors share one store. An items batch whose read came back first saw
    ``erased:count`` move and cleared the cache while an events batch's read was on its way: that batch then found
    its cached users neither cached nor asked of Redis, and wrote their histories back with only its own events."""
    settings = isolated_settings
    keys = Keys.of(settings)
    client = AsyncRedis.from_url(settings.redis.url)
    try:
        store = StateStore(client, settings)
        await store.read_users([])  # the count the cache is valid for
        await client.set(keys.user("u1", "hist"), json.dumps([["i2", 1.0], ["i1", 4.0]]))
        store.remember_histories({"u1": {"i1": 4.0, "i2": 1.0}}, (await store.read_users([])).erasures)
        await client.incr(keys("erased:count"))  # u9 erased by the reader
        _, events = await asyncio.gather(store.read_users([], with_histories=False), store.read_users(["u1"]))
        assert events.histories == {"u1": {"i1": 4.0, "i2": 1.0}}
        assert store._histories == {}, "the cache is dropped once, by whichever read saw the erasure"
        store.remember_histories({"u1": {"i1": 4.0}}, b"0")  # read under a count the cache no longer has
        assert store._histories == {}
    finally:
        await client.aclose()


# events of two partitions, in the order a worker might apply them: partition 0 sees d, a, c; partition 1 c, c, c, d, a
STREAM = [(1, "c"), (1, "c"), (1, "c"), (1, "d"), (0, "d"), (0, "a"), (1, "a"), (0, "c")]


@pytest.mark.parametrize("cuts", [(8,), (1,) * 8, (4, 4), (3, 1, 4), (5, 3)])
async def test_an_item_s_first_event_in_each_partition_is_counted_whatever_the_batches(
    isolated_settings: Settings, cuts: tuple[int, ...]
):
    """Each events partition's count of applied events (``counted``) and each item's first event as a count of all
    events (``first``: its age in events while the clock stands, serving/features.py), estimated as the least over
    partitions of 2 partitions × the partition's events before the item's first one there: d 2 · min(3, 0), a
    2 · min(1, 4), c 2 · min(0, 2). Each is a function of the partitions' logs alone, the same however the stream is
    cut into batches (a batch that sees d only in partition 1 stores 6, the next lowers it to 0), so ``recstream
    rebuild`` writes what the live workers did. An item's later events leave its first alone."""
    settings = isolated_settings.replace(events_partitions=2)
    topic, keys, client = settings.kafka.events_topic, Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    applied = {0: -1, 1: -1}  # each event a message: a partition's offsets count its events
    for start, size in zip(itertools.accumulate(cuts, initial=0), cuts, strict=False):
        batch = STREAM[start : start + size]
        offsets = {p: applied[p] + sum(q == p for q, _ in batch) for p in applied}
        effect = Effect(
            watermarks={f"{topic}:{p}": (applied[p], offsets[p]) for p in applied if offsets[p] > applied[p]}
        )
        events = [Event(type="view", user_id=f"u{p}", item_id=item, ts=T0) for p, item in batch]
        effect.counters = aggregate(events, {}, 3_600_000, 8, partitions=[(topic, p) for p, _ in batch])
        await apply(settings, effect)
        applied = offsets
    assert client.hgetall(keys("counted")) == {b"0": b"3", b"1": b"5"}
    assert client.hgetall(keys("first")) == {b"d": b"0", b"a": b"2", b"c": b"0"}
    client.close()


@pytest.mark.parametrize(("held", "refused"), [("0", False), ("-1", True), ("1.5", True), ("x", True)])
async def test_a_stored_count_that_is_no_count_refuses_the_batch_with_nothing_written(
    isolated_settings: Settings, held: str, refused: bool
):
    """A partition's stored count the batch would add to must be an integer from 0: one that is not (negative, a
    fraction, no number) refuses before the first write, as a stored total does."""
    settings = isolated_settings
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    client.hset(keys("counted"), "0", held)
    first, _ = _two_batches(settings)
    if refused:
        with pytest.raises(redis.exceptions.ResponseError, match="RECSTREAM_STATE rs:counted 0 is"):
            await apply(settings, first)
        assert client.hget(keys("counted"), "0") == held.encode() and not client.exists(keys("views"))
    else:
        await apply(settings, first)
        at = str(2 * settings.kafka.events_partitions).encode()  # partitions × the 2 events before it
        assert client.hget(keys("counted"), "0") == b"3" and client.hget(keys("first"), "i2") == at
    client.close()


@pytest.mark.parametrize(
    ("held", "kept"), [("1", True), ("1000000", False), ("-1", False), ("1.5", False), ("inf", False), ("x", False)]
)
async def test_an_earlier_stored_first_event_stays_and_one_that_is_no_count_is_replaced(
    isolated_settings: Settings, held: str, kept: bool
):
    """The least first event stays: one stored before the batch's is kept, a later one lowered to it; one that is no
    count (negative, a fraction, infinite, no number) is replaced, not refused: nothing adds to it, and a bad one
    kept would stand below every real one for good."""
    settings = isolated_settings
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    client.hset(keys("first"), "i2", held)
    first, _ = _two_batches(settings)
    await apply(settings, first)
    at = str(2 * settings.kafka.events_partitions)  # partitions × the 2 events before it
    assert client.hget(keys("first"), "i2") == (held if kept else at).encode()
    client.close()


STANDING = 4  # pool_graduate_standing_events of the tests below


async def _events_at(settings: Settings, offset: int, stamps: list[int], meta: list | None = None) -> None:
    """One batch of views of item ``seen`` (never in the pool) stamped ``stamps``, and items announced (``meta``)."""
    tp = f"{settings.kafka.events_topic}:0"
    effect = Effect(watermarks={tp: (offset - 1, offset)}, meta=meta or [])
    views = [Event(type="view", user_id="u1", item_id="seen", ts=ts) for ts in stamps]
    effect.counters = aggregate(views, {}, 3_600_000, 8)
    await apply(settings, effect)


@pytest.mark.parametrize(("split", "graduated"), [((STANDING - 1,), False), ((STANDING,), True),
                                                  ((STANDING + 1,), True), ((1, STANDING - 2, 1), True)])  # fmt: skip
async def test_a_clock_that_stands_still_for_the_set_events_graduates_the_pool(
    isolated_settings: Settings, split: tuple[int, ...], graduated: bool
):
    """Timestamps filled in (every event at one instant) measure no age: once ``pool_graduate_standing_events`` were
    applied at the clock's instant, in one batch or over several, every pool item created by that instant graduates
    (at the limit − 1 none does, at the limit and + 1 those created before it and at it), and one announced later
    with that creation time graduates in its own batch. An item created after the instant stays: a new item announced
    live before the first live event moves the clock is new. Without the rule the pool held the catalogue for good."""
    settings = isolated_settings.replace(pool_graduate_standing_events=STANDING, require_announced_items=True)
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    meta = [(item, "x", created, T0, True, "{}") for item, created in (("old", T0 - 1), ("now", T0), ("later", T0 + 1))]
    for offset, n in enumerate(split):
        await _events_at(settings, offset, [T0] * n, meta if offset == 0 else None)
    pool = {item.decode() for item in client.zrange(keys("pool"), 0, -1)}
    assert pool == ({"later"} if graduated else {"old", "now", "later"})
    assert int(client.get(keys("clock:events"))) == sum(split)
    announced = [(item, "x", created, T0, True, "{}") for item, created in (("next", T0), ("live", T0 + 9))]
    await _events_at(settings, len(split), [], announced)  # no events, two announcements
    assert (client.zscore(keys("pool"), "next") is None) == graduated and client.zscore(keys("pool"), "live") == T0 + 9
    client.close()


async def test_the_standing_clock_counts_events_at_its_instant_only(isolated_settings: Settings):
    """A lagging partition's events (stamped before the clock) never count, nor do a batch's events before its own
    latest; the clock moving on starts the count anew: a live stream, whose clock moves every batch, never reaches
    the limit, and its new items age by event time only."""
    settings = isolated_settings.replace(pool_graduate_standing_events=STANDING, require_announced_items=True)
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    await _events_at(settings, 0, [T0 - 5, T0, T0], [("new", "x", T0, T0, True, "{}")])
    await _events_at(settings, 1, [T0 - 1] * (STANDING + 1))  # lagging: before the clock
    assert int(client.get(keys("clock:events"))) == 2
    await _events_at(settings, 2, [T0 + 1] * (STANDING - 1))
    await _events_at(settings, 3, [T0, T0 + 2])  # a new instant: one event at it
    assert int(client.get(keys("clock:events"))) == 1 and client.zscore(keys("pool"), "new") == T0
    client.close()


async def test_a_pool_item_is_as_old_as_its_first_event_when_that_came_before_its_creation(
    isolated_settings: Settings,
):
    """A catalogue imported without dates is stamped with the import's time, years after the history replayed with
    it: each item was in the new-item pool (its age negative, so never aging) until the live clock passed the import
    by the graduation age. An item's event before its stated creation moves its pool score back to
    that event (its created_ts stays: the rebuild's equals the live one's only so), and the age rule judges it on
    it: one whose first event is older than the graduation age graduates, one first seen within it stays (as new as
    its first appearance), an event after its creation changes nothing."""
    settings = isolated_settings.replace(require_announced_items=True)
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    age_ms, imported = settings.pool.graduate_age_s * 1000, T0 + 10 * 365 * 86_400_000
    meta = [(item, "x", imported, imported, True, "{}") for item in ("old", "recent", "live")]
    meta[2] = ("live", "x", T0 - age_ms, T0 - age_ms, True, "{}")
    tp = f"{settings.kafka.events_topic}:0"
    effect = Effect(watermarks={tp: (-1, 0)}, meta=meta)
    stamps = {"old": T0 - age_ms - 1, "recent": T0, "live": T0}
    events = [Event(type="view", user_id="u1", item_id=item, ts=ts) for item, ts in stamps.items()]
    effect.counters = aggregate(events, {}, 3_600_000, 8)
    await apply(settings, effect)
    assert client.zrange(keys("pool"), 0, -1, withscores=True) == [(b"live", T0 - age_ms), (b"recent", T0)]
    assert client.sismember(keys("graduated"), "old")
    created = {item: int(client.hget(keys(f"item:{item}"), "created_ts")) for item in stamps}
    assert created == {"old": imported, "recent": imported, "live": T0 - age_ms}
    client.close()


GRADUATIONS_PER_CALL = 4_000  # apply_batch.lua's CHUNK: pool items one batch graduates by age at most


@pytest.mark.parametrize("items", [GRADUATIONS_PER_CALL - 1, GRADUATIONS_PER_CALL, GRADUATIONS_PER_CALL + 1])
async def test_a_batch_graduates_at_most_a_chunk_of_aged_items_the_oldest_first(
    isolated_settings: Settings, items: int
):
    """A catalogue's worth of pool items aging at once (announced together, or a standing clock) would block Redis
    for seconds in one call: a batch graduates the oldest 4,000 and the next batches the rest, so at the limit − 1
    and the limit one batch takes them all, at + 1 the newest waits for the next one."""
    settings = isolated_settings.replace(require_announced_items=True)
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    age_ms = settings.pool.graduate_age_s * 1000
    meta = [(f"n{k}", "x", T0 + k, T0, True, "{}") for k in range(items)]
    await _events_at(settings, 0, [T0 + items], meta)
    assert client.zcard(keys("pool")) == items
    await _events_at(settings, 1, [T0 + items + age_ms])
    left = [item.decode() for item in client.zrange(keys("pool"), 0, -1)]
    assert left == [f"n{k}" for k in range(GRADUATIONS_PER_CALL, items)], "the oldest graduated first"
    assert client.scard(keys("graduated")) == min(items, GRADUATIONS_PER_CALL)
    await _events_at(settings, 2, [])
    assert client.zcard(keys("pool")) == 0
    client.close()


async def test_an_undated_catalogue_item_with_events_graduates_under_a_standing_clock(isolated_settings: Settings):
    """Both halves of an adopter's undated import: the catalogue stamped with the import's time (years after the
    filled-in event dates), the history at one instant. An item with events is as old as its first one, so the
    standing clock graduates it; one nobody interacted with keeps its import time and stays in the pool."""
    settings = isolated_settings.replace(pool_graduate_standing_events=2, require_announced_items=True)
    keys, client = Keys.of(settings), redis.Redis.from_url(settings.redis.url)
    imported = T0 + 10 * 365 * 86_400_000
    meta = [(item, "x", imported, imported, True, "{}") for item in ("rated", "untouched")]
    tp = f"{settings.kafka.events_topic}:0"
    effect = Effect(watermarks={tp: (-1, 0)}, meta=meta)
    effect.counters = aggregate([Event(type="view", user_id=f"u{k}", item_id="rated", ts=T0) for k in range(2)], {},
                                3_600_000, 8)  # fmt: skip
    await apply(settings, effect)
    assert client.zrange(keys("pool"), 0, -1) == [b"untouched"] and client.sismember(keys("graduated"), "rated")
    client.close()
