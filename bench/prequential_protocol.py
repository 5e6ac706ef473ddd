"""The prequential protocol's pure pieces: ratings, the split, the publish/score schedule, baselines.

ARCHITECTURE.md, evaluation protocol: MovieLens 100K by timestamp, the first 80% of events
are history, then for each click of the tail, in order, fetch the user's top 10 first, score
a hit if the clicked item is in it, then publish. Two details the text leaves open, fixed here:

* **A rating is the unit.** The source emits a rating ≥ 4 as a view *and* a click of the same
  item at the same instant. The view is that click's impression, not an earlier event: if it
  were published before the fetch, the item would already be in the user's history and seen
  set, every list would exclude it, and no click could ever be a hit. So a scored click's
  whole rating (view + click) is published after its fetch, and the 80% cut moves forward to
  the next rating boundary (on ML-100K it falls between a view and its click).
* **Rounds** (:func:`rounds`). Through Kafka a fetch must wait until the worker applied
  everything before it; strictly in order that is one catch-up per click (11k of them). A
  user's candidate list depends only on that user's own events, the model and the item
  index, so the tail is processed in rounds: round r scores every user's r-th click with
  all of that user's earlier ratings published, then publishes each of those users' next
  chunk (the scored rating and what follows up to their next click), in stream order. Per
  user the published prefix before a fetch is exactly the strict-order one; what differs is
  only *other* users' progress, i.e. global counts (popularity) and which items have been
  announced. :func:`in_order` is the strict schedule in the same shape, so in-memory rows
  can be run both ways and the difference measured.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from recstream.models.ranking_metrics import coverage, hit_rate_at_k, intra_list_diversity, ndcg_at_k, novelty

from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.jobs.sources import Record

K = 10
T0 = 10**12  # a valid event time for the examples


@dataclass(frozen=True, slots=True)
class Rating:
    """One rating as the stream carries it: its view, then its click when the rating was ≥ 4.

    ``position`` is the stream index (among events) of its first event, so sorting ratings by it
    restores the stream order.
    """

    position: int
    events: tuple[Event, ...]

    @property
    def user_id(self) -> str:
        return self.events[0].user_id

    @property
    def item_id(self) -> str:
        return self.events[0].item_id

    @property
    def click(self) -> bool:
        return any(e.type == "click" for e in self.events)


@dataclass
class Stream:
    """The event stream grouped into ratings, and each id's announcement (its ``new`` record)."""

    ratings: list[Rating] = field(default_factory=list)
    items: dict[str, ItemEvent] = field(default_factory=dict)
    users: dict[str, UserEvent] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(len(r.events) for r in self.ratings)


def group_ratings(records: Iterable[Record]) -> Stream:
    """Ratings from a source's records: a click joins the view just before it when both are the same
    user, item and instant (how :func:`recstream.jobs.sources.movielens` emits a rating ≥ 4).

    >>> e = lambda t, i, ts: Record("event", Event(type=t, user_id="u", item_id=i, ts=T0 + ts))
    >>> [[ev.type for ev in r.events] for r in group_ratings([e("view", "a", 1), e("click", "a", 1),
    ...                                                       e("view", "b", 1), e("click", "c", 2)]).ratings]
    [['view', 'click'], ['view'], ['click']]
    """
    stream = Stream()
    position = 0
    for record in records:
        value = record.value
        if isinstance(value, ItemEvent):
            stream.items.setdefault(value.item_id, value)
        elif isinstance(value, UserEvent):
            stream.users.setdefault(value.user_id, value)
        elif isinstance(value, Event):
            last = stream.ratings[-1] if stream.ratings else None
            if (
                value.type == "click"
                and last is not None
                and len(last.events) == 1
                and last.events[0].type == "view"
                and (last.user_id, last.item_id, last.events[0].ts) == (value.user_id, value.item_id, value.ts)
            ):
                stream.ratings[-1] = Rating(last.position, (*last.events, value))
            else:
                stream.ratings.append(Rating(position, (value,)))
            position += 1
    return stream


def split(ratings: Sequence[Rating], history_share: float) -> tuple[list[Rating], list[Rating]]:
    """History = ratings starting before event ``⌊share·events⌋``; a rating cut in two stays whole in it.

    >>> r = [Rating(0, (Event(type="view", user_id="u", item_id="a", ts=T0),) * 2),
    ...      Rating(2, (Event(type="view", user_id="u", item_id="b", ts=T0),))]
    >>> [len(part) for part in split(r, 0.5)]
    [1, 1]
    """
    if not 0 < history_share < 1:
        raise ValueError("history_share must be in (0, 1)")
    cut = int(history_share * sum(len(r.events) for r in ratings))
    history = [r for r in ratings if r.position < cut]
    return history, list(ratings[len(history) :])


def shuffled(stream: Stream, seed: int) -> Stream:
    """The same ratings in a random order (seeded) on the same clock: the k-th rating of the new order takes the k-th
    earliest time, and each user and item is announced at its first rating's new time, as the source announces it.

    Why: a dataset may have no useful time order (ratings collected in any order, long histories), where a recency
    weighting or a history cap learned on MovieLens' order cannot help; scored this way, every row of the benchmark
    runs on that situation with MovieLens' users and films (issue 16's held-out dataset was one).

    >>> e = lambda u, i, ts: Event(type="view", user_id=u, item_id=i, ts=T0 + ts)
    >>> stream = Stream([Rating(0, (e("u", "a", 1),)), Rating(1, (e("v", "b", 2),)), Rating(2, (e("u", "c", 3),))],
    ...                 {i: ItemEvent(op="new", item_id=i, ts=T0, created_ts=T0) for i in "abc"},
    ...                 {u: UserEvent(user_id=u, ts=T0) for u in "uv"})
    >>> out = shuffled(stream, seed=1)
    >>> [(r.position, r.item_id, r.events[0].ts - T0) for r in out.ratings]
    [(0, 'b', 1), (1, 'c', 2), (2, 'a', 3)]
    >>> {i: e.created_ts - T0 for i, e in out.items.items()}, {u: e.ts - T0 for u, e in out.users.items()}
    ({'b': 1, 'c': 2, 'a': 3}, {'v': 1, 'u': 2})
    """
    order = list(stream.ratings)
    random.Random(seed).shuffle(order)
    return _restamped(stream, order, sorted(r.events[0].ts for r in stream.ratings))


def without_clock(stream: Stream) -> Stream:
    """The same ratings in the same order, every event and announcement at the stream's first instant.

    Why: a dataset without timestamps comes with one date filled in for every row (its crawl date, say). Then no item
    ever ages, and a rule that reads age (the new-item pool's graduation after ``pool.graduate_age_s``) never fires.

    >>> e = lambda i, ts: Event(type="view", user_id="u", item_id=i, ts=T0 + ts)
    >>> out = without_clock(Stream([Rating(0, (e("a", 1),)), Rating(1, (e("b", 5),))],
    ...                            {i: ItemEvent(op="new", item_id=i, ts=T0 + 1, created_ts=T0 + 1) for i in "ab"},
    ...                            {"u": UserEvent(user_id="u", ts=T0 + 1)}))
    >>> [(r.item_id, r.events[0].ts - T0) for r in out.ratings], {i: e.created_ts - T0 for i, e in out.items.items()}
    ([('a', 1), ('b', 1)], {'a': 1, 'b': 1})
    """
    if not stream.ratings:
        return stream
    first = min(r.events[0].ts for r in stream.ratings)
    return _restamped(stream, stream.ratings, [first] * len(stream.ratings))


def _restamped(stream: Stream, order: Sequence[Rating], times: Sequence[int]) -> Stream:
    """``order``'s ratings, the k-th at ``times[k]`` (its click with its view), positions counted anew, and each user
    and item announced at its first rating's time, as the source announces them."""
    out, position = Stream(), 0
    for rating, ts in zip(order, times, strict=True):
        out.ratings.append(Rating(position, tuple(e.model_copy(update={"ts": ts}) for e in rating.events)))
        position += len(rating.events)
        if rating.item_id not in out.items:
            out.items[rating.item_id] = stream.items[rating.item_id].model_copy(update={"ts": ts, "created_ts": ts})
        if rating.user_id not in out.users:
            out.users[rating.user_id] = stream.users[rating.user_id].model_copy(update={"ts": ts})
    return out


@dataclass(frozen=True, slots=True)
class Round:
    """Publish ``publish`` (stream order), let the pipeline catch up, then score every click in ``score``."""

    publish: list[Rating]
    score: list[Rating]


def rounds(tail: Sequence[Rating]) -> list[Round]:
    """Round r scores each user's r-th click of the tail; before it, each of those users' ratings since
    their previous click are published. A user's ratings after their last click are published in
    the round after it (they still move global counts); a chunk left after the last round is dropped.

    Per user, what is published before each of their fetches is exactly their strict-order prefix.

    >>> v = lambda pos, u, click: Rating(pos, (Event(type="click" if click else "view", user_id=u,
    ...                                                item_id=f"i{pos}", ts=T0 + pos),))
    >>> tail = [v(0, "a", False), v(1, "a", True), v(2, "b", True), v(3, "a", True), v(4, "b", False)]
    >>> [([r.position for r in x.publish], [r.position for r in x.score]) for x in rounds(tail)]
    [([0], [1, 2]), ([1, 2, 4], [3])]
    """
    chunks: dict[str, list[list[Rating]]] = {}  # user -> chunks, each ending with a click (but the last)
    for rating in tail:
        user_chunks = chunks.setdefault(rating.user_id, [[]])
        user_chunks[-1].append(rating)
        if rating.click:
            user_chunks.append([])
    depth = max((len(c) - 1 for c in chunks.values()), default=0)
    out = []
    for r in range(depth):
        publish: list[Rating] = []
        score: list[Rating] = []
        for user_chunks in chunks.values():
            if r < len(user_chunks):
                chunk = user_chunks[r]
                if chunk and chunk[-1].click:
                    publish += chunk[:-1]
                    score.append(chunk[-1])
                else:
                    publish += chunk
            if r > 0 and r - 1 < len(user_chunks) - 1:
                publish.append(user_chunks[r - 1][-1])  # last round's scored click, now published
        out.append(Round(sorted(publish, key=_position), sorted(score, key=_position)))
    return out


def in_order(tail: Sequence[Rating]) -> list[Round]:
    """The strict protocol in the same shape: one round per click, everything before it published.

    >>> v = lambda pos, u, click: Rating(pos, (Event(type="click" if click else "view", user_id=u,
    ...                                                item_id=f"i{pos}", ts=T0 + pos),))
    >>> [([r.position for r in x.publish], [r.position for r in x.score])
    ...  for x in in_order([v(0, "a", False), v(1, "a", True), v(2, "b", True)])]
    [([0], [1]), ([1], [2])]
    """
    out: list[Round] = []
    pending: list[Rating] = []
    for rating in tail:
        if rating.click:
            out.append(Round(pending, [rating]))
            pending = [rating]
        else:
            pending.append(rating)
    return out


def _position(rating: Rating) -> int:
    return rating.position


def events_of(ratings: Iterable[Rating]) -> list[Event]:
    return [event for rating in ratings for event in rating.events]


def top_k(ranked: Iterable[str], exclude: Container[str], k: int = K) -> list[str]:
    """The first k of ``ranked`` not in ``exclude``.

    >>> top_k(["a", "b", "c", "d"], {"b"}, k=2)
    ['a', 'c']
    """
    out: list[str] = []
    for item in ranked:
        if item not in exclude:
            out.append(item)
            if len(out) == k:
                break
    return out


class Popularity:
    """Clicks so far per item; top-k by clicks, ties by first click (a pure function of the events).

    >>> p = Popularity()
    >>> p.add([Event(type=t, user_id="u", item_id=i, ts=T0) for t, i in [("click", "a"), ("view", "b"),
    ...        ("click", "b"), ("click", "b")]])
    >>> p.top(exclude=set(), k=3)
    ['b', 'a']
    """

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._counts: list[int] = []
        self._order: list[str] | None = None

    def add(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.type == "click":
                row = self._index.setdefault(event.item_id, len(self._index))
                if row == len(self._counts):
                    self._counts.append(0)
                self._counts[row] += 1
                self._order = None

    def top(self, exclude: Container[str], k: int = K) -> list[str]:
        if self._order is None:
            ids = list(self._index)
            self._order = [ids[j] for j in np.argsort(-np.asarray(self._counts), kind="stable").tolist()]
        return top_k(self._order, exclude, k)


@dataclass
class Tally:
    """One row of the table: the lists scored and the clicked items, plus how the list was obtained."""

    ranked: list[list[str]] = field(default_factory=list)
    relevant: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fallbacks: int = 0  # clicks answered by a fallback (frozen: users unknown to the model)
    empty: int = 0  # clicks for which the row had no list at all

    def add(self, ranked: list[str], relevant: str) -> None:
        self.ranked.append(ranked)
        self.relevant.append(relevant)
        if not ranked:
            self.empty += 1

    def hr(self, k: int = K) -> float:
        return hit_rate_at_k(self.ranked, self.relevant, k)

    def ndcg(self, k: int = K) -> float:
        return ndcg_at_k(self.ranked, self.relevant, k)

    def coverage(self, catalogue: int, k: int = K) -> float:
        return coverage((r[:k] for r in self.ranked), catalogue)

    def novelty(self, counts: Mapping[str, float], catalogue: int, k: int = K) -> float:
        return novelty((r[:k] for r in self.ranked), counts, catalogue)

    def diversity(self, categories: Mapping[str, Collection[str]], k: int = K) -> float:
        return intra_list_diversity((r[:k] for r in self.ranked), categories)

    @property
    def clicks(self) -> int:
        return len(self.relevant)


def seen_sets(ratings: Iterable[Rating], into: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """user → items they viewed or clicked, folded over ratings (updated in place when ``into`` is given)."""
    seen = {} if into is None else into
    for rating in ratings:
        seen.setdefault(rating.user_id, set()).add(rating.item_id)
    return seen


def first_uses(ratings: Iterable[Rating], known: Container[str], of: str) -> Iterator[str]:
    """Ids (``of`` = "item" or "user") the ratings use that are not ``known``, first use first, once each."""
    emitted: set[str] = set()
    for rating in ratings:
        key = rating.item_id if of == "item" else rating.user_id
        if key not in known and key not in emitted:
            emitted.add(key)
            yield key
