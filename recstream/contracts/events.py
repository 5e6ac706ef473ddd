"""Event schema v1: what travels on the ``events``, ``items`` and ``users`` topics.

The writer (producers, workers) and the reader both import this module, so validation
is one piece of code. Ids become parts of Redis keys, hence the bounded length and the
safe character set. A message on ``events`` holds one event object or a JSON array of
them (a micro-batch whose user ids all hash to the message's partition, see
:func:`partition_for`); every element is validated on its own, so one bad event never
costs its neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

import orjson
from aiokafka.partitioner import murmur2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes, TypeName

ID_PATTERN = r"^[A-Za-z0-9_.\-]+$"
"""Ids and categories: no ``:``, the Redis key separator, so ``item:<id>`` can never name another item's
``item:<id>:similar`` (recstream/contracts/keys.py)."""
MAX_ID_LEN = 64
MIN_TS_MS = 631_152_000_000  # 1990-01-01: older than any real log we replay (MovieLens 100K is 1997-98)
MAX_FUTURE_SKEW_MS = 86_400_000  # one day ahead of the consumer's clock
MAX_MESSAGE_BYTES = 1_000_000
MAX_EVENTS_PER_MESSAGE = 10_000
MAX_CONTEXT_ENTRIES = 16
LABEL_PATTERN = r"[A-Za-z0-9_.\-]{1,32}"
"""An experiment or variant name: short and safe, since it becomes a Prometheus label value."""
VARIANT_PATTERN = rf"^{LABEL_PATTERN}:{LABEL_PATTERN}$"

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
Category = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
Timestamp = Annotated[int, Field(ge=MIN_TS_MS, le=2**53)]
Finite = Annotated[float, Field(allow_inf_nan=False)]  # JSON 1e400 reads as inf, and a Python caller may pass NaN
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int64(value: object) -> object:
    """An int scalar must fit in a signed 64-bit integer: orjson writes none larger (a record that passed raised
    TypeError in :func:`encode`), nor do most JSON readers. Checked before the union, whose float member would take
    it as a float."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("an integer must be from -2**63 to 2**63 - 1 (send a larger one as a string)")
    return value


Scalar = Annotated[
    Annotated[str, StringConstraints(max_length=256)] | int | Finite | bool | None, BeforeValidator(_int64)
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Event(_Strict):
    """A user's feedback on an item: a ``type`` of the configured set (recstream/contracts/feedback.py: ``view``,
    ``click``, ``like``, ``add_to_cart``, ``purchase``, ``rating``, ``dislike`` by default), and a ``value`` for a
    valued type (a rating's stars). The model checks the name's shape; :func:`validate` checks it against the set.

    ``variant`` is the ``"<experiment>:<variant>"`` label of the feed that showed the item (its
    ``variant`` field, recstream/contracts/experiments.py), so the experiment report can count it. Optional:
    ``POST /v1/events`` fills it in from the user's assignment while an experiment runs, and events
    without it are outside any experiment.
    """

    type: TypeName
    user_id: Id
    item_id: Id
    ts: Timestamp
    event_id: Id | None = None
    context: Annotated[dict[Category, Scalar], Field(max_length=MAX_CONTEXT_ENTRIES)] | None = None
    variant: Annotated[str, StringConstraints(max_length=2 * 32 + 1, pattern=VARIANT_PATTERN)] | None = None
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None


def _finite(value: dict[str, float]) -> dict[str, float]:
    bad = [name for name, x in value.items() if not math.isfinite(x)]
    if bad:
        raise ValueError(f"features must be finite numbers: {bad}")
    return value


Categories = Annotated[list[Category], Field(max_length=32), AfterValidator(lambda names: list(dict.fromkeys(names)))]
"""An item's categories, each once (a name listed twice would weigh twice in a user's taste and the ranker's
category affinity), in the order given."""
Features = Annotated[dict[Category, float], Field(max_length=64), AfterValidator(_finite)]
Attributes = Annotated[dict[Category, Scalar], Field(max_length=32)]
"""An item's and a user's fields, also typed so by the reader's catalogue routes (serving/catalogue.py)."""


class ItemEvent(_Strict):
    """A new, updated or removed item; ``available=False`` hides it without forgetting it."""

    op: Literal["new", "update", "remove"]
    item_id: Id
    ts: Timestamp
    created_ts: Timestamp | None = None
    categories: Categories = []
    features: Features = {}
    available: bool = True


UserPart = Literal["attributes", "preferences"]


class UserEvent(_Strict):
    """User attributes (a segment is derived from them) and onboarding preferences.

    ``replaces`` names the parts the record sets, even when empty (a clear): the reader's routes each write one part
    and say so. Without it (other producers, older records), a record sets the parts it gives that are not empty,
    so that a record of attributes alone leaves the preferences as they are (:func:`user_parts`). Like every field,
    a worker that does not know it refuses the record (to the dead-letter topic): upgrade the workers before the
    readers (docs/ARCHITECTURE.md, "Changing the contract").
    """

    user_id: Id
    ts: Timestamp
    attributes: Attributes = {}
    preferred_categories: Annotated[list[Category], Field(max_length=32)] = []
    not_interested: Annotated[list[Id], Field(max_length=256)] = []
    replaces: Annotated[list[UserPart], Field(max_length=2)] | None = None


def user_parts(user: UserEvent) -> frozenset[str]:
    """The parts of the user a record sets: what it ``replaces``, else those it gives that are not empty.

    >>> user_parts(UserEvent(user_id="u", ts=10**12, replaces=["preferences"])) == {"preferences"}  # a clear
    True
    >>> sorted(user_parts(UserEvent(user_id="u", ts=10**12, attributes={"age": 30})))
    ['attributes']
    """
    if user.replaces is not None:
        return frozenset(user.replaces)
    given = {"attributes": bool(user.attributes), "preferences": bool(user.preferred_categories or user.not_interested)}
    return frozenset(part for part, present in given.items() if present)


def user_record_key(user_id: str, parts: frozenset[str]) -> str:
    """The Kafka key of a user record on the compacted ``users`` topic: a record of the preferences alone has a key of
    its own, so that compaction, which keeps the last record of each key, keeps the user's last attributes and last
    preferences both (one key, a later preferences record dropped the attributes, and a rebuild lost the segment).
    That holds for records of one part each, as the reader's routes write them; a record of both parts (or of none)
    has the user's key, so a later record of attributes alone replaces it in compaction, preferences and all, and
    records of preferences written before this key existed share the user's key too. The record goes to the user's
    partition whatever its key (:func:`partition_for` of the user id).

    >>> user_record_key("u1", frozenset({"preferences"})), user_record_key("u1", frozenset({"attributes"}))
    ('u1:preferences', 'u1')
    """
    return user_id + PREFERENCES_KEY if parts == {"preferences"} else user_id


PREFERENCES_KEY = ":preferences"
USER_RECORD_KEYS = ("", PREFERENCES_KEY)
"""The suffixes of every key a user's records may have (:func:`user_record_key`): an erasure tombstones each."""


class Erasure(_Strict):
    """A user's erasure, on the ``erasures`` topic (keyed by user id, compacted, so kept for ever): ``recstream
    rebuild`` and ``recstream train`` drop every event and user record of the id (recstream/eventlog/erasures.py).
    The same request writes a tombstone (a null value) for the user on ``users``."""

    user_id: Id
    ts: Timestamp


Kind = Literal["event", "item", "user"]
MODELS: dict[Kind, type[_Strict]] = {"event": Event, "item": ItemEvent, "user": UserEvent}
_BATCHES = {kind: TypeAdapter(list[model]) for kind, model in MODELS.items()}
"""Validators of a whole micro-batch: one call per message instead of one per element (:func:`decode`)."""
REASON_CODES = frozenset(
    {name for model in MODELS.values() for name in model.model_fields}
    | {"tombstone", "size", "json", "event", "partition", "kind"}
)
"""What a rejection's reason may start with: a contract field, or a check of the whole message (``partition``:
the event's user belongs to another partition, see :func:`partition_for`; ``kind``: a file source's line)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that did not pass: the reason and the bytes to put on the dead-letter topic."""

    reason: str
    payload: bytes

    @property
    def code(self) -> str:
        """A label for metrics from a fixed set (:data:`REASON_CODES`): the reason up to its first ``:`` or
        ``.`` when that names a contract field or a check, else ``other``. A field the sender made up (``extra
        inputs are not permitted``) must not become a label value: each would be a new Prometheus series.

        >>> Rejected("context.anything: Input should be a valid string", b"").code
        'context'
        >>> Rejected("x_made_up_1: Extra inputs are not permitted", b"").code
        'other'
        """
        code = self.reason.split(":", 1)[0].split(".", 1)[0]
        return code if code in REASON_CODES else "other"


TOO_EARLY_HINT = " (epoch milliseconds: a time in seconds is that small)"
"""Said of any :data:`Timestamp` below its bound (before 1990): nearly always one sent in seconds."""


def _reason(exc: ValidationError) -> str:
    """The first error as ``field: message`` (input values left out: they may be huge or hostile). A made-up field
    name is input too: each part of the location is cut to MAX_ID_LEN characters (a 940 KB name made a reason
    too big to dead-letter).

    >>> made_up = {"type": "view", "user_id": "u", "item_id": "i", "ts": 10**12, "x" * 10**6: 1}
    >>> validate(made_up, "event", 10**13).reason == "x" * MAX_ID_LEN + "…: Extra inputs are not permitted"
    True
    """
    errors = exc.errors(include_url=False, include_input=False)
    # of a union's members, the one that says why (an infinite float), not the others' type mismatches
    err = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    where = ".".join(_cut(str(part)) for part in err["loc"]) or "event"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    hint = TOO_EARLY_HINT if err["type"] == "greater_than_equal" and err["ctx"]["ge"] == MIN_TS_MS else ""
    return f"{where}: {err['msg']}{hint}{more}"


def _cut(name: str) -> str:
    return name if len(name) <= MAX_ID_LEN else f"{name[:MAX_ID_LEN]}…"


def validate(obj: object, kind: Kind, now_ms: int, feedback: FeedbackTypes = DEFAULT_FEEDBACK) -> _Strict | Rejected:
    """Validate one decoded object; timestamps further than a day ahead of ``now_ms`` are rejected, and an event's
    type and value must fit the configured ``feedback`` types.

    >>> validate({"type": "rating", "user_id": "u1", "item_id": "i1", "ts": 10**12, "value": 4}, "event", 10**13).value
    4.0
    >>> validate({"type": "share", "user_id": "u1", "item_id": "i1", "ts": 10**12}, "event", 2 * 10**12).reason
    "type: unknown feedback type 'share' (configured: view, click, like, add_to_cart, purchase, rating, dislike)"
    """
    try:
        model = MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        return Rejected(_reason(exc), _dump(obj))
    problem = _problem(model, now_ms, feedback)
    return model if problem is None else Rejected(problem, _dump(obj))


def _problem(model: _Strict, now_ms: int, feedback: FeedbackTypes) -> str | None:
    """Why the contract refuses a record its model accepted, or None: every check beyond the model's own, which
    :func:`validate` and :func:`decode`'s whole-batch path both apply."""
    fields = model.__dict__  # not getattr: a field the model lacks goes through pydantic's __getattr__ and raises
    for field in ("ts", "created_ts"):  # an item's created_ts far ahead would stay the pool's newest for years
        value = fields.get(field)
        if value is not None and value > now_ms + MAX_FUTURE_SKEW_MS:
            return f"{field}: {value} is more than a day in the future"
    if isinstance(model, Event):
        return feedback.problem(model.type, model.value)
    return None


def decode(
    raw: bytes | None, kind: Kind, now_ms: int, feedback: FeedbackTypes = DEFAULT_FEEDBACK
) -> tuple[list[Any], list[Rejected]]:
    """Decode one Kafka message value into valid models and rejections (events checked against ``feedback``).

    A null value on ``users`` is an erasure's tombstone (:class:`Erasure`): nothing to apply (the eraser
    deleted the user's state) and nothing wrong with it. Anywhere else it is rejected.

    >>> decode(None, "user", 10**13)
    ([], [])
    >>> raw = b'[{"type":"view","user_id":"u","item_id":"i","ts":1000000000000}, 7]'
    >>> ok, bad = decode(raw, "event", 10**13)
    >>> len(ok), bad[0].reason
    (1, 'event: Input should be an object')
    """
    if raw is None:
        return [], [] if kind == "user" else [Rejected("tombstone: an empty message value carries no event", b"")]
    if len(raw) > MAX_MESSAGE_BYTES:
        return [], [Rejected(f"size: message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}", raw)]
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [], [Rejected(f"json: invalid JSON, {exc}", raw)]
    items = doc if isinstance(doc, list) else [doc]
    if len(items) > MAX_EVENTS_PER_MESSAGE:
        return [], [Rejected(f"size: micro-batch of {len(items)} events exceeds {MAX_EVENTS_PER_MESSAGE}", raw)]
    try:  # the whole micro-batch in one call; on any error, element by element below to name each rejection
        models = _BATCHES[kind].validate_python(items)
    except ValidationError:
        pass
    else:
        if all(_problem(model, now_ms, feedback) is None for model in models):
            return models, []
    valid, rejected = [], []
    for obj in items:
        if not isinstance(obj, dict):
            rejected.append(Rejected("event: Input should be an object", _dump(obj)))
            continue
        result = validate(obj, kind, now_ms, feedback)
        (rejected if isinstance(result, Rejected) else valid).append(result)
    return valid, rejected


def _dump(obj: object) -> bytes:
    """The rejected object for the DLQ: JSON, its repr if it is not JSON (a Python caller's object), or a
    placeholder if it nests deeper than either writes (orjson writes 255 levels but parses 1,024, and repr
    hits the recursion limit: an uncaught RecursionError here would stop the worker).

    >>> _dump(orjson.loads(b"[" * 1000 + b"]" * 1000))
    b'"<nested too deep to write back>"'
    """
    try:
        return orjson.dumps(obj)
    except TypeError:
        pass
    try:
        return repr(obj).encode()
    except RecursionError:
        return b'"<nested too deep to write back>"'


def encode(payload: BaseModel | Iterable[BaseModel]) -> bytes:
    """Serialize one model as an object, several as a micro-batch array; ``None`` fields left out.

    >>> encode(Event(type="view", user_id="u", item_id="i", ts=10**12))
    b'{"type":"view","user_id":"u","item_id":"i","ts":1000000000000}'
    """
    if isinstance(payload, BaseModel):
        return orjson.dumps(payload.model_dump(exclude_none=True))
    return orjson.dumps([m.model_dump(exclude_none=True) for m in payload])


def micro_batches(
    events: Sequence[Event], max_events: int = MAX_EVENTS_PER_MESSAGE, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """The events as JSON arrays, in order, each of at most ``max_events`` events and ``max_bytes`` bytes (what
    :func:`decode` accepts whole: a Kafka message, a request body), with the position of its first event.

    Why both bounds: an event carries up to MAX_CONTEXT_ENTRIES context values, so a count alone made messages
    the workers refuse whole (10,000 events stamped with the reader's feature vectors, ~250 bytes each, are
    2.5 MB). Each ``max_events`` run is encoded in one call, and only one over ``max_bytes`` is cut event by
    event (a call per event costs ~3×). An event alone over ``max_bytes`` travels alone, to be refused with its
    reason.

    >>> events = [Event(type="view", user_id="u", item_id=f"i{k}", ts=10**12) for k in range(5)]
    >>> [(first, body.count(b'"type"')) for first, body in micro_batches(events, max_events=2)]
    [(0, 2), (2, 2), (4, 1)]
    >>> [(first, len(body)) for first, body in micro_batches(events, max_bytes=130)]
    [(0, 129), (2, 129), (4, 65)]
    """
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(events), max_events):
        run = events[start : start + max_events]
        whole = encode(run)
        if len(whole) <= max_bytes:
            out.append((start, whole))
            continue
        first, parts, size = start, [], 1  # size: "[" and "]", plus each element and its "," but the first
        for k, event in enumerate(run, start):
            part = encode(event)
            if parts and size + len(part) + 1 > max_bytes:
                out.append((first, _array(parts)))
                first, parts, size = k, [], 1
            parts.append(part)
            size += len(part) + 1
        out.append((first, _array(parts)))
    return out


def _array(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


@lru_cache(maxsize=1 << 16)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), so a micro-batch lands where its user's events do.

    >>> partition_for("u1", 4) == partition_for("u1", 4)
    True
    """
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def segment_of(attributes: dict[str, Any]) -> str:
    """The user's segment: age band × gender when known, ``default`` otherwise.

    Coarse on purpose: a segment needs enough traffic for its CTRs to mean something.

    >>> segment_of({"age": 34, "gender": "F", "occupation": "engineer"})
    'age25-34.F'
    >>> segment_of({})
    'default'
    """
    age, gender = attributes.get("age"), attributes.get("gender")
    parts = []
    if isinstance(age, int | float) and not isinstance(age, bool) and 0 < age < 130:
        bands = ((18, "age0-17"), (25, "age18-24"), (35, "age25-34"), (45, "age35-44"), (56, "age45-55"))
        parts.append(next((name for limit, name in bands if age < limit), "age56+"))
    if gender in {"M", "F"}:
        parts.append(str(gender))
    return ".".join(parts) or "default"
