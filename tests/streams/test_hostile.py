"""Hostile input through the real broker: 10,000 malformed or adversarial messages, one real worker.

The messages come from hypothesis strategies (derandomized, so every run sends the same bytes)
and each one carries its expected outcome *by construction*: the valid objects it holds and how
many dead letters it must cause. They are interleaved with valid messages on ``events``, ``items``
and ``users`` and produced in one go; one worker consumes them all. The test then checks that the
worker is alive and still applying, that the dead-letter topic holds exactly the expected letters
per source message (each with a reason), and that the counters, item metadata and segments equal
an independent computation over the valid objects (each applied once, a user's repeated event_id once).

Then, each with its own worker: messages at every size limit on every topic, field names made up to
become metric labels, events on a partition their user does not hash to, timestamps ahead of arrival.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from recstream.streams.processor import DEAD_LETTER_MAX_BYTES

from recstream.contracts.events import (
    MAX_EVENTS_PER_MESSAGE,
    MAX_ID_LEN,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    REASON_CODES,
    Event,
    ItemEvent,
    Kind,
    decode,
    partition_for,
    segment_of,
)
from recstream.contracts.settings import Settings
from recstream.shell.demo import metric_sum
from tests.conftest import wait_until
from tests.streams.scenario import T0, applied_events, dead_letters, publish, trained, world

pytestmark = pytest.mark.integration

N_HOSTILE = 10_000
CHUNK = 25  # messages per hypothesis example: the batch is many examples' worth, collected
HOSTILE_SHARE = 10 / 15
DAY_MS = 86_400_000
USERS = [f"u{k}" for k in range(40)] + ["rs.wm", "user.seg", "__proto__", "..", "-", "a.b-c_d", "x" * MAX_ID_LEN]
ITEMS = [f"i{k}" for k in range(30)] + ["rs.totals", "constructor", "item.1", "_", "0", "y" * MAX_ID_LEN]
CATEGORIES = ["news", "sport", "music", "film"]
INJECTIONS = [
    "", " ", "u1 ", "u1\r\nFLUSHALL\r\n", "*", "rs:*", "u?", "u[1]", "../../etc/passwd", "'; DROP TABLE users; --",
    '{"$ne": null}', "u1\x00", "<script>alert(1)</script>", "${jndi:ldap://x/a}", "ü", "😀", "u1\n", "%00", "u/1",
    "u\\1", "u,1", "u 1", "\u202eu1", "u1\t", "z" * (MAX_ID_LEN + 1), "rs:wm", "rs:totals", ":", "i1:similar",
]  # fmt: skip
TOP = {"event": ["type", "user_id", "item_id", "ts"], "item": ["op", "item_id", "ts"], "user": ["user_id", "ts"]}


@dataclass(frozen=True)
class Outgoing:
    """One message to produce and what it must cause: the valid objects applied and the dead letters."""

    kind: Kind
    key: bytes | None
    value: bytes | None
    valid: tuple[dict, ...]
    rejected: int


# --- strategies ---------------------------------------------------------------------------------

ids = st.sampled_from(USERS)
items = st.sampled_from(ITEMS)
i64 = st.integers(-(2**63), 2**63 - 1)  # what JSON integers may hold (orjson refuses wider ones)
past_ts = st.integers(MIN_TS_MS, T0 + 30 * DAY_MS)  # any order, never ahead of the consumer's clock
not_int = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.booleans(), st.lists(i64, max_size=3)
)
not_str = st.one_of(  # finite: orjson writes inf as null, and null is a valid optional id
    i64, st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(i64, max_size=2)
)
bad_optional_id = st.one_of(  # refused where an id may be left out (None is fine there)
    st.sampled_from(INJECTIONS),
    st.text(min_size=1, max_size=20).filter(
        lambda s: any(not (c.isascii() and (c.isalnum() or c in "_.:-")) for c in s)
    ),
    not_str,
)
bad_id = st.one_of(bad_optional_id, st.none())
long_strings = st.tuples(st.integers(MAX_ID_LEN + 1, 200_000), st.sampled_from("aZ9_:")).map(lambda t: t[1] * t[0])
bad_timestamp = st.one_of(  # refused where a timestamp may be left out
    not_int,
    st.integers(-(2**63), MIN_TS_MS - 1),
    st.integers(2**53 + 1, 2**63 - 1),  # past the contract's bound, still a 64-bit JSON integer
)
bad_ts = st.one_of(bad_timestamp, st.none())


def far_future(now_ms: int) -> st.SearchStrategy[int]:
    return st.integers(now_ms + 2 * DAY_MS, 2**53)


EDGE_DEPTHS = st.sampled_from([255, 256, 1000, 1022, 1023, 1024])  # orjson writes 255 levels, reads 1,024


def deep(depth: int) -> orjson.Fragment:
    """JSON nested ``depth`` levels (lists and single-key objects in turn) around ``1``, as a fragment:
    orjson itself writes at most 255 levels, the parser reads 1,024."""
    opening = "".join("[" if level % 2 == 0 else '{"a":' for level in reversed(range(depth)))
    closing = "".join("]" if level % 2 == 0 else "}" for level in range(depth))
    return orjson.Fragment(f"{opening}1{closing}")


def valid_object(kind: Kind) -> st.SearchStrategy[dict]:
    if kind == "event":
        return st.fixed_dictionaries(
            {"type": st.sampled_from(["view", "click"]), "user_id": ids, "item_id": items, "ts": past_ts},
            optional={
                "event_id": st.sampled_from([f"dup-{k}" for k in range(5)]),  # a user's repeated id: applied once
                "context": st.just({"source": "popular", "page": 2, "ok": True, "none": None}),
            },
        )
    if kind == "item":
        return st.fixed_dictionaries(
            {"op": st.sampled_from(["new", "update", "remove"]), "item_id": items, "ts": past_ts},
            optional={
                "categories": st.lists(st.sampled_from(CATEGORIES), max_size=3),
                "available": st.booleans(),
                "created_ts": past_ts,
                "features": st.dictionaries(st.sampled_from(["len", "q"]), st.floats(-1e6, 1e6)),
            },
        )
    attributes = st.fixed_dictionaries({"age": st.integers(10, 80), "gender": st.sampled_from(["M", "F", "X"])})
    return st.fixed_dictionaries({"user_id": ids, "ts": past_ts, "attributes": attributes})


def bad_fields(kind: Kind, now_ms: int, big: bool) -> dict[str, st.SearchStrategy[object]]:
    """Per field, values that field must refuse (the wrong type, a bad id, too long, out of range, too deep).

    ``big`` allows strings of up to 200 KB (not inside micro-batches, which must stay under the size cap).
    """
    huge = long_strings if big else st.just("h" * (MAX_ID_LEN + 1))
    deep_value = (st.one_of(st.integers(2, 1022), EDGE_DEPTHS) if big else st.integers(2, 900)).map(deep)
    common = {"ts": st.one_of(bad_ts, far_future(now_ms), deep_value)}
    if kind == "event":
        return common | {
            "type": st.one_of(st.sampled_from(["share", "VIEW", "", "click "]), not_str, st.none()),
            "user_id": st.one_of(bad_id, huge, deep_value),
            "item_id": st.one_of(bad_id, huge),
            "event_id": st.one_of(bad_optional_id, huge),
            "context": st.one_of(
                i64,
                st.text(max_size=5),
                st.lists(i64, max_size=2),
                deep_value.map(lambda v: {"k": v}),
                st.dictionaries(st.sampled_from(INJECTIONS), i64, min_size=1, max_size=2),
                st.just({f"k{n}": n for n in range(17)}),
                huge.map(lambda s: {"k": "k" * 256 + s}),
            ),
        }
    if kind == "item":
        return common | {
            "op": st.one_of(st.sampled_from(["delete", "NEW", ""]), not_str),
            "item_id": st.one_of(bad_id, huge),
            "categories": st.one_of(
                st.text(max_size=5),
                st.lists(st.sampled_from(INJECTIONS), min_size=1, max_size=2),
                st.just(["c"] * 33),
                deep_value,
            ),
            "features": st.one_of(st.just({"f": "1"}), st.just({"f": None}), st.just({"f": 1e308 * 10}), not_str),
            "available": st.one_of(st.sampled_from(["true", 1, 0, "yes"]), st.none()),
            "created_ts": bad_timestamp,
        }
    return common | {
        "user_id": st.one_of(bad_id, huge, deep_value),
        "attributes": st.one_of(
            st.text(max_size=5),
            st.lists(i64, max_size=2),
            st.just({f"a{n}": n for n in range(33)}),
            st.just({"age": [30]}),
            st.just({"age": {"y": 30}}),
            st.just({"bad key": 1}),
        ),
        "preferred_categories": st.one_of(st.just(["a b"]), st.just(["c"] * 33), st.text(max_size=3)),
        "not_interested": st.one_of(st.just(["i 1"]), st.just([f"i{n}" for n in range(257)]), i64),
    }


def hostile_object(kind: Kind, now_ms: int, big: bool = True) -> st.SearchStrategy[dict]:
    """A valid object broken in exactly one way: a field dropped, a bad value, or a field the contract lacks."""
    base = valid_object(kind)
    broken_values = [
        st.tuples(base, bad).map(lambda t, name=name: {**t[0], name: t[1]})
        for name, bad in bad_fields(kind, now_ms, big).items()
    ]
    dropped = st.tuples(base, st.sampled_from(TOP[kind])).map(lambda t: {k: v for k, v in t[0].items() if k != t[1]})
    extra = st.tuples(base, st.sampled_from(["x_admin", "$where", "__class__", "TYPE"])).map(
        lambda t: {**t[0], t[1]: True}
    )
    return st.one_of(*broken_values, dropped, extra)


def as_bytes(obj: object) -> bytes:
    return orjson.dumps(obj)


def raw_garbage() -> st.SearchStrategy[tuple[bytes | None, int]]:
    """Whole messages that are not a batch of objects: (value, dead letters it causes)."""
    return st.one_of(
        st.binary(max_size=300).map(lambda b: (b"\x00" + b, 1)),  # random bytes (never JSON: a NUL first)
        st.one_of(st.integers(2, 5000), EDGE_DEPTHS).map(lambda d: (as_bytes(deep(d)), 1)),  # parseable up to 1,024
        st.sampled_from([b"null", b"1", b'"text"', b"true", b"1e400", b"NaN", b"{", b'{"a":"\xff"}', b""]).map(
            lambda v: (v, 1)
        ),
        st.just((None, 1)),  # a tombstone (on users an erasure's: no letter, see message())
        st.just((b"[]", 0)),  # an empty batch: nothing to apply, nothing to reject
        st.just((b"[" + b"1," * MAX_EVENTS_PER_MESSAGE + b"1]", 1)),  # one element too many
        st.integers(0, 3).map(lambda n: (as_bytes([1, "x", None, [], 2.5][: n + 1]), n + 1)),
    )


def message(kind: Kind, now_ms: int) -> st.SearchStrategy[Outgoing]:
    """A hostile message for ``kind``'s topic; on ``events`` also micro-batches mixing valid and broken events."""
    keys = st.binary(min_size=1, max_size=16)  # compacted topics refuse a message without a key
    if kind == "event":
        keys = st.one_of(st.none(), keys)
    garbage = st.tuples(keys, raw_garbage()).map(
        lambda t: Outgoing(kind, t[0] or b"k", t[1][0], (), 0 if t[1][0] is None and kind == "user" else t[1][1])
    )  # a tombstone on users is an erasure's: nothing to apply, nothing wrong
    single = st.tuples(keys, hostile_object(kind, now_ms)).map(lambda t: Outgoing(kind, t[0], as_bytes(t[1]), (), 1))
    duplicated_key = valid_object(kind).map(lambda o: _duplicated_key(kind, o))
    choices = [garbage, single, single, duplicated_key]
    if kind == "event":
        choices.append(mixed_batch(now_ms))
    return st.one_of(*choices)


def _duplicated_key(kind: Kind, obj: dict) -> Outgoing:
    """A valid object whose JSON repeats its first key with a bad value before the good one: the last wins."""
    first = next(iter(obj))
    head = as_bytes({first: "bad value"})[:-1] + b","
    return Outgoing(kind, _key(kind, obj), head + as_bytes(obj)[1:], (obj,), 0)


def mixed_batch(now_ms: int) -> st.SearchStrategy[Outgoing]:
    """One user's micro-batch with broken events among the valid ones: each element stands alone."""
    element = st.one_of(
        valid_object("event").map(lambda o: (o, True)),
        hostile_object("event", now_ms, big=False).map(lambda o: (o, False)),
    )

    def build(user: str, elements: list[tuple[dict, bool]]) -> Outgoing:
        objs = [{**o, "user_id": user} if ok else o for o, ok in elements]
        valid = tuple(o for o, (_, ok) in zip(objs, elements, strict=True) if ok)
        return Outgoing("event", user.encode(), as_bytes(objs), valid, len(objs) - len(valid))

    return st.builds(build, ids, st.lists(element, min_size=1, max_size=8))


def valid_message(kind: Kind) -> st.SearchStrategy[Outgoing]:
    if kind == "event":
        batch = st.tuples(ids, st.lists(valid_object("event"), min_size=1, max_size=10)).map(
            lambda t: [{**o, "user_id": t[0]} for o in t[1]]
        )
        return batch.map(
            lambda b: Outgoing("event", b[0]["user_id"].encode(), as_bytes(b if len(b) > 1 else b[0]), tuple(b), 0)
        )
    return valid_object(kind).map(lambda o: Outgoing(kind, _key(kind, o), as_bytes(o), (o,), 0))


def _key(kind: Kind, obj: dict) -> bytes:
    return obj["item_id" if kind == "item" else "user_id"].encode()


def stream(now_ms: int) -> st.SearchStrategy[list[tuple[Outgoing, bool]]]:
    """A chunk of messages over the three topics, about one valid message in three (flagged True)."""
    hostile = {kind: message(kind, now_ms).map(lambda m: (m, False)) for kind in TOP}
    valid = {kind: valid_message(kind).map(lambda m: (m, True)) for kind in TOP}
    weighted = [*[hostile["event"]] * 6, hostile["item"], hostile["item"], hostile["user"], hostile["user"]]
    weighted += [*[valid["event"]] * 3, valid["item"], valid["user"]]  # HOSTILE_SHARE of the choices are hostile
    return st.lists(st.one_of(*weighted), min_size=CHUNK, max_size=CHUNK)


def generate(now_ms: int, n_hostile: int = N_HOSTILE) -> list[Outgoing]:
    """The whole run's messages, from many derandomized hypothesis examples, until ``n_hostile`` are hostile."""
    out: list[tuple[Outgoing, bool]] = []

    @settings(
        max_examples=math.ceil(1.1 * n_hostile / (CHUNK * HOSTILE_SHARE)),
        derandomize=True, database=None, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(stream(now_ms))
    def collect(chunk: list[tuple[Outgoing, bool]]) -> None:
        out.extend(chunk)

    collect()
    hostile = list(itertools.accumulate(not ok for _, ok in out))
    assert hostile[-1] >= n_hostile, f"hypothesis gave only {hostile[-1]} hostile messages"
    return [m for m, _ in out[: hostile.index(n_hostile) + 1]]


# --- the run -----------------------------------------------------------------------------------


def topic_of(settings: Settings) -> Callable[[Kind], str]:
    return {
        "event": settings.kafka.events_topic,
        "item": settings.kafka.items_topic,
        "user": settings.kafka.users_topic,
    }.__getitem__


async def produce(settings: Settings, messages: list[Outgoing]) -> list[str]:
    """Send every message (acks=all), in order per topic and key; returns each one's ``topic:partition:offset``."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", max_request_size=4 << 20,
                                max_batch_size=1 << 20, linger_ms=5)  # fmt: skip
    topic = topic_of(settings)
    await producer.start()
    try:
        futures = [await producer.send(topic(m.kind), m.value, key=m.key) for m in messages]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [f"{r.topic}:{r.partition}:{r.offset}" for r in sent]


def last_offsets(sources: list[str]) -> dict[str, int]:
    """Each partition's last offset among ``sources`` (``topic:partition:offset``), keyed as the watermarks are."""
    last: dict[str, int] = {}
    for source in sources:
        tp, _, offset = source.rpartition(":")
        last[tp] = max(int(offset), last.get(tp, -1))
    return last


def watermarks(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall("rs:wm").items()}


def dead_lettered(worker) -> float:
    """The worker's recstream_worker_dead_letters_total, every topic and reason."""
    return metric_sum(worker.metrics(), "recstream_worker_dead_letters_total{")


def applied_once(events: list[dict]) -> list[dict]:
    """The events a worker applies: a user's repeated ``event_id`` only the first time (the whole run is well
    within the de-duplication window); a user's events are in one partition, so in the order sent."""
    seen: set[tuple[str, str]] = set()
    out = []
    for event in events:
        key = (event["user_id"], event.get("event_id"))
        if key[1] is None or key not in seen:
            seen.add(key)
            out.append(event)
    return out


def mislabelled(messages: list[Outgoing], now_ms: int) -> list[tuple[Outgoing, list[str]]]:
    """The messages that do not decode as their construction says, with the reasons the contract gave."""
    wrong = []
    for m in messages:
        valid, rejected = decode(m.value, m.kind, now_ms)
        if len(valid) != len(m.valid) or len(rejected) != m.rejected or any(not r.reason for r in rejected):
            wrong.append((m, [r.reason for r in rejected]))
    return wrong


def test_labels_agree_with_the_contract_module():
    """Every generated message decodes as its construction says (so the run below checks the worker, not us)."""
    now_ms = int(time.time() * 1000)
    assert mislabelled(generate(now_ms, n_hostile=2_000), now_ms) == []


async def test_hostile_input_goes_to_the_dlq_and_every_valid_event_is_applied_once(isolated_settings, worker_factory):
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    now_ms = int(time.time() * 1000)
    messages = generate(now_ms)
    # hypothesis mixes in constants from the modules imported so far, so which bytes come out depends on the
    # tests this process ran before: check this run's labels, not only the fixed prefix of the test above
    assert mislabelled(messages, now_ms) == [], "the generator mislabelled a message"
    valid = {kind: [o for m in messages if m.kind == kind for o in m.valid] for kind in ("event", "item", "user")}
    worker = worker_factory(settings)
    sources = await produce(settings, messages)
    expected_letters = Counter({src: m.rejected for src, m in zip(sources, messages, strict=True) if m.rejected})
    events = applied_once(valid["event"])
    assert len(events) < len(valid["event"]), "the run repeats some user's event_id"
    n_events = len(events)
    last = last_offsets(sources)
    # the items and users agents apply their topics beside the events agent: every partition's last message too
    wait_until(lambda: applied_events(client, "rs") >= n_events and watermarks(client) == last, timeout_s=90,
               what="every valid event applied, every partition's last message")  # fmt: skip
    letters = await dead_letters(settings, expected=expected_letters.total())

    assert worker.proc.poll() is None, "the worker died"
    headers = [dict(m.headers) for m in letters]
    assert [h for h in headers if not h.get("reason")] == [], "every dead letter names its reason"
    assert Counter(h["source"].decode() for h in headers) == expected_letters
    whole = {src: m.value for src, m in zip(sources, messages, strict=True) if m.rejected and not m.valid}
    assert all(m.value == whole[h["source"].decode()] for m, h in zip(letters, headers, strict=True)
               if h["reason"].startswith(b"json:")), "an unparseable message goes to the DLQ as it came"  # fmt: skip

    views = Counter(e["item_id"] for e in events if e["type"] == "view")
    clicks = Counter(e["item_id"] for e in events if e["type"] == "click")
    assert applied_events(client, "rs") == n_events
    assert {k.decode(): int(v) for k, v in client.hgetall("rs:views").items() if int(v)} == dict(views)
    assert {k.decode(): int(v) for k, v in client.hgetall("rs:clicks").items()} == dict(clicks)
    last_item = {i["item_id"]: i for i in valid["item"]}  # one partition: the last message wins
    for item_id, item in last_item.items():
        meta = {k.decode(): v.decode() for k, v in client.hgetall(f"rs:item:{item_id}").items()}
        available = item.get("available", True) and item["op"] != "remove"
        categories = ",".join(dict.fromkeys(item.get("categories", [])))  # each once (contracts/events.Categories)
        assert (meta["categories"], meta["available"]) == (categories, str(int(available)))
    segments = {u["user_id"]: segment_of(u["attributes"]) for u in valid["user"]}  # keyed by user: per-user order
    assert {k.decode(): v.decode() for k, v in client.hgetall("rs:user:seg").items()} == segments

    ok = {"type": "click", "user_id": "after", "item_id": "i1", "ts": now_ms}
    await produce(settings, [Outgoing("event", b"after", as_bytes(ok), (ok,), 0)])
    wait_until(lambda: applied_events(client, "rs") == n_events + 1, what="the worker to keep applying")


async def test_an_id_that_spells_another_keys_name_goes_to_the_dlq(isolated_settings, worker_factory, tmp_path):
    """'i1:similar' would name item i1's neighbour list (a string) as an item hash: WRONGTYPE in apply_batch.lua
    stopped the worker after every restart. Ids may not hold ':', the key separator; the event is dead-lettered."""
    users, items, events = world(n_users=20, n_items=20, n_events=400)
    settings, _ = await trained(isolated_settings, tmp_path, events, items)  # writes rs:item:i<k>:similar lists
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, users=users, items=items)
    await publish(settings, events=[Event.model_construct(type="view", user_id="u1", item_id="i1:similar", ts=T0),
                                    Event(type="view", user_id="u1", item_id="i1", ts=T0 + 1)])  # fmt: skip
    wait_until(lambda: applied_events(client, "rs") == 1 or worker.proc.poll() is not None, what="the event or a crash")
    assert worker.proc.poll() is None and applied_events(client, "rs") == 1
    [letter] = await dead_letters(settings, expected=1)
    assert b"item_id" in dict(letter.headers)["reason"] and client.get("rs:item:i1:similar") is not None


# --- size limits, metric labels, partitions and clocks ----------------------------------------------

SIZE_LIMITS = (DEAD_LETTER_MAX_BYTES, MAX_MESSAGE_BYTES)


def padded(obj: dict, size: int) -> bytes:
    """``obj`` as JSON followed by spaces (still valid JSON) to exactly ``size`` bytes."""
    raw = as_bytes(obj)
    return raw + b" " * (size - len(raw))


def poison(now_ms: int) -> list[Outgoing]:
    """At limit − 1, limit and limit + 1 of each size limit, on each topic: a valid object padded to that size
    (applied up to MAX_MESSAGE_BYTES) and bytes that are no JSON (dead-lettered, cut past DEAD_LETTER_MAX_BYTES)."""
    out = []
    for kind in TOP:
        for size in (limit + d for limit in SIZE_LIMITS for d in (-1, 0, 1)):
            name = f"p{size}"
            obj = {
                "event": {"type": "view", "user_id": name, "item_id": "i1", "ts": now_ms},
                "item": {"op": "new", "item_id": name, "ts": now_ms},
                "user": {"user_id": name, "ts": now_ms, "attributes": {"age": 30, "gender": "F"}},
            }[kind]
            fits = size <= MAX_MESSAGE_BYTES
            out.append(Outgoing(kind, name.encode(), padded(obj, size), (obj,) if fits else (), int(not fits)))
            out.append(Outgoing(kind, name.encode(), b"!" * size, (), 1))
    return out


async def test_poison_at_every_size_limit_is_cut_in_the_dlq_and_stops_no_partition(isolated_settings, worker_factory):
    """A message just under faust's producer limit (1,000,000 bytes), dead-lettered whole, raised ProducerSendError
    and stopped the events agent: no partition was applied again while the process lived. Every size limit, at
    limit − 1, limit and limit + 1, on each topic the worker reads: the DLQ gets at most DEAD_LETTER_MAX_BYTES
    of each with its size and reason, and every partition goes on."""
    settings = isolated_settings
    client = redis.Redis.from_url(settings.redis.url)
    now_ms = int(time.time() * 1000)
    messages = poison(now_ms)
    after, n = [], settings.kafka.events_partitions
    for p in range(n):  # then a valid event on every events partition
        user = next(f"after{k}" for k in itertools.count() if partition_for(f"after{k}", n) == p)
        event = {"type": "click", "user_id": user, "item_id": "i1", "ts": now_ms}
        after.append(Outgoing("event", user.encode(), as_bytes(event), (event,), 0))
    worker = worker_factory(settings)
    sources = await produce(settings, messages + after)
    valid = {kind: [o for m in messages + after if m.kind == kind for o in m.valid] for kind in TOP}
    last = last_offsets(sources)
    # the items and users agents apply their topics beside the events agent: their partitions' last messages too
    wait_until(lambda: (applied_events(client, "rs") == len(valid["event"]) and watermarks(client) == last)
               or not worker.alive(), what="every valid event applied, every partition's last message")  # fmt: skip
    letters = await dead_letters(settings, expected=sum(m.rejected for m in messages))

    assert worker.alive() and applied_events(client, "rs") == len(valid["event"])
    assert watermarks(client) == last, "no partition stalled"
    assert {k.decode() for k in client.hgetall("rs:user:seg")} == {u["user_id"] for u in valid["user"]}
    items = {i["item_id"] for i in valid["item"]}
    assert {k.decode()[len("rs:item:") :] for k in client.keys("rs:item:p*")} == items
    sent = dict(zip(sources, messages, strict=False))
    got = [(sent[dict(m.headers)["source"].decode()], m) for m in letters]
    assert sorted(len(m.value) for m, _ in got) == sorted(len(m.value) for m in messages if m.rejected)
    for message, letter in got:
        headers = dict(letter.headers)
        assert letter.value == message.value[:DEAD_LETTER_MAX_BYTES]
        assert headers["size"] == str(len(message.value)).encode()
        too_big = len(message.value) > MAX_MESSAGE_BYTES
        assert headers["reason"].startswith(b"size:" if too_big else b"json:")


async def test_a_made_up_field_name_never_becomes_a_metric_label(isolated_settings, worker_factory):
    """A field the contract lacks is refused, and the DLQ metric's reason label was that field's name: any sender
    could add Prometheus series without bound. The label is one of a fixed set."""
    settings = isolated_settings
    now_ms = int(time.time() * 1000)
    made_up = [{"type": "view", "user_id": "u1", "item_id": "i1", "ts": now_ms, f"x_made_up_{k}": 1} for k in range(5)]
    ok = {"type": "view", "user_id": "u1", "item_id": "i1", "ts": now_ms}
    worker = worker_factory(settings)
    await produce(settings, [Outgoing("event", b"u1", as_bytes(o), (), 1) for o in made_up]
                  + [Outgoing("event", b"u1", as_bytes(ok), (ok,), 0)])  # fmt: skip
    client = redis.Redis.from_url(settings.redis.url)
    # a call's counters are exported after Redis answers its script: wait for the dead letters' too
    wait_until(lambda: applied_events(client, "rs") == 1 and dead_lettered(worker) >= 5, what="the valid event")
    pattern = r'recstream_worker_dead_letters_total\{reason="([^"]*)",topic="[^"]*"\} (\S+)'
    labels = re.findall(pattern, worker.metrics())
    assert labels == [("other", "5.0")]
    assert "other" not in REASON_CODES and {"json", "size", "partition", "ts", "user_id"} <= REASON_CODES


async def test_a_field_name_near_the_size_limit_is_dead_lettered_and_the_partition_goes_on(
    isolated_settings, worker_factory
):
    """The reason named a made-up field in full. A name of ~1 MB put the reason header past faust's producer limit:
    the dead letter could never be sent, and the batch was retried forever. The reason now cuts the name."""
    settings = isolated_settings
    now_ms = int(time.time() * 1000)
    event = {"type": "view", "user_id": "u1", "item_id": "i1", "ts": now_ms}
    name = "x" * (MAX_MESSAGE_BYTES - len(as_bytes({**event, "": 1})))
    huge = {**event, name: 1}
    assert len(as_bytes(huge)) == MAX_MESSAGE_BYTES, "within the message limit: refused for its field, not its size"
    worker = worker_factory(settings)
    await produce(settings, [Outgoing("event", b"u1", as_bytes(huge), (), 1),
                             Outgoing("event", b"u1", as_bytes(event), (event,), 0)])  # fmt: skip
    client = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: applied_events(client, "rs") == 1 or not worker.alive(), what="the event behind it")
    letters = await dead_letters(settings, expected=1)
    assert worker.alive() and applied_events(client, "rs") == 1
    assert [dict(m.headers)["reason"].decode() for m in letters] == [
        f"{'x' * MAX_ID_LEN}…: Extra inputs are not permitted"
    ]


async def test_an_event_on_a_partition_its_user_does_not_hash_to_is_dead_lettered(isolated_settings, worker_factory):
    """A producer with another partitioner puts a user's event where another worker may own the user: both would
    write the user's history. The worker applies only events whose user hashes (murmur2) to the message's
    partition, over the topic's partition count, and dead-letters the rest with the reason."""
    settings = isolated_settings
    n = settings.kafka.events_partitions
    now_ms = int(time.time() * 1000)
    home = partition_for("u1", n)
    events = [{"type": "view", "user_id": "u1", "item_id": f"i{p}", "ts": now_ms + p} for p in range(n)]
    worker = worker_factory(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for p, event in enumerate(events):  # i<p> on partition p: only i<home> is where u1 belongs
            await producer.send_and_wait(settings.kafka.events_topic, as_bytes(event), key=b"u1", partition=p)
    finally:
        await producer.stop()
    letters = await dead_letters(settings, expected=n - 1)
    client = redis.Redis.from_url(settings.redis.url)
    # the letters go out before their batch's script runs, and are counted after it answered
    wait_until(lambda: applied_events(client, "rs") >= 1 and dead_lettered(worker) >= n - 1,
               what="the event on u1's partition, the others' batches counted")  # fmt: skip
    assert worker.alive() and {k.decode() for k in client.hkeys("rs:views")} == {f"i{home}"}
    assert sorted(dict(m.headers)["source"].decode().rsplit(":", 2)[1] for m in letters) == [
        str(p) for p in range(n) if p != home
    ]
    assert all(dict(m.headers)["reason"].startswith(b"partition: user 'u1' belongs to") for m in letters)
    assert (
        f'dead_letters_total{{reason="partition",topic="{settings.kafka.events_topic}"}} {n - 1}.0' in worker.metrics()
    )


async def test_a_timestamp_ahead_of_its_arrival_does_not_move_the_event_clock(isolated_settings, worker_factory):
    """Events up to a day ahead pass validation (client clocks drift); their ts moved the worker's event clock
    forward for good, and pool items graduated by age 23 hours early. The clock takes each event's ts only up to
    its record's arrival."""
    settings = isolated_settings.replace(pool_graduate_age_s=7200)
    now_ms = int(time.time() * 1000)
    hour = 3_600_000
    item = ItemEvent(op="new", item_id="young", ts=now_ms - hour, created_ts=now_ms - hour)
    worker = worker_factory(settings)
    await publish(settings, items=[item])
    client = redis.Redis.from_url(settings.redis.url)
    wait_until(lambda: client.zscore("rs:pool", "young") is not None, what="the item in the pool")
    ahead = Event(type="view", user_id="u1", item_id="other", ts=now_ms + 23 * hour)
    await publish(settings, events=[ahead, Event(type="view", user_id="u1", item_id="other", ts=now_ms - 1)])
    wait_until(lambda: applied_events(client, "rs") == 2, what="both events")
    assert worker.alive()
    assert now_ms - 1 <= int(client.get("rs:clock")) <= int(time.time() * 1000)
    assert client.zscore("rs:pool", "young") is not None and not client.sismember("rs:graduated", "young")
