"""``recstream import``: a CSV, JSONL or Parquet file of interactions, items or users, published to the topics.

Each row becomes records of the event contract (recstream/contracts/events.py) and goes out through
the :class:`~recstream.eventlog.producer.EventProducer`, delivery confirmed, as any producer's:

* **interactions** — fields ``user_id``, ``item_id``, ``ts`` and either ``type`` (its values renamed by
  ``types``, e.g. ``buy=purchase``; any of the configured feedback types, recstream/contracts/feedback.py, with
  ``value`` for a valued one such as ``rating``) or ``rating`` (every row a view, a rating of at least
  ``click_rating`` also a click: how bench/prequential.py reads MovieLens), else every row a click;
  ``ts`` in seconds or milliseconds. Each event's id is a hash of its content (:func:`_event_id`);
* **items** — ``item_id``, ``categories`` (``|``-separated), ``available``, ``created_ts``, a
  ``f_<name>`` column per feature and (JSONL, Parquet) a ``features`` object (recstream/contracts/catalogue.py),
  and ``category_columns`` whose true values (1, true) name a category (one-hot genres); other columns, and a
  ``features`` value that is no object nor a map's (name, value) pairs, are ignored (pairs whose name is no text: a
  bad row);
* **users** — ``user_id``; every other column is an attribute (``age`` and ``gender`` make the segment); a row
  whose other columns are all empty is a bad row.

An id given as an integer (a typed JSONL or Parquet column) is its text, as a CSV cell of the same digits is.
``columns`` maps a field to the file's column where the names differ (``user_id=uid``). A row that
does not make a valid record is reported with its line number (its row number in a Parquet file) and
skipped; nothing stops the import but an unreadable file, an unreachable Kafka, or a CSV line after which rows
cannot be told apart from the rest of a quoted field (:class:`~recstream.contracts.catalogue.ReadingStopped`: the
report's ``stopped``, and the command exits non-zero). A CSV or JSONL stream (a pipe, ``/dev/stdin``) is read once,
its rows not counted first (:func:`count_rows`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

from recstream.contracts.catalogue import ReadingStopped, RowError, boolean, item_object, read_rows
from recstream.contracts.events import INT64_MAX, INT64_MIN, Event, ItemEvent, Rejected, UserEvent, validate
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer

Kind = Literal["interactions", "items", "users"]
FileFormat = Literal["csv", "jsonl", "parquet"]
FIELDS: dict[str, tuple[str, ...]] = {
    "interactions": ("user_id", "item_id", "ts", "type", "value", "rating"),
    "items": ("item_id", "categories", "available", "created_ts"),
    "users": ("user_id",),
}
SHORT_NAMES = {"user": "user_id", "item": "item_id"}
SUFFIXES: dict[str, FileFormat] = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
SUFFIXES[".parquet"] = "parquet"
SEND_EVERY = 1_000
Row = tuple[int, dict[str, object] | RowError]
Records = list[Event] | list[ItemEvent] | list[UserEvent]


class ImportSpecError(ValueError):
    """The import cannot be set up as asked (an unknown field, a bad mapping); nothing was read."""


@dataclass(frozen=True)
class ImportSpec:
    """How a file's rows become records (module doc)."""

    kind: Kind
    columns: Mapping[str, str] = field(default_factory=dict)
    ts_unit: Literal["s", "ms"] = "ms"
    types: Mapping[str, str] = field(default_factory=dict)
    click_rating: float = 4.0
    category_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not math.isfinite(self.click_rating):  # NaN compares false with every rating: each click became a view
            raise ImportSpecError(f"--click-rating must be a finite number, got {self.click_rating}")

    @classmethod
    def parse(
        cls,
        kind: str,
        maps: Iterable[str] = (),
        ts_unit: str = "ms",
        type_maps: Iterable[str] = (),
        click_rating: float = 4.0,
        category_columns: Sequence[str] = (),
    ) -> ImportSpec:
        """From the command line's words: ``FIELD=COLUMN`` mappings (``user`` and ``item`` stand for
        ``user_id`` and ``item_id``) and ``VALUE=TYPE`` type renamings."""
        if kind not in FIELDS:
            raise ImportSpecError(f"--kind must be one of {', '.join(FIELDS)}, got {kind!r}")
        if ts_unit not in ("s", "ms"):
            raise ImportSpecError(f"--ts-unit must be s or ms, got {ts_unit!r}")
        columns = {SHORT_NAMES.get(name, name): column for name, column in _pairs(maps, "--map FIELD=COLUMN")}
        unknown = sorted(set(columns) - set(FIELDS[kind]))
        if unknown:
            raise ImportSpecError(f"{kind} have no field {', '.join(unknown)} (fields: {', '.join(FIELDS[kind])})")
        types = dict(_pairs(type_maps, "--type-map VALUE=TYPE"))
        return cls(kind, columns, ts_unit, types, click_rating, tuple(category_columns))  # type: ignore[arg-type]

    def column(self, name: str, row: Mapping[str, object]) -> str:
        """Where the row holds the field: its mapped column, else its own name, else its short one (``user``)."""
        if name in self.columns:
            return self.columns[name]
        short = next((s for s, long in SHORT_NAMES.items() if long == name and s in row), None)
        return name if name in row or short is None else short

    def records(
        self, row: dict[str, object] | RowError, now_ms: int, feedback: FeedbackTypes = DEFAULT_FEEDBACK
    ) -> Records | Rejected:
        """The records one row makes (event types checked against ``feedback``), or why it makes none."""
        if isinstance(row, RowError):
            return Rejected(str(row), b"")
        try:
            objects = {"interactions": self._events, "items": self._item, "users": self._user}[self.kind](row)
        except RowError as exc:
            return Rejected(str(exc), b"")
        contract = {"interactions": "event", "items": "item", "users": "user"}[self.kind]
        valid = [validate({**obj, "ts": obj.get("ts", now_ms)}, contract, now_ms, feedback) for obj in objects]  # type: ignore[arg-type]
        return next((v for v in valid if isinstance(v, Rejected)), valid)  # type: ignore[return-value]

    def _has(self, row: Mapping[str, object], name: str) -> bool:
        """Whether the row has the field: its mapped column must be there, its own name may be."""
        return name in self.columns or self.column(name, row) in row

    def _get(self, row: Mapping[str, object], name: str) -> object:
        column = self.column(name, row)
        if column not in row:
            raise RowError(f"{name}: no column {column!r} (--map {name}=COLUMN names another)")
        return row[column]

    def _ms(self, name: str, value: object) -> int:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise RowError(f"{name}: expected a number, got {value[:32]!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RowError(f"{name}: expected a number, got {type(value).__name__}")
        ms = value * (1000 if self.ts_unit == "s" else 1)
        try:
            finite = math.isfinite(ms)
        except OverflowError:  # an int past what a float holds (a 400-digit cell)
            finite = False
        if not finite:
            raise RowError(f"{name}: expected a finite number of {self.ts_unit}, got {str(value)[:32]}")
        return round(ms)

    def _events(self, row: Mapping[str, object]) -> list[dict[str, object]]:
        user, item = _id(self._get(row, "user_id")), _id(self._get(row, "item_id"))
        ts = self._ms("ts", self._get(row, "ts"))
        extra: dict[str, object] = {}
        if self._has(row, "type"):
            given = self._get(row, "type")  # a mapped column the row lacks is its reason, not a KeyError
            types = [self.types.get(given, given) if isinstance(given, str) else given]
            if self._has(row, "value") and self._get(row, "value") not in (None, ""):
                extra["value"] = _number("value", self._get(row, "value"))
        elif self._has(row, "rating"):
            types = ["view", "click"] if _number("rating", self._get(row, "rating")) >= self.click_rating else ["view"]
        else:
            types = ["click"]
        return [
            {"type": kind, "user_id": user, "item_id": item, "ts": ts, "event_id": _event_id(user, item, ts, kind)}
            | extra
            for kind in types
        ]

    def _item(self, row: Mapping[str, object]) -> list[dict[str, object]]:
        given = {name: self._get(row, name) for name in FIELDS["items"] if self._has(row, name)}
        given = {n: v for n, v in given.items() if v is not None or n == "item_id"}  # a sparse column's null: absent
        if "item_id" in given:
            given["item_id"] = _id(given["item_id"])
        typed = row.get("features")
        if isinstance(typed, list) and all(isinstance(pair, tuple | list) and len(pair) == 2 for pair in typed):
            typed = _feature_map(typed)  # a Parquet map column: pyarrow reads it as (key, value) pairs
        if isinstance(typed, dict):  # a typed row's object (JSONL, a Parquet struct or map); any other is ignored
            given["features"] = typed
        features = {name: value for name, value in row.items() if name.startswith("f_")}
        item = item_object({**given, **features})
        missing = [c for c in self.category_columns if c not in row]
        if missing:
            raise RowError(f"categories: no column {missing[0]!r} (--category-columns names it)")
        flags = [c for c in self.category_columns if _true(c, row[c])]
        if flags:
            named = item.get("categories")
            if named is not None and not isinstance(named, list):
                raise RowError(f"categories: expected a list or a '|'-separated text, got {type(named).__name__}")
            item["categories"] = [*(named or []), *flags]
        if isinstance(item.get("created_ts"), int | float):
            item["created_ts"] = self._ms("created_ts", item["created_ts"])
        return [{**item, "op": "update"}]

    def _user(self, row: Mapping[str, object]) -> list[dict[str, object]]:
        user = _id(self._get(row, "user_id"))
        id_column = self.column("user_id", row)
        attributes = {k: _scalar(v) for k, v in row.items() if k != id_column and v not in ("", None)}
        if not attributes:  # published under the user's key, it would replace their attributes once compacted
            raise RowError(f"no attributes: every column but {id_column} is empty")
        return [{"user_id": user, "attributes": attributes}]


@dataclass
class ImportReport:
    rows: int = 0
    records: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line or row number, reason)
    seconds: float = 0.0
    stopped: tuple[int, ReadingStopped] | None = None  # the CSV line reading stopped at, and why: the rest is unread
    first_ts: int | None = None  # event time of the earliest event published (epoch ms)
    last_ts: int | None = None  # … and of the latest

    def saw(self, ts: int) -> None:
        """Widen the published events' span of event time by one event's."""
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def event_span_s(self) -> float | None:
        """Seconds of event time from the earliest event published to the latest, None without events: what a
        rule that reads age (the new-item pool's graduation) sees of this file.

        >>> report = ImportReport()
        >>> report.saw(5_000), report.saw(1_000), report.event_span_s()
        (None, None, 4.0)
        """
        return None if self.first_ts is None or self.last_ts is None else (self.last_ts - self.first_ts) / 1000


def file_format(path: Path, given: str | None) -> FileFormat:
    """The format named, else the one the suffix says, else CSV."""
    fmt = given or SUFFIXES.get(path.suffix.lower(), "csv")
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ImportSpecError(f"--format must be csv, jsonl or parquet, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def file_rows(path: Path, fmt: FileFormat, delimiter: str = ",", header: Sequence[str] | None = None) -> Iterator[Row]:
    """The file's rows with their line numbers (row numbers for Parquet)."""
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
    with path.open("rb") as handle:
        yield from read_rows(handle, fmt, delimiter, header)


def count_rows(path: Path, fmt: FileFormat) -> int | None:
    """At most how many rows the file holds (its lines; Parquet: its rows), for a progress bar; None for a stream (a
    pipe, ``/dev/stdin``, a process substitution), which can be read once only: counting its lines consumed it, and
    the import then published nothing and said so as a success. Parquet, whose index is at its end, needs a file."""
    if not path.is_file():
        if fmt == "parquet":
            raise ImportSpecError(f"cannot read {path} as Parquet: a stream, and Parquet is read from a file")
        return None
    if fmt == "parquet":
        return _parquet_file(path).metadata.num_rows
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def _parquet_rows(path: Path) -> Iterator[Row]:
    number = 0
    for batch in _parquet_file(path).iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _parquet_file(path: Path) -> object:
    """The file opened as Parquet; ImportSpecError (one line, before anything is read) when it is none."""
    parquet = _parquet()
    try:
        return parquet.ParquetFile(path)
    except (ValueError, OSError) as exc:  # not Parquet (a CSV renamed: ArrowInvalid), truncated, unreadable
        raise ImportSpecError(f"cannot read {path} as Parquet: {exc}") from None


def _parquet() -> ModuleType:
    """pyarrow.parquet: an optional dependency (the ``parquet`` extra)."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise ImportSpecError("reading Parquet needs pyarrow: pip install 'recstream[parquet]'") from None
    return pyarrow.parquet


async def publish_rows(
    settings: Settings,
    rows: Iterable[Row],
    spec: ImportSpec,
    sort: bool = False,
    before_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Publish the records of ``rows`` (interactions in timestamp order if ``sort``, only those before
    ``before_ms`` if given), delivery confirmed; bad rows are counted with their numbers and skipped."""
    started = time.perf_counter()
    report = ImportReport()
    now_ms = int(time.time() * 1000)

    def converted() -> Iterator[Records]:
        for line, row in rows:
            report.rows += 1
            if isinstance(row, ReadingStopped):
                report.stopped = line, row
            if progress is not None:
                progress(1)
            records = spec.records(row, now_ms, settings.model.feedback_types)
            if isinstance(records, Rejected):
                report.bad.append((line, records.reason))
            elif before_ms is None or not isinstance(records[0], Event) or records[0].ts < before_ms:
                yield records

    chunks: Iterable[Records] = converted()
    if sort:
        chunks = sorted(chunks, key=lambda records: records[0].ts)  # type: ignore[union-attr]  # stable
    async with EventProducer(settings) as producer:
        events: list[Event] = []
        for records in chunks:
            report.records += len(records)
            for record in records:
                if isinstance(record, Event):
                    events.append(record)
                    report.saw(record.ts)
                elif isinstance(record, ItemEvent):
                    await producer.send_item(record)
                else:
                    await producer.send_user(record)
            if len(events) >= SEND_EVERY:
                await producer.send_events(events)
                events = []
        await producer.send_events(events)
    report.seconds = time.perf_counter() - started
    return report


def _pairs(words: Iterable[str], shape: str) -> list[tuple[str, str]]:
    pairs = []
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ImportSpecError(f"expected {shape}, got {word!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _event_id(user: object, item: object, ts: int, kind: str) -> str:
    """The same row gives the same id: ``recstream train`` counts it once, and the workers apply it once when its
    copies arrive within ``RECSTREAM_DEDUP_WINDOW_S`` (300 s) of each other; a copy that arrives later is applied
    again (README, "Your events")."""
    return hashlib.blake2b(f"{user}\t{item}\t{ts}\t{kind}".encode(), digest_size=16).hexdigest()


def _id(value: object) -> object:
    """An id given as an integer (a typed JSONL or Parquet column) as its text, the id a CSV cell of the same digits
    gives (so the two files make the same events, event ids included); a float or a bool stays as it is, and the
    contract refuses it: ``1.0`` or ``true`` is no id anyone wrote."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _number(name: str, given: object) -> float:
    """A numeric cell (a number, or text that reads as one), else a RowError naming the field."""
    value = float(given) if isinstance(given, str) and _is_number(given) else given
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(f"{name}: expected a finite number, got {str(given)[:32]!r}")
    return float(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


INT64_DIGITS = 19  # 2**63 has 19 digits: a whole number of more significant ones is past a signed 64-bit integer


def _scalar(value: object) -> object:
    """A text attribute as a number when it is a finite one (``"34"`` → 34, so ``age`` makes a segment); else the
    text: ``"1e999"`` (the contract refuses an infinite attribute) and a whole number past a signed 64-bit integer,
    the contract's bound (an account number is an id, not a quantity: as a float it would lose its digits)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    digits = text.removeprefix("-")  # one sign: "--5" is text ("5".isdecimal() after lstrip("-") made int() raise)
    if digits.isascii() and digits.isdecimal():  # a whole number ("²" is a digit int() refuses)
        significant = digits.lstrip("0") or "0"  # int() refuses over 4,300 digits, leading zeros counted
        whole = int(significant) * (-1 if text.startswith("-") else 1) if len(significant) <= INT64_DIGITS else None
        return whole if whole is not None and INT64_MIN <= whole <= INT64_MAX else value
    if _is_number(text) and any(c.isdigit() for c in text) and math.isfinite(number := float(text)):
        return number
    return value


def _feature_map(pairs: list[tuple[object, object] | list[object]]) -> dict[str, object]:
    """(name, value) pairs as the features object; a pair whose name is no text (a list of lists, ``[[[1], 2]]``)
    makes the row a bad one: it raised TypeError out of the import, losing the rest of the file."""
    odd = next((name for name, _ in pairs if not isinstance(name, str)), None)
    if odd is not None:
        raise RowError(f"features: a pair's first value must be a feature name, got {type(odd).__name__}")
    return dict(pairs)  # type: ignore[arg-type]


def _true(column: str, value: object) -> bool:
    if isinstance(value, str):
        return value.strip() != "" and boolean(column, value)
    return bool(value)
