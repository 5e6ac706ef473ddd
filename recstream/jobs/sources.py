"""Where produced streams come from: a JSONL file or a MovieLens 100K folder (the synthetic world: sim/world).

Every source yields :class:`Record` values in stream order, so the producer CLI, the
trainer and the benchmarks read any of them the same way. A JSONL line is one object;
its optional ``"kind"`` (``event`` by default, ``item`` or ``user``) says which topic
it belongs on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from recstream.contracts.events import Event, ItemEvent, Kind, Rejected, UserEvent, validate
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes

CLICK_RATING = 4  # MovieLens: a rating >= 4 is a click as well as a view


@dataclass(frozen=True, slots=True)
class Record:
    """One input in stream order: a valid model, or a rejection with the line it came from."""

    kind: Kind
    value: Event | ItemEvent | UserEvent | Rejected
    line: int = 0


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


def _movielens_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {folder} a MovieLens 100K folder?")
    return path


def movielens(folder: Path) -> Iterator[Record]:
    """MovieLens 100K as a stream (ARCHITECTURE.md, evaluation protocol).

    ``u.data`` sorted by timestamp (stable): each rating is a view, a rating >= 4 also a
    click. A user (attributes from ``u.user``) and an item (genres from ``u.item`` as
    categories) are announced just before their first rating, with that rating's time as
    ``created_ts``: the catalogue grows over time as it did on the site.
    """
    genres = [
        line.split("|")[0]
        for line in _movielens_file(folder, "u.genre").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    item_genres: dict[str, list[str]] = {}
    for line in _movielens_file(folder, "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        flags = fields[-len(genres) :]
        names = [genre.replace("'", "").replace(" ", "_") for genre in genres]
        item_genres[fields[0]] = [name for name, flag in zip(names, flags, strict=True) if flag == "1"]
    user_attributes: dict[str, dict[str, int | str]] = {}
    for line in _movielens_file(folder, "u.user").read_text(encoding="latin-1").splitlines():
        uid, age, gender, occupation, _zip = line.split("|")
        user_attributes[uid] = {"age": int(age), "gender": gender, "occupation": occupation}
    ratings = []
    for line in _movielens_file(folder, "u.data").read_text().splitlines():
        uid, iid, rating, ts = line.split("\t")
        ratings.append((int(ts), uid, iid, int(rating)))
    ratings.sort(key=lambda r: r[0])  # stable: ties keep file order
    seen_users: set[str] = set()
    seen_items: set[str] = set()
    for ts_s, uid, iid, rating in ratings:
        ts = ts_s * 1000
        if uid not in seen_users:
            seen_users.add(uid)
            yield Record("user", UserEvent(user_id=f"u{uid}", ts=ts, attributes=user_attributes.get(uid, {})))
        if iid not in seen_items:
            seen_items.add(iid)
            item = ItemEvent(op="new", item_id=f"i{iid}", ts=ts, created_ts=ts, categories=item_genres.get(iid, []))
            yield Record("item", item)
        event_id = f"ml-{uid}-{iid}"
        yield Record("event", Event(type="view", user_id=f"u{uid}", item_id=f"i{iid}", ts=ts, event_id=f"{event_id}-v"))
        if rating >= CLICK_RATING:
            yield Record(
                "event",
                Event(type="click", user_id=f"u{uid}", item_id=f"i{iid}", ts=ts, event_id=f"{event_id}-c"),
            )
