"""The client's request descriptions: event bodies within the reader's limits, ids fixed before sending."""

from __future__ import annotations

import re

import orjson
import pytest
from pydantic import ValidationError

from recstream.client.routes import event_bodies, send_events, with_event_ids
from recstream.contracts.events import MAX_EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, Event, decode
from tests.client.conftest import NOW_MS, sized_event

SIZE = 3002  # 333 events of 3,002 bytes make a body of exactly 1 + 333 · 3,003 = 1,000,000 bytes
assert 1 + 333 * (SIZE + 1) == MAX_MESSAGE_BYTES


def at_byte_limit(offset: int) -> list[Event]:
    """Events whose one-body encoding is MAX_MESSAGE_BYTES + offset bytes (offset in −1, 0, +1)."""
    return [sized_event(k, SIZE) for k in range(332)] + [sized_event(332, SIZE + offset)]


def at_count_limit(offset: int) -> list[Event]:
    return [
        Event(type="view", user_id="u", item_id="i", ts=NOW_MS, event_id=f"e{k}")
        for k in range(MAX_EVENTS_PER_MESSAGE + offset)
    ]


@pytest.mark.parametrize(("offset", "bodies"), [(-1, 1), (0, 1), (1, 2)])
@pytest.mark.parametrize("events_at", [at_byte_limit, at_count_limit])
def test_event_bodies_split_exactly_past_the_readers_limits(events_at, offset, bodies):
    events = events_at(offset)
    split = event_bodies(events)
    assert len(split) == bodies
    decoded = [decode(body, "event", NOW_MS) for body in split]  # the reader's own check of a body
    assert all(len(body) <= MAX_MESSAGE_BYTES for body in split)
    assert [rejected for _, rejected in decoded] == [[]] * bodies
    assert [e for valid, _ in decoded for e in valid] == events, "all of them, in order"
    if events_at is at_byte_limit and offset <= 0:
        assert len(split[0]) == MAX_MESSAGE_BYTES + offset


def test_every_event_gets_an_id_before_anything_is_sent_and_keeps_its_own():
    given = [
        {"type": "view", "user_id": "u", "item_id": "i1", "ts": NOW_MS},
        Event(type="click", user_id="u", item_id="i1", ts=NOW_MS),
        {"type": "click", "user_id": "u", "item_id": "i2", "ts": NOW_MS, "event_id": "mine-1"},
    ]
    [call] = send_events(given)
    ids = [e["event_id"] for e in orjson.loads(call.body)]
    assert ids[2] == "mine-1"
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:2])
    [again] = send_events(orjson.loads(call.body))  # validated again: the ids fit the contract's pattern
    assert again.body == call.body, "re-sending stamped events keeps their ids"


def test_an_invalid_event_is_refused_before_any_request():
    """The event's shape is checked here; whether its type is configured, only the reader knows (it answers 422)."""
    with pytest.raises(ValidationError, match="type"):
        with_event_ids([{"type": "Purchase!", "user_id": "u", "item_id": "i", "ts": NOW_MS}])
    with pytest.raises(ValidationError, match="value"):
        with_event_ids([{"type": "rating", "user_id": "u", "item_id": "i", "ts": NOW_MS, "value": float("inf")}])
