"""Rows of a CSV or JSONL file, and how a row spells an item: the bulk ``POST /v1/items`` and ``recstream import``.

A JSONL line is one object. A CSV file has a header row (or the caller names the columns); every
value is text, so an item row's values are read as the item contract's types:

* ``item_id``; ``categories`` separated by ``|`` (``news|sport``); ``available`` as ``true``/``false``
  (or ``1``/``0``; empty: true); ``created_ts`` in epoch milliseconds (empty: none);
* each feature in a column of its own, ``f_<name>`` (``f_price`` → feature ``price``; empty: absent).

Typed values (JSONL, Parquet) pass through as they are; the contract (recstream.contracts.events)
validates the result. A row that cannot be read is reported with its line number, never raised.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal

import orjson

from recstream.contracts.events import ItemEvent, Rejected, validate

Format = Literal["csv", "jsonl"]
BULK_BYTES_PER_ITEM = 4_096
"""A bulk body may hold this many bytes per item it may hold: 4 MB for the default 1,000 items (a typical item
row takes under 1 kB; a client splits bigger ones into more requests)."""
CATEGORY_SEPARATOR = "|"
FEATURE_PREFIX = "f_"
ITEM_COLUMNS = ("item_id", "categories", "available", "created_ts", "features")
TRUE, FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


class RowError(ValueError):
    """A row that does not spell a record; the message says which column and why."""


class ReadingStopped(RowError):
    """The last row of a CSV read: from this line on, rows cannot be told apart from the rest of a quoted field, so
    the ``unread`` lines after it were not read (a caller must say so: a summary alone hid that they were lost)."""

    def __init__(self, reason: str, unread: int) -> None:
        more = f"{unread:,} more line{'' if unread == 1 else 's'}"
        super().__init__(f"{reason}; reading stopped here: the rest of the file ({more}) was not read")
        self.unread = unread


CR_ONLY = "csv: a line ends in a carriage return alone: save the file with LF or CRLF line endings"
"""Said instead of the csv module's "new-line character seen in unquoted field", which only a lone CR causes here
(a file's lines are split at LF)."""


def read_rows(
    lines: Iterable[bytes], fmt: Format, delimiter: str = ",", columns: Sequence[str] | None = None
) -> Iterator[tuple[int, dict[str, object] | RowError]]:
    """(line number, row) for each record: a dict, or the reason the line is not one. Blank lines are skipped.

    A CSV's first line names its columns unless ``columns`` does; undecodable bytes become U+FFFD (which no id
    or category accepts, so the line is reported by the contract). A CSV record the csv module refuses is skipped,
    unless reading on could take the rest of a quoted field for rows: then the last row is a
    :class:`ReadingStopped` at the record's first line.

    >>> list(read_rows([b"item_id,categories\\n", b"i1,a|b\\n", b"\\n", b'i2,"c"\\n'], "csv"))
    [(2, {'item_id': 'i1', 'categories': 'a|b'}), (4, {'item_id': 'i2', 'categories': 'c'})]
    >>> list(read_rows([b"\\n", b"  \\n", b"item_id\\n", b"i1\\n"], "csv"))  # blank lines before the header
    [(4, {'item_id': 'i1'})]
    >>> list(read_rows([b'{"item_id": "i1"}\\n', b"[1]\\n"], "jsonl"))
    [(1, {'item_id': 'i1'}), (2, RowError('a line must be one JSON object'))]
    """
    lines = _without_bom(lines)
    if fmt == "jsonl":
        yield from _json_rows(lines)
        return
    record: list[str] = []  # the lines of the record being read

    def text() -> Iterator[str]:
        for line in lines:
            record.append(line.decode("utf-8", errors="replace"))
            yield record[-1]

    reader = csv.reader(text(), delimiter=delimiter, strict=True)
    names = list(columns) if columns is not None else None
    while True:
        record.clear()
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a stray quote or an overlong field spoils its record, and the reader goes on
            spoiled = "".join(record)  # after it (an unclosed quote runs to the end of the file)
            reason = CR_ONLY if "new-line character" in str(exc) else f"csv: {exc}"
            if (  # stop if, read as csv reads or as its writer meant, a field runs on past it
                names is None
                or open_quote(spoiled, delimiter)
                or (spoiled.count('"') % 2 and open_quote(spoiled, delimiter, lenient=True))
            ):  # no header; or the rest of an open quoted field would be read as rows
                unread = len(record) - 1 + sum(1 for _ in lines)
                yield reader.line_num - len(record) + 1, ReadingStopped(reason, unread)
                return
            yield reader.line_num, RowError(reason)
            continue
        if not values or [v.strip() for v in values] == [""]:  # a blank line, before the header too
            continue
        if names is None:
            names = [name.strip() for name in values]
            continue
        if len(values) != len(names):
            yield reader.line_num, RowError(f"{len(values)} values for {len(names)} columns")
        else:
            yield reader.line_num, dict(zip(names, values, strict=True))


def open_quote(text: str, delimiter: str = ",", *, lenient: bool = False) -> bool:
    """Whether a quoted field is still open at the end of ``text``, reading quotes as ``csv`` does: one opens a field
    only at its start, ``""`` inside it is one quote, and a lone one closes it (a stray one in the field's rest is
    text). ``lenient``: a lone quote closes the field only before the delimiter or the line's end, as the writer
    of a stray quote meant (``"see "manual" p.3`` then runs on to the next line).

    >>> [open_quote(line) for line in ('i1,"a"b', 'i2,"27" monitor",x', 'i3,"a ""b"" c",d', 'i4,"ab')]
    [False, False, False, True]
    >>> open_quote('i5,"see "manual" p.3'), open_quote('i5,"see "manual" p.3', lenient=True)
    (False, True)
    """
    inside, start, k = False, True, 0
    while k < len(text):
        char = text[k]
        if inside:
            if char == '"':
                if text.startswith('"', k + 1):
                    k += 1
                elif not lenient or k + 1 == len(text) or text[k + 1] in (delimiter, "\r", "\n"):
                    inside = False
        elif char == '"' and start:
            inside = True
        start = not inside and char == delimiter
        k += 1
    return inside


def _without_bom(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The lines with a UTF-8 byte order mark taken off the first (spreadsheets write one): kept, it became part of
    the first column's name, and every row was refused for lacking that column."""
    it = iter(lines)
    first = next(it, None)
    if first is not None:
        yield first.removeprefix(b"\xef\xbb\xbf")
        yield from it


def _json_rows(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, object] | RowError]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, RowError(f"json: invalid JSON, {exc}")
            continue
        yield number, obj if isinstance(obj, dict) else RowError("a line must be one JSON object")


def body_lines(body: bytes) -> Iterator[bytes]:
    """A request body's lines, as a file's (each with its end of line)."""
    return iter(io.BytesIO(body))


def item_object(row: Mapping[str, object]) -> dict[str, object]:
    """The item contract's fields from a row (module doc); raises :class:`RowError` naming the column.

    >>> item_object({"item_id": "i1", "categories": "a|b", "available": "false", "created_ts": "", "f_len": "2.5"})
    {'item_id': 'i1', 'categories': ['a', 'b'], 'available': False, 'features': {'len': 2.5}}
    >>> item_object({"item_id": "i1", "available": "maybe"})
    Traceback (most recent call last):
    ...
    recstream.contracts.catalogue.RowError: available: expected true or false, got 'maybe'
    """
    item: dict[str, object] = {}
    features: dict[str, object] = {}
    for column, value in row.items():
        if column.startswith(FEATURE_PREFIX):
            if value not in ("", None):  # an empty CSV cell, a typed row's null (a sparse Parquet column): absent
                features[column.removeprefix(FEATURE_PREFIX)] = _number(column, value)
        elif column not in ITEM_COLUMNS:
            raise RowError(f"{column}: not an item column ({', '.join(ITEM_COLUMNS)}, {FEATURE_PREFIX}<name>)")
        elif column == "features" and isinstance(value, dict):  # a typed row's object (a Parquet struct: a null
            item[column] = {name: v for name, v in value.items() if v is not None}  # for each feature a row lacks)
        elif not isinstance(value, str) or column == "item_id":
            item[column] = value
        elif column == "categories":
            item[column] = [c.strip() for c in value.split(CATEGORY_SEPARATOR) if c.strip()]
        elif column == "available" and value.strip():
            item[column] = boolean(column, value)
        elif column == "created_ts" and value.strip():
            item[column] = integer(column, value)
        elif column == "features":
            raise RowError("features: a CSV names each feature in a column of its own, f_<name>")
    if features:
        given = item.get("features")
        item["features"] = {**(given if isinstance(given, dict) else {}), **features}
    return item


def bulk_item(row: object, now_ms: int) -> ItemEvent | Rejected:
    """The item record a bulk write's row makes (an update stamped ``now_ms``), or why it makes none: the reader's
    ``POST /v1/items`` and the client, which checks each item before sending it (so a request never holds only
    refused items, which the reader answers 422 as a whole).

    >>> bulk_item({"item_id": "i1", "categories": "a|b"}, 10**12).categories
    ['a', 'b']
    >>> bulk_item({"item_id": "bad id"}, 10**12).reason.split(":")[0]
    'item_id'
    >>> bulk_item(["i1"], 10**12).reason
    'a line must be one JSON object'
    """
    if isinstance(row, RowError):
        return Rejected(str(row), b"")
    if not isinstance(row, Mapping):  # a client's item that is no object (read_rows refuses such a line itself)
        return Rejected(str(RowError("a line must be one JSON object")), b"")
    try:
        fields = item_object(row)
    except RowError as exc:
        return Rejected(str(exc), b"")
    return validate({**fields, "op": "update", "ts": now_ms}, "item", now_ms)  # type: ignore[return-value]


def boolean(column: str, value: str) -> bool:
    word = value.strip().lower()
    if word not in TRUE | FALSE:
        raise RowError(f"{column}: expected true or false, got {value[:32]!r}")
    return word in TRUE


def integer(column: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise RowError(f"{column}: expected an integer, got {value[:32]!r}") from None


def _number(column: str, value: object) -> object:
    if not isinstance(value, str):
        return value  # a typed value: the contract judges it
    try:
        return float(value)
    except ValueError:
        raise RowError(f"{column}: expected a number, got {value[:32]!r}") from None
