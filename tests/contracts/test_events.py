from __future__ import annotations

import orjson
import pytest

from recstream.contracts.events import (
    MAX_EVENTS_PER_MESSAGE,
    MAX_FUTURE_SKEW_MS,
    MAX_ID_LEN,
    MAX_MESSAGE_BYTES,
    Event,
    ItemEvent,
    Rejected,
    UserEvent,
    decode,
    encode,
    micro_batches,
    segment_of,
    validate,
)
from tests.client.conftest import NOW_MS, at_byte_limit, at_count_limit

NOW = 1_700_000_000_000
GOOD = {"type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW - 1000}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"type": "share"},
            "type: unknown feedback type 'share' (configured: view, click, like, add_to_cart, purchase, rating, "
            "dislike)",
        ),
        ({"type": "Click"}, "type: String should match pattern"),
        ({"user_id": None}, "user_id: Input should be a valid string"),
        ({"user_id": "u" * (MAX_ID_LEN + 1)}, "user_id: String should have at most 64 characters"),
        ({"item_id": "i1; DEL *"}, "item_id: String should match pattern"),
        ({"item_id": "i1:similar"}, "item_id: String should match pattern"),  # would name item i1's neighbours key
        ({"item_id": ""}, "item_id: String should have at least 1 character"),
        ({"ts": -5}, "ts: Input should be greater than or equal to 631152000000 (epoch milliseconds"),
        ({"ts": 1_700_000_000}, "ts: Input should be greater than or equal to 631152000000 (epoch milliseconds"),
        ({"ts": "1700000000000"}, "ts: Input should be a valid integer"),
        ({"ts": 1.7e12}, "ts: Input should be a valid integer"),
        ({"ts": NOW + 2 * 86_400_000}, "is more than a day in the future"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
        ({"context": {"k" * 100: 1}}, "context.k"),
    ],
)
def test_malformed_event_gets_precise_reason(change, reason):
    result = validate({**GOOD, **change}, "event", NOW)
    assert isinstance(result, Rejected)
    assert reason in result.reason


@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize(
    ("kind", "doc", "field"),
    [
        ("event", GOOD, "ts"),
        ("item", {"op": "new", "item_id": "i1", "ts": NOW}, "ts"),
        ("item", {"op": "new", "item_id": "i1", "ts": NOW}, "created_ts"),  # was any value up to 2^53
    ],
)
def test_a_timestamp_may_be_at_most_a_day_ahead(kind, doc, field, offset):
    """A created_ts far ahead would have kept the item the newest of the new-item pool for years."""
    ahead = NOW + MAX_FUTURE_SKEW_MS + offset
    result = validate({**doc, field: ahead}, kind, NOW)
    if offset > 0:
        assert isinstance(result, Rejected) and result.reason == f"{field}: {ahead} is more than a day in the future"
    else:
        assert getattr(result, field) == ahead


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("inf"), "attributes.age.float: Input should be a finite number (+3 more)"),  # not the str member's
        ([30], "attributes.age.constrained-str: Input should be a valid string (+3 more)"),  # no member says more
    ],
)
def test_a_union_field_names_the_member_that_says_why(value, reason):
    assert validate({"user_id": "u1", "ts": NOW, "attributes": {"age": value}}, "user", NOW).reason == reason


def test_missing_field_is_named():
    obj = {k: v for k, v in GOOD.items() if k != "item_id"}
    assert validate(obj, "event", NOW).reason == "item_id: Field required"


@pytest.mark.parametrize(
    ("raw", "reason", "payload"),
    [
        (b"{not json", "json: invalid JSON", b"{not json"),
        (None, "tombstone: ", b""),
        (b"[1, 2]", "event: Input should be an object", b"1"),  # each element on its own
        (b"x" * 1_000_001, "size: message of 1000001 bytes exceeds", b"x" * 1_000_001),
    ],
)
def test_malformed_message_is_rejected_with_its_bytes(raw, reason, payload):
    valid, rejected = decode(raw, "event", NOW)
    assert valid == []
    assert reason in rejected[0].reason and rejected[0].payload == payload


def padded(doc: object, size: int) -> bytes:
    """``doc`` as JSON padded with spaces to ``size`` bytes."""
    raw = orjson.dumps(doc)
    return raw + b" " * (size - len(raw))


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_the_message_size_limit_holds_at_its_value(offset):
    raw = padded(GOOD, MAX_MESSAGE_BYTES + offset)
    valid, rejected = decode(raw, "event", NOW)
    if offset > 0:
        assert valid == [] and rejected == [
            Rejected(f"size: message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}", raw)
        ]
    else:
        assert len(valid) == 1 and rejected == []


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_the_micro_batch_limit_holds_at_its_value(offset):
    raw = orjson.dumps([GOOD] * (MAX_EVENTS_PER_MESSAGE + offset))
    valid, rejected = decode(raw, "event", NOW)
    if offset > 0:
        assert valid == [] and rejected[0].reason.startswith(
            f"size: micro-batch of {MAX_EVENTS_PER_MESSAGE + 1} events"
        )
    else:
        assert len(valid) == MAX_EVENTS_PER_MESSAGE + offset and rejected == []


def test_one_bad_event_does_not_cost_its_neighbours():
    raw = orjson.dumps([GOOD, {**GOOD, "ts": "x"}, {**GOOD, "item_id": "i2"}])
    valid, rejected = decode(raw, "event", NOW)
    assert [e.item_id for e in valid] == ["i1", "i2"]
    assert len(rejected) == 1 and orjson.loads(rejected[0].payload)["ts"] == "x"


def test_item_and_user_events_validate():
    item = validate(
        {"op": "new", "item_id": "i9", "ts": NOW, "categories": ["Drama"], "features": {"len": 3}},
        "item",
        NOW,
    )
    assert isinstance(item, ItemEvent) and item.features == {"len": 3.0} and item.available
    assert (
        "features"
        in validate({"op": "new", "item_id": "i9", "ts": NOW, "features": {"x": float("nan")}}, "item", NOW).reason
    )
    user = validate({"user_id": "u9", "ts": NOW, "attributes": {"age": 30, "gender": "M"}}, "user", NOW)
    assert isinstance(user, UserEvent) and segment_of(user.attributes) == "age25-34.M"


def test_an_item_lists_each_category_once():
    """``["news", "news"]`` was kept as given: the category weighed twice in a user's taste and its items' category
    affinity reached 2, outside the ranker feature's [0, 1]."""
    item = validate({"op": "new", "item_id": "i9", "ts": NOW, "categories": ["news", "film", "news"]}, "item", NOW)
    assert isinstance(item, ItemEvent) and item.categories == ["news", "film"]


def test_encode_round_trips_through_decode():
    events = [
        Event(**GOOD),
        Event(**{**GOOD, "type": "view", "event_id": "e1", "context": {"source": "explore"}}),
    ]
    valid, rejected = decode(encode(events), "event", NOW)
    assert valid == events and rejected == []


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("blend", "variant: String should match pattern"),
        ("blend:a:b", "variant: String should match pattern"),
        ("blend:a b", "variant: String should match pattern"),
        ("x" * 33 + ":a", "variant: String should match pattern"),
        (":a", "variant: String should match pattern"),
        (7, "variant: Input should be a valid string"),
    ],
)
def test_a_malformed_variant_is_rejected_with_its_reason(variant, reason):
    assert reason in validate({**GOOD, "variant": variant}, "event", NOW).reason


def test_the_variant_is_optional_and_travels_only_when_set():
    old = validate(GOOD, "event", NOW)
    assert isinstance(old, Event) and old.variant is None and b"variant" not in encode(old)
    tagged = validate({**GOOD, "variant": "blend-2026.q1:explore_heavy"}, "event", NOW)
    assert isinstance(tagged, Event) and tagged.variant == "blend-2026.q1:explore_heavy"
    assert decode(encode(tagged), "event", NOW)[0] == [tagged]


@pytest.mark.parametrize(
    "bad",
    [None, {**GOOD, "ts": NOW + 86_400_001}, {**GOOD, "type": "share"}, {**GOOD, "user_id": "u:1"}, 7],
)
def test_a_micro_batch_loses_only_its_bad_element_whichever_check_refuses_it(bad):
    """A whole micro-batch is validated in one call, the checks beyond the model (ts ahead, an unconfigured feedback
    type) included; when anything fails, each element is judged alone."""
    at_limit = {**GOOD, "item_id": "i2", "ts": NOW + 86_400_000}  # exactly one day ahead: accepted
    elements = [GOOD, at_limit] + ([] if bad is None else [bad])
    valid, rejected = decode(orjson.dumps(elements), "event", NOW)
    assert valid == [Event(**GOOD), Event(**at_limit)]
    assert len(rejected) == (bad is not None)
    if bad is not None:
        assert rejected[0].payload == orjson.dumps(bad)


@pytest.mark.parametrize(
    ("field", "value", "hinted"),
    [("ts", 1_700_000_000, True), ("created_ts", 1_700_000_000, True), ("created_ts", 2**53 + 1, False)],
)
def test_an_item_time_in_seconds_is_refused_saying_milliseconds(field: str, value: int, hinted: bool) -> None:
    result = validate({"op": "new", "item_id": "i1", "ts": NOW, field: value}, "item", NOW)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(f"{field}: Input should be")
    assert ("(epoch milliseconds" in result.reason) == hinted


@pytest.mark.parametrize(("offset", "bodies"), [(-1, 1), (0, 1), (1, 2)])
@pytest.mark.parametrize("events_at", [at_byte_limit, at_count_limit])
def test_micro_batches_split_exactly_past_the_readers_limits(events_at, offset, bodies):
    events = events_at(offset)
    split = [body for _, body in micro_batches(events)]
    assert len(split) == bodies
    decoded = [decode(body, "event", NOW_MS) for body in split]  # the reader's own check of a body
    assert all(len(body) <= MAX_MESSAGE_BYTES for body in split)
    assert [rejected for _, rejected in decoded] == [[]] * bodies
    assert [e for valid, _ in decoded for e in valid] == events, "all of them, in order"
    if events_at is at_byte_limit and offset <= 0:
        assert len(split[0]) == MAX_MESSAGE_BYTES + offset


INT64_REFUSED = "Value error, an integer must be from -2**63 to 2**63 - 1 (send a larger one as a string)"


@pytest.mark.parametrize(
    ("value", "accepted"), [(-(2**63) - 1, False), (-(2**63), True), (2**63 - 1, True), (2**63, False)]
)
@pytest.mark.parametrize("where", ["attributes", "context"])
def test_an_int_scalar_must_fit_in_64_bits(value: int, accepted: bool, where: str):
    """A larger one passed, as an int (then ``encode`` raised orjson's TypeError: a traceback out of ``recstream
    import``) or as a float (2**63 taken by the union's float member, its digits lost)."""
    user = {"user_id": "u1", "ts": NOW, "attributes": {"acct": value}}
    doc, kind = (user, "user") if where == "attributes" else ({**GOOD, "context": {"acct": value}}, "event")
    result = validate(doc, kind, NOW)  # type: ignore[arg-type]
    if accepted:
        assert not isinstance(result, Rejected) and getattr(result, where)["acct"] == value, result
        assert decode(encode(result), kind, NOW)[0] == [result]  # type: ignore[arg-type]
    else:
        assert isinstance(result, Rejected) and result.reason == f"{where}.acct: {INT64_REFUSED}", result


@pytest.mark.parametrize(("digits", "accepted"), [(str(2**63 - 1), True), (str(2**63), False)])
def test_an_event_posted_with_an_int_past_64_bits_is_refused(digits: str, accepted: bool):
    """The reader's body through orjson, which reads an integer up to 2**64 - 1 as an int (a larger or more negative
    one as a float, which the contract takes as a float)."""
    body = b'{"type":"click","user_id":"u1","item_id":"i1","ts":%d,"context":{"acct":%s}}' % (NOW, digits.encode())
    valid, rejected = decode(body, "event", NOW)
    if accepted:
        assert [e.context["acct"] for e in valid] == [int(digits)] and not rejected
    else:
        assert not valid and [r.reason for r in rejected] == [f"context.acct: {INT64_REFUSED}"]
