"""The client's request descriptions: ids fixed before sending (the bodies' limits: tests/contracts)."""

from __future__ import annotations

import re

import orjson
import pytest
from pydantic import ValidationError

from recstream.client.routes import send_events, with_event_ids
from recstream.contracts.events import Event
from tests.client.conftest import NOW_MS


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
