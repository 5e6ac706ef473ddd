"""The log read without erased users: their objects leave each message, everything else stays as it came."""

from __future__ import annotations

import orjson

from recstream.eventlog.erasures import without_users
from recstream.eventlog.log import Message


def message(value: bytes | None) -> Message:
    return Message("t", 1, 9, value, 123)


def test_only_the_erased_users_objects_leave_a_message():
    batch = orjson.dumps([{"user_id": "gone"}, {"user_id": "kept"}, {"user_id": ["gone"]}, 7, {"user_id": "gone"}])
    [out] = without_users([message(batch)], frozenset({"gone"}))
    assert orjson.loads(out.value) == [{"user_id": "kept"}, {"user_id": ["gone"]}, 7]
    assert (out.topic, out.partition, out.offset, out.timestamp_ms) == ("t", 1, 9, 123), "its place in the log kept"


def test_a_whole_user_record_becomes_an_empty_batch_and_other_messages_stay_byte_for_byte():
    kept = [message(None), message(b"{oops"), message(b'{"user_id": "kept", "x": 1.10}'), message(b"[]")]
    out = without_users([message(b'{"user_id": "gone"}'), *kept], frozenset({"gone"}))
    assert [m.value for m in out] == [b"[]", *(m.value for m in kept)]
    assert without_users(kept, frozenset()) == kept
