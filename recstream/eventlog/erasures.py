"""The erasure list on the log: who was erased (the ``erasures`` topic), and the log read without them.

``DELETE /v1/users/{id}`` writes an :class:`~recstream.contracts.events.Erasure` to ``erasures``
(compacted, so it is kept for ever) before it deletes the user's Redis keys. The ``events`` topic
still holds the user's events until retention expires them or the topic is rewritten (README, "Use
it in your product"), and ``users`` their records until compaction; whatever reads the log to
recompute state (``recstream rebuild``, ``recstream train``) reads the list first and drops them, and the workers
read the erasures since their last check to find those Redis lost (:func:`erasures_since`,
recstream/store/erasure.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from recstream.contracts.events import Erasure
from recstream.contracts.settings import Settings
from recstream.eventlog.log import Message, Ranges, open_log, read, whole_topic


async def erased_users(consumer: AIOKafkaConsumer, topic: str, ranges: Ranges | None = None) -> frozenset[str]:
    """Every user id on the erasures topic (none when the topic does not exist: nothing was ever erased), up to
    ``ranges`` when the caller read the topic's ends already (:func:`whole_topic`)."""
    erased: set[str] = set()
    async for chunk in read(
        consumer, await whole_topic(consumer, topic, missing_ok=True) if ranges is None else ranges, 10_000
    ):
        for message in chunk:
            try:
                erased.add(Erasure.model_validate_json(message.value or b"").user_id)
            except ValidationError:  # not an erasure: nothing to honour
                continue
    return frozenset(erased)


async def erasures_since(
    settings: Settings, start: Mapping[tuple[str, int], int]
) -> tuple[frozenset[str], dict[tuple[str, int], int]]:
    """:func:`erased_between` on a consumer of its own."""
    async with open_log(settings) as consumer:
        return await erased_between(consumer, settings.kafka.erasures_topic, start)


async def erased_between(
    consumer: AIOKafkaConsumer, topic: str, start: Mapping[tuple[str, int], int]
) -> tuple[frozenset[str], dict[tuple[str, int], int]]:
    """The users erased at or past ``start`` on the erasures topic (per partition; from the log start where it names
    none), and each partition's end offset they were read up to (none when the topic does not exist): a caller that
    passes those ends next time reads only what came since."""
    ends = {tp: end for tp, (_, end) in (await whole_topic(consumer, topic, missing_ok=True)).items()}
    ranges = {tp: (start.get(tp), end) for tp, end in ends.items() if start.get(tp, -1) < end}
    return (await erased_users(consumer, topic, ranges) if ranges else frozenset()), ends


def without_users(messages: Iterable[Message], users: frozenset[str]) -> list[Message]:
    """The messages with every object whose ``user_id`` is in ``users`` taken out (an event of a micro-batch,
    or a whole user record); the rest of each message is left as it came, invalid parts included.

    >>> m = Message("events", 0, 7, b'[{"user_id":"a","n":1},{"user_id":"b","n":2}]')
    >>> [x.value for x in without_users([m], frozenset({"a"}))]
    [b'[{"user_id":"b","n":2}]']
    """
    if not users:
        return list(messages)
    kept = []
    for message in messages:
        try:
            doc = orjson.loads(message.value) if message.value is not None else None
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict | list):
            objects = doc if isinstance(doc, list) else [doc]
            left = [o for o in objects if not (isinstance(o, dict) and _user(o) in users)]
            if len(left) < len(objects):
                value = orjson.dumps(left if isinstance(doc, list) else left[0] if left else [])
                message = Message(message.topic, message.partition, message.offset, value, message.timestamp_ms)
        kept.append(message)
    return kept


def _user(obj: dict) -> str | None:
    user = obj.get("user_id")
    return user if isinstance(user, str) else None
