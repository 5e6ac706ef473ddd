"""Client fixtures: the reader's world (tests/serving/conftest.py), a request recorder, events of an exact size."""

from __future__ import annotations

import time
from collections import Counter

import httpx

from recstream.contracts.events import MAX_EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, Event, decode, encode
from recstream.contracts.settings import Settings
from recstream.eventlog.log import open_log, read, whole_topic
from tests.serving.conftest import world  # noqa: F401  (the fixture, for the reads against a trained model)

NOW_MS = int(time.time() * 1000)


class Recorder(httpx.HTTPTransport):
    """httpx's own transport to the real reader, keeping each request body and status; it can lose the answer
    of chosen attempts (raise a read timeout after the reader answered), as a dropped connection would."""

    def __init__(self, lose: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.lose = lose
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        self.bodies.append(request.content)
        self.statuses.append(response.status_code)
        if len(self.bodies) - 1 in self.lose:
            raise httpx.ReadTimeout("the answer was lost on the way back", request=request)
        return response


def sized_event(k: int, size: int, user: str = "client-u") -> Event:
    """A view whose encoded JSON is exactly ``size`` bytes (padded in ``context``; from ~220 to ~3,200)."""
    keys = [f"p{j:02d}" for j in range(12)]
    bare = Event(type="view", user_id=user, item_id=f"i{k:06d}", ts=NOW_MS, event_id=f"e{k:06d}")
    missing = size - len(encode(bare.model_copy(update={"context": dict.fromkeys(keys, "")})))
    context = {key: "x" * max(0, min(250, missing - 250 * j)) for j, key in enumerate(keys)}
    event = bare.model_copy(update={"context": context})
    assert len(encode(event)) == size, (size, len(encode(event)))
    return event


SIZE = 3002  # 333 events of 3,002 bytes make a body of exactly 1 + 333 · 3,003 = 1,000,000 bytes
assert 1 + 333 * (SIZE + 1) == MAX_MESSAGE_BYTES


def at_byte_limit(offset: int) -> list[Event]:
    """Events whose one-body encoding is MAX_MESSAGE_BYTES + offset bytes (offset in −1, 0, +1)."""
    return [sized_event(k, SIZE) for k in range(332)] + [sized_event(332, SIZE + offset)]


def at_count_limit(offset: int) -> list[Event]:
    """MAX_EVENTS_PER_MESSAGE + offset views of one user, each of its own item (the reader drops a user's views of one
    item past its per-(user, item) limit, which is not what these are for)."""
    return [
        Event(type="view", user_id="u", item_id=f"i{k}", ts=NOW_MS, event_id=f"e{k}")
        for k in range(MAX_EVENTS_PER_MESSAGE + offset)
    ]


async def event_ids_on_the_log(settings: Settings) -> Counter[str]:
    """How many times each event_id is on the events topic (read from Kafka, start to end)."""
    seen: Counter[str] = Counter()
    async with open_log(settings) as consumer:
        async for chunk in read(consumer, await whole_topic(consumer, settings.kafka.events_topic), 1000):
            for message in chunk:
                events, _ = decode(message.value, "event", 2**53)
                seen.update(e.event_id for e in events)
    return seen
