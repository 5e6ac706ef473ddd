"""Feedback types (recstream/contracts/feedback.py): the configured set, its validation, events checked against it."""

from __future__ import annotations

import math

import orjson
import pytest
from pydantic import ValidationError

from recstream.contracts.events import Event, Rejected, decode, encode, validate
from recstream.contracts.feedback import DEFAULT_FEEDBACK, MAX_TYPES, MAX_VALUE, MAX_WEIGHT, FeedbackTypes
from recstream.contracts.settings import SettingsError, load_settings

T = 10**12
NOW = 2 * T
VIEW = {"role": "impression", "weight": 1.0, "ctr": True}
CLICK = {"role": "positive", "weight": 4.0, "ctr": True}


def event(kind: str, value: float | None = None) -> dict:
    return {"type": kind, "user_id": "u", "item_id": "i", "ts": T} | ({} if value is None else {"value": value})


def test_the_defaults_keep_view_and_click_as_they_were_and_add_the_other_roles():
    d = DEFAULT_FEEDBACK
    assert (d.signed_weight["view"], d.signed_weight["click"]) == (1.0, 4.0)
    assert d.ctr_column == {"view": 0, "click": 1}, "only views and clicks make CTR, as before"
    assert d.with_role("impression") == {"view"}
    assert d.with_role("positive") == {"click", "like", "add_to_cart", "purchase", "rating"}
    assert d.with_role("negative") == {"dislike"} and d.signed_weight["dislike"] < 0


def test_schema_v1_events_stay_valid_and_encode_as_before():
    old = b'{"type":"click","user_id":"u","item_id":"i","ts":1000000000000}'
    [e], [] = decode(old, "event", NOW)
    assert e.value is None and encode(e) == old


@pytest.mark.parametrize(
    ("types", "message"),
    [
        ({}, "configure 1 to 32"),
        ({"view": VIEW}, "at least one positive type must count toward CTR"),
        ({"click": CLICK}, "at least one impression type must count toward CTR"),
        ({"view": VIEW, "click": {**CLICK, "ctr": False}}, "at least one positive type"),
        ({"view": VIEW, "click": CLICK, "Bad-Name": CLICK}, "should match pattern"),
        ({"view": VIEW, "click": CLICK, "x" * 33: CLICK}, "should match pattern"),
        ({"view": VIEW, "click": {**CLICK, "weight": 0.0}}, "a positive type needs a weight > 0"),
        ({"view": VIEW, "click": CLICK, "no": {"role": "negative", "weight": 0.0}}, "a negative type needs a weight"),
        ({"view": VIEW, "click": CLICK, "no": {"role": "negative", "weight": 1.0, "ctr": True}}, "set ctr false"),
        ({"view": {**VIEW, "weight": -1.0}, "click": CLICK}, "greater than or equal to 0"),
        ({"view": VIEW, "click": {**CLICK, "weight": math.inf}}, "finite number"),
        ({"view": VIEW, "click": {**CLICK, "weight": math.nan}}, "finite number"),
        ({"view": VIEW, "click": {**CLICK, "role": "bought"}}, "'impression', 'positive' or 'negative'"),
        ({"view": VIEW, "click": {**CLICK, "bonus": 1}}, "Extra inputs are not permitted"),
        ({"seen": VIEW, "tap": CLICK, "view": {**CLICK, "ctr": False}}, "a type named view must be a CTR impression"),
        ({"seen": VIEW, "tap": CLICK, "click": {**CLICK, "ctr": False}}, "a type named click must be a CTR positive"),
        ({"view": VIEW, "click": CLICK, "r": {**CLICK, "value_range": (0.0, 5.0)}}, "0 < min < max"),
        ({"view": VIEW, "click": CLICK, "r": {**CLICK, "value_range": (5.0, 5.0)}}, "0 < min < max"),
        ({"view": VIEW, "click": CLICK, "r": {**CLICK, "value_range": (1.0, math.inf)}}, "0 < min < max"),
    ],
)
def test_an_unusable_set_is_refused_with_the_reason(types, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FeedbackTypes(types)


def test_an_impression_may_weigh_zero_and_a_name_may_have_32_characters():
    types = FeedbackTypes({"view": {**VIEW, "weight": 0.0}, "c" * 32: CLICK})
    assert types.signed_weight == {"view": 0.0, "c" * 32: 4.0}


@pytest.mark.parametrize("n", [MAX_TYPES - 1, MAX_TYPES, MAX_TYPES + 1])
def test_at_most_32_types(n):
    types = {"view": VIEW, "click": CLICK} | {f"t{k}": CLICK for k in range(n - 2)}
    if n <= MAX_TYPES:
        assert len(FeedbackTypes(types).root) == n
    else:
        with pytest.raises(ValidationError, match="configure 1 to 32 feedback types, got 33"):
            FeedbackTypes(types)


@pytest.mark.parametrize(
    ("value", "valid"),
    [(0.0, False), (1.0, True), (2.0, True), (4.0, True), (5.0, True), (6.0, False), (0.999, False), (5.001, False)],
)
def test_a_rating_value_must_lie_in_its_range_limits_included(value, valid):
    result = validate(event("rating", value), "event", NOW)
    if valid:
        assert isinstance(result, Event) and result.value == value
    else:
        assert isinstance(result, Rejected)
        assert result.reason == f"value: {value} is outside rating's value_range [1.0, 5.0]" and result.code == "value"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (event("rating"), "value: rating events need a value in [1.0, 5.0]"),
        (event("click", 1.0), "value: click events carry no value"),
        (event("rating", math.nan), "value: Input should be a finite number"),
        (event("rating", True), "value: Input should be a valid number"),
        (event("rating", "5"), "value: Input should be a valid number"),
    ],
)
def test_a_value_where_none_belongs_or_none_where_one_does_is_rejected(obj, reason):
    result = validate(obj, "event", NOW)
    assert isinstance(result, Rejected) and result.reason == reason


def test_an_integer_rating_is_a_valid_value():
    [e], [] = decode(b'{"type":"rating","user_id":"u","item_id":"i","ts":1000000000000,"value":4}', "event", NOW)
    assert e.value == 4.0


def test_unknown_types_are_rejected_per_event_naming_the_configured_set():
    raw = orjson.dumps([event("view"), event("share"), event("click")])
    ok, bad = decode(raw, "event", NOW)
    assert [e.type for e in ok] == ["view", "click"]
    assert [r.reason for r in bad] == [
        "type: unknown feedback type 'share' (configured: view, click, like, add_to_cart, purchase, rating, dislike)"
    ]
    assert bad[0].code == "type" and orjson.loads(bad[0].payload) == event("share")


def test_the_configured_set_decides_which_types_exist():
    custom = FeedbackTypes({"impression": VIEW, "share": CLICK})
    ok, bad = decode(orjson.dumps([event("impression"), event("share"), event("view")]), "event", NOW, custom)
    assert [e.type for e in ok] == ["impression", "share"]
    assert bad[0].reason == "type: unknown feedback type 'view' (configured: impression, share)"


def test_the_set_is_a_json_variable_that_round_trips_through_the_environment(monkeypatch):
    custom = {"seen": VIEW, "tap": CLICK, "stars": {"role": "positive", "weight": 0.5, "value_range": [1, 10]}}
    monkeypatch.setenv("RECSTREAM_FEEDBACK_TYPES", orjson.dumps(custom).decode())
    settings = load_settings()
    types = settings.model.feedback_types
    assert types.ctr_column == {"seen": 0, "tap": 1} and types.root["stars"].value_range == (1.0, 10.0)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "RECSTREAM_FEEDBACK_TYPES: invalid JSON"),
        ('{"view": {"role": "impression", "weight": 1, "ctr": true}}', "RECSTREAM_FEEDBACK_TYPES: Value error, at "),
        (
            orjson.dumps({"view": VIEW, "click": {**CLICK, "weight": -2}}).decode(),
            "RECSTREAM_FEEDBACK_TYPES (click.weight)",
        ),
    ],
)
def test_an_invalid_set_stops_the_process_naming_the_variable(monkeypatch, value, message):
    monkeypatch.setenv("RECSTREAM_FEEDBACK_TYPES", value)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings()


@pytest.mark.parametrize("over", [-1, 0, 1], ids=["limit-1", "limit", "limit+1"])
def test_a_weight_and_a_value_range_are_bounded(over):
    """A weight of 1e40 passed and made ``recstream train`` fit NaN factors (and a worker's user step overflow)."""
    weight, high = MAX_WEIGHT + over, MAX_VALUE + over
    types = {"view": VIEW, "click": CLICK}
    if over <= 0:
        assert FeedbackTypes({**types, "buy": {**CLICK, "weight": weight}}).signed_weight["buy"] == weight
        assert FeedbackTypes({**types, "r": {**CLICK, "value_range": (1.0, high)}}).root["r"].value_range == (1, high)
        return
    with pytest.raises(ValidationError, match="less than or equal to 1000"):
        FeedbackTypes({**types, "buy": {**CLICK, "weight": weight}})
    with pytest.raises(ValidationError, match="0 < min < max ≤ 1e"):
        FeedbackTypes({**types, "r": {**CLICK, "value_range": (1.0, high)}})
