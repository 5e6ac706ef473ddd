"""Where produced streams come from: a JSONL file or a MovieLens 100K folder (the synthetic world: sim/world).

Every source yields :class:`Record` values in stream order, so the producer CLI, the
trainer and the benchmarks read any of them the same way. A JSONL line is one object;
its optional ``"kind"`` (``event`` by default, ``item`` or ``user``) says which topic
it belongs on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import orjson

from recstream.contracts.events import Event, ItemEvent, Kind, Rejected, UserEvent, validate
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes

CLICK_RATING = 4  # MovieLens: a rating >= 4 is a click as well as a view
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    """One input in stream order: a valid model, or a rejection with the line it came from."""

    kind: Kind
    value: Event | ItemEvent | UserEvent | Rejected
    line: int = 0

    @property
    def refusal(self) -> str:
        """``line N: reason`` of a rejection, as every command lists the lines it skipped."""
        return f"line {self.line}: {self.value.reason}"  # type: ignore[union-attr]


def read_jsonl(path: Path, now_ms: int | None = None, feedback: FeedbackTypes = DEFAULT_FEEDBACK) -> Iterator[Record]:
    """Validate a JSONL file line by line; bad lines come back as rejections with their number."""
    now_ms = now_ms or int(datetime.now(UTC).timestamp() * 1000)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield Record("event", Rejected(f"json: invalid JSON, {exc}", line), number)
                continue
            kind = obj.pop("kind", "event") if isinstance(obj, dict) else "event"
            if kind not in ("event", "item", "user"):
                yield Record("event", Rejected(f"kind: unknown kind {kind!r}", line), number)
                continue
            yield Record(kind, validate(obj, kind, now_ms, feedback), number)


class SourceError(ValueError):
    """A source that cannot be read at all (a MovieLens folder without one of its files): said before any record."""


def _movielens_lines(folder: Path, name: str) -> list[str]:
    path = folder / name
    if not path.is_file():
        raise SourceError(f"{path} is missing: is {folder} a MovieLens 100K folder?")
    return path.read_text(encoding="latin-1").splitlines()  # latin-1 decodes any byte: a bad one is a bad line


def movielens(folder: Path, now_ms: int | None = None) -> Iterator[Record]:
    """MovieLens 100K as a stream (ARCHITECTURE.md, evaluation protocol).

    ``u.data`` sorted by timestamp (stable): each rating is a view, a rating >= 4 also a
    click. A user (attributes from ``u.user``) and an item (genres from ``u.item`` as
    categories) are announced just before their first rating, with that rating's time as
    ``created_ts``: the catalogue grows over time as it did on the site.

    Every file is read when this is called, so a missing one is a :class:`SourceError` before any record. A line
    that is not what its file's format says comes first as a rejection naming the file (``line``: its number
    there), as a bad JSONL line does; every valid rating still streams (an item or user whose own line was bad
    has no genres or attributes).
    """
    files = {name: _movielens_lines(folder, name) for name in ("u.genre", "u.item", "u.user", "u.data")}
    return _movielens(files, now_ms or int(datetime.now(UTC).timestamp() * 1000))


def _movielens(files: dict[str, list[str]], now_ms: int) -> Iterator[Record]:
    genres = [line.split("|")[0].replace("'", "").replace(" ", "_") for line in files["u.genre"] if line.strip()]

    def item(fields: list[str]) -> tuple[str, list[str]]:
        flags = fields[1:][-len(genres) :] if genres else []
        if len(flags) != len(genres) or not set(flags) <= {"0", "1"}:
            raise ValueError(fields)
        return fields[0], [name for name, flag in zip(genres, flags, strict=True) if flag == "1"]

    def user(fields: list[str]) -> tuple[str, dict[str, int | str]]:
        uid, age, gender, occupation, _zip = fields
        return uid, {"age": int(age), "gender": gender, "occupation": occupation}

    def rating(fields: list[str]) -> tuple[Event, int]:
        uid, iid, value, ts = fields
        view = {"type": "view", "user_id": f"u{uid}", "item_id": f"i{iid}", "ts": int(ts) * 1000}
        valid = validate({**view, "event_id": f"ml-{uid}-{iid}-v"}, "event", now_ms)
        if isinstance(valid, Rejected):  # refused before the sort: its user and item are announced by a valid one
            raise _Refused(valid.reason)
        return valid, int(value)  # type: ignore[return-value]

    rejected: list[Record] = []
    flags = f"an id and {len(genres)} genre flags of 0 or 1"
    item_genres = dict(_parsed(files, "u.item", "item", flags, item, rejected).values())
    user_attributes = dict(_parsed(files, "u.user", "user", "id|age|gender|occupation|zip", user, rejected).values())
    ratings = _parsed(files, "u.data", "event", "user, item, rating and time, tab-separated", rating, rejected)
    yield from rejected
    seen_users: set[str] = set()
    seen_items: set[str] = set()
    for number, (view, value) in sorted(ratings.items(), key=lambda r: r[1][0].ts):  # stable: file order
        user_id, item_id, ts = view.user_id, view.item_id, view.ts
        if user_id not in seen_users:
            seen_users.add(user_id)
            user_event = {"user_id": user_id, "ts": ts, "attributes": user_attributes.get(user_id[1:], {})}
            yield Record("user", validate(user_event, "user", now_ms), number)
        if item_id not in seen_items:
            seen_items.add(item_id)
            categories = item_genres.get(item_id[1:], [])
            new = {"op": "new", "item_id": item_id, "ts": ts, "created_ts": ts, "categories": categories}
            yield Record("item", validate(new, "item", now_ms), number)
        yield Record("event", view, number)
        if value >= CLICK_RATING:
            click = view.model_copy(update={"type": "click", "event_id": view.event_id[:-1] + "c"})
            yield Record("event", click, number)


class _Refused(ValueError):
    """A line of the right shape whose record the contract refuses: its reason is the contract's."""


def _parsed(
    files: dict[str, list[str]],
    name: str,
    kind: Kind,
    expected: str,
    parse: Callable[[list[str]], T],
    rejected: list[Record],
) -> dict[int, T]:
    """line number → ``parse`` of its fields, for each line of file ``name`` that parses; the others appended to
    ``rejected``, their reason naming the file and what the line should hold (``line``: its number)."""
    separator = "\t" if name == "u.data" else "|"
    values: dict[int, T] = {}
    for number, line in enumerate(files[name], start=1):
        if not line.strip():
            continue
        try:
            values[number] = parse(line.split(separator))
            continue
        except _Refused as exc:
            reason = f"{name}: {exc}"
        except ValueError:
            reason = f"{name}: not {expected}"
        rejected.append(Record(kind, Rejected(reason, line.encode("latin-1")), number))
    return values
