"""Defaults that generalize: iALS λ, α and the history cap chosen on several sources, never on a reported tail.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.validate            # coarse grid, refined around the top rows
    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.validate --quick    # a smoke run: two λ, two caps, short streams

Why: the defaults were tuned on MovieLens alone (bench/prequential.py --sweep) and lost on a held-out
dataset of another domain with long histories and no useful time order (issue 16). We will be judged
on data we do not have, so a default must hold on every source, not win one.

Sources (``SOURCES``), each split so that validation never touches a reported tail:

* ``movielens`` (time split): MovieLens 100K in time order; train on the first 60% of events,
  validate on 60–80% (the last 20% is bench/prequential.py's reported tail), as its ``--sweep`` does.
* ``movielens_shuffled`` (per-user holdout): the same first 80% in a random order, so the stream order
  says nothing (the held-out dataset's situation, and a history cap then keeps an arbitrary subset);
  a quarter of each user's clicked items held out.
* ``fresh``, ``stable``, ``sparse`` (time split, 60% / 60–80%) and ``dense`` (per-user holdout): the named
  worlds of recstream.sim.simulator.WORLDS, their browsing streams at the closed loop's impression rate
  (30 feeds/s × 10 items), on a seed the closed-loop benchmark does not use.

A time split scores prequentially: every click of the validation window, in order, against the list the
user had then, and the window's events are folded in after being scored. A per-user holdout folds every
training event, then scores each held-out (user, item) once.

The list scored is the worker's personal candidate list as the feed uses it, computed in memory with the
worker's own pieces (streams/personalize.py): the history folded with ``models.history.merge_history`` under
the cap; the vector from the history as it stood at the user's last refresh point (a click, or the first
event) by ``models.user_step.ALSStep`` with c = ``models.als.history_confidence`` (``solve_batch``: the same exact
least squares, stacked, anchored as the worker anchors); the top ``candidates_m`` items by score among the items
the index held then, minus the history; then the reader's exclusion of the seen set (the ``seen_cap`` most recent
items); its top 10. Items the model was not trained on have their content vector (the model's content map), as in
the worker; the scores are exact where the worker's HNSW search is approximate. A click on an item the user has
already seen, or by a user without a list yet, scores 0 for every row, so it is not counted.

The model is ``recstream.jobs.training.train`` on the training events (k = 64, 15 sweeps, view 1 / click 4,
the defaults). The grid: λ × α, each with a hard history cap ∈ {10, 30, 100, 300} and with recency-weighted
confidence (``models.als.history_confidence``: c = 1 + α·r·γ^rank, rank 0 the most recent item, γ ∈ {0.9,
0.95}) under caps 30 and 100, each of those without and with the step's anchor toward the user's batch vector (μ ∈
{5, 10, 20, 40}, ``models.user_step``; the batch vectors of the model trained on the split's training events, for the
users it knew); coarse, then refined (λ and α halved and doubled) around the two best pairs. The
choice is the row with the best worst case: max over rows of min over sources of HR@10 / that source's best
HR@10, over the sources whose best row has at least MIN_HITS hits (fewer: the ratios are noise); rows within
TIE of the best worst case are ties, won by the smaller history cap (the cheaper worker).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from recstream.models.als import ALSConfig, history_confidence
from recstream.models.history import history_rows, merge_history
from recstream.models.ranking_metrics import coverage, hit_rate_at_k, ndcg_at_k
from recstream.models.user_step import ALSStep
from rich.console import Console
from rich.table import Table

from bench.common import figure, machine, movielens_dir, record, show
from bench.prequential_protocol import K, Rating, events_of, first_uses, group_ratings, split
from recstream.contracts.events import ItemEvent
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.contracts.settings import Settings
from recstream.jobs import training
from recstream.jobs.sources import Record, movielens
from recstream.sim.simulator import WORLDS
from recstream.sim.world import synthetic

COMMAND = "OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.validate"
DEFAULT_MOVIELENS = movielens_dir()
REPORTED_TAIL = 0.2
"""bench/prequential.py reports the last 20% of MovieLens' events: no source here uses them."""
TRAIN_SHARE = 0.6
HOLDOUT_SHARE = 0.25
"""Per-user holdout: each clicked (user, item) is held out with this probability (as 60–80% is to 0–80%)."""
WORLD_SEED = 1_000
"""The worlds' validation seed: bench/policies.py runs seeds 1–5, which stay unseen here."""
WORLD_RATE_PER_S = 300.0
"""Views per second of world time: the closed loop's 30 feeds/s × 10 items, so arrivals and fading per
impression are the benchmark's."""
WORLD_RECORDS = 300_000
QUICK_RECORDS = 40_000

Mode = Literal["time", "user"]
console = Console(width=200)


# --- splits (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A source cut into training and validation ratings, with its items and when each was announced."""

    mode: Mode
    train: list[Rating]
    validation: list[Rating]
    items: dict[str, ItemEvent]
    announced: dict[str, int]
    """item → events in the stream before its announcement (its row enters the index there)"""


def read(records: Iterable[Record]) -> tuple[list[Rating], dict[str, ItemEvent], dict[str, int]]:
    """Ratings (prequential_protocol.group_ratings), every item's announcement and its position in events."""
    records = list(records)
    announced: dict[str, int] = {}
    events = 0
    for r in records:
        if r.kind == "event":
            events += 1
        elif isinstance(r.value, ItemEvent):
            announced.setdefault(r.value.item_id, events)
    stream = group_ratings(records)
    return stream.ratings, stream.items, announced


def without_tail(
    ratings: Sequence[Rating], items: dict[str, ItemEvent], announced: dict[str, int]
) -> tuple[list[Rating], dict[str, ItemEvent], dict[str, int]]:
    """The first 80% of events (the reported tail dropped, a cut rating kept whole) and the items announced
    before its end: nothing of the tail, not even which items it brings, reaches a split."""
    history, _tail = split(ratings, 1 - REPORTED_TAIL)
    end = history[-1].position + len(history[-1].events) if history else 0
    kept = {i: e for i, e in items.items() if announced[i] < end}
    return history, kept, {i: announced[i] for i in kept}


def time_split(history: Sequence[Rating], items: dict[str, ItemEvent], announced: dict[str, int]) -> Split:
    """Of a source without its tail (:func:`without_tail`): train on the first 60% of all events, validate on 60–80%."""
    train, validation = split(history, TRAIN_SHARE / (1 - REPORTED_TAIL))
    return Split("time", train, validation, items, announced)


def user_split(ratings: Sequence[Rating], items: dict[str, ItemEvent], announced: dict[str, int],
               share: float = HOLDOUT_SHARE, seed: int = 0) -> Split:  # fmt: skip
    """Hold out each clicked (user, item) with probability ``share``: every rating of a held-out pair leaves
    training, and its first click is the pair's one validation rating."""
    pairs = list(dict.fromkeys((r.user_id, r.item_id) for r in ratings if r.click))
    draws = np.random.default_rng(seed).random(len(pairs))
    held = {pair for pair, draw in zip(pairs, draws, strict=True) if draw < share}
    train = [r for r in ratings if (r.user_id, r.item_id) not in held]
    first: dict[tuple[str, str], Rating] = {}
    for r in ratings:
        if r.click and (r.user_id, r.item_id) in held:
            first.setdefault((r.user_id, r.item_id), r)
    return Split("user", train, list(first.values()), items, announced)


def unordered(ratings: Sequence[Rating], seed: int = 0) -> list[Rating]:
    """The ratings in a random order, renumbered: a stream whose order says nothing about time.

    >>> from recstream.contracts.events import Event
    >>> rated = [Rating(2 * n, (Event(type="view", user_id="u", item_id=f"i{n}", ts=10**12),) * 2) for n in range(3)]
    >>> [(r.position, r.item_id) for r in unordered(rated, seed=0)]
    [(0, 'i2'), (2, 'i0'), (4, 'i1')]
    """
    out, position = [], 0
    for j in np.random.default_rng(seed).permutation(len(ratings)).tolist():
        out.append(Rating(position, ratings[j].events))
        position += len(ratings[j].events)
    return out


# --- the worker's personal list, in memory ------------------------------------------------


@dataclass(frozen=True)
class Fetches:
    """Every scored click of a split, whatever the history cap: whose list it was scored on, made when, what the
    reader excluded, what was clicked.

    ``events[u]`` holds user u's (item, weight) events in stream order; fetch q's list was made from the first
    ``made_from[q]`` of its user's events (the user's last refresh point before it: a click, or the first event),
    at stream position ``made_at[q]``: items announced later were not in the index yet.
    """

    events: dict[str, list[tuple[str, float]]]
    users: list[str]
    made_from: list[int]
    made_at: np.ndarray
    seen: list[frozenset[int]]
    """rows the reader excludes at the fetch"""
    relevant: np.ndarray


@dataclass(frozen=True)
class Queries:
    """The fetches under one history cap: fetch q's history is ``rows[indptr[q]:indptr[q+1]]`` with its summed
    ``weights``, most recent first."""

    fetches: Fetches
    indptr: np.ndarray
    rows: np.ndarray
    weights: np.ndarray


def item_rows(s: Split) -> list[str]:
    """The worker's item rows: the trained items (in training's order), then the others as announced."""
    trained = list(first_uses(s.train, set(), "item"))
    known = set(trained)
    return trained + sorted((i for i in s.items if i not in known), key=s.announced.__getitem__)


def fetches(s: Split, rows: Mapping[str, int], seen_cap: int) -> Fetches:
    """Fold the training ratings, then score each validation click on the list the user had at that moment
    (a time split folds each validation rating after scoring it; a per-user holdout does not).

    A click on an item the user has seen, or by a user without a list, scores 0 whatever the defaults: not kept.
    The histories are made later, per cap, by the worker's own fold (:func:`queries`).
    """
    weight = DEFAULT_FEEDBACK.signed_weight  # the sources hold views and clicks, weighed as the default settings do
    events: dict[str, list[tuple[str, float]]] = {}
    refreshed: dict[str, tuple[int, int]] = {}  # user → (events folded at the last refresh point, its position)
    seen_at: dict[tuple[str, int], frozenset[int]] = {}
    users: list[str] = []
    made_from: list[int] = []
    made_at: list[int] = []
    seen: list[frozenset[int]] = []
    relevant: list[int] = []

    def fold(rating: Rating) -> None:
        """A rating is a view, a click, or both on one item at one instant, a click last: the refresh point of
        a rating with a click (or of the user's first one) is the end of the rating."""
        mine = events.setdefault(rating.user_id, [])
        first = not mine
        mine += [(e.item_id, weight[e.type]) for e in rating.events]
        if rating.click or first:
            refreshed[rating.user_id] = (len(mine), rating.position)

    for rating in s.train:
        fold(rating)
    for rating in s.validation:
        user = rating.user_id
        if rating.click and user in refreshed:
            mine = events[user]
            key = (user, len(mine))
            if key not in seen_at:  # the reader's seen set: the same most-recent-first fold, its own cap
                seen_at[key] = frozenset(merge_history({}, ((rows[i], 0.0) for i, _ in mine), seen_cap))
            if rows[rating.item_id] not in seen_at[key]:
                users.append(user)
                made_from.append(refreshed[user][0])
                made_at.append(refreshed[user][1])
                seen.append(seen_at[key])
                relevant.append(rows[rating.item_id])
        if s.mode == "time":
            fold(rating)
    return Fetches(events, users, made_from, np.array(made_at, np.int64), seen, np.array(relevant, np.intp))


def queries(f: Fetches, rows: Mapping[str, int], cap: int) -> Queries:
    """Each fetch's history under ``cap``: ``merge_history`` over the user's events up to the refresh point, the
    worker's fold (the same events give the same history however they were batched)."""
    indptr, flat_rows, flat_weights = [0], [], []
    for user, n in zip(f.users, f.made_from, strict=True):
        entries = history_rows(merge_history({}, f.events[user][:n], cap))
        flat_rows += [rows[item] for item, _ in entries]
        flat_weights += [w for _, w in entries]
        indptr.append(len(flat_rows))
    return Queries(f, np.array(indptr), np.array(flat_rows, np.intp), np.array(flat_weights))


@dataclass(frozen=True)
class Model:
    """A trained model as a worker holds it: the user step over every item row, when each row was indexed, and the
    batch user vectors (the anchored step's priors)."""

    step: ALSStep
    indexed_at: np.ndarray
    cfg: ALSConfig
    user_vector: Callable[[str], np.ndarray | None]  # ModelArtifacts.user_vector


def training_log(s: Split) -> training.TrainingLog:
    """The training ratings as ``recstream train`` collects them (items numbered by first use, as item_rows)."""
    trained = first_uses(s.train, set(), "item")
    records = [Record("item", s.items[i]) for i in trained] + [Record("event", e) for e in events_of(s.train)]
    return training.collect(records)


def train(s: Split, log: training.TrainingLog, order: Sequence[str], cfg: ALSConfig) -> Model:
    """``recstream.jobs.training.train`` on the training log; items it has not seen get their content
    vector appended (the worker's Personalizer.apply_item), outside FᵀF as in the worker."""
    artifacts, _ = training.train(log, cfg, holdout=0)
    trained = len(artifacts.item_ids)
    if artifacts.item_ids != list(order[:trained]):
        raise AssertionError("training numbered the items differently from item_rows")
    step = ALSStep(artifacts.item_factors, cfg.regularization)
    rest = [s.items[i] for i in order[trained:]]
    if rest:
        step.append(np.array([artifacts.content_map.vector(e.categories, e.features) for e in rest]))
    indexed_at = np.array([-1] * trained + [s.announced[e.item_id] for e in rest], dtype=np.int64)
    return Model(step, indexed_at, cfg, artifacts.user_vector)


@dataclass(frozen=True)
class Score:
    hr: float
    ndcg: float
    coverage: float
    clicks: int


def evaluate(model: Model, q: Queries, gamma: float | None, m: int, anchor: float = 0.0, chunk: int = 512) -> Score:
    """HR@10, nDCG@10 and catalogue coverage of the personal lists of ``q`` under ``model``, the history's
    confidence fading by ``gamma`` per rank (models.als.history_confidence; None: a hard cap alone), each known
    user's step pulled toward its batch vector by ``anchor`` (models.user_step; 0: no pull)."""
    lengths = np.diff(q.indptr)
    ranks = np.arange(len(q.rows)) - np.repeat(q.indptr[:-1], lengths)
    cfg = model.cfg.model_copy(update={"recency_decay": 1.0 if gamma is None else gamma})
    c = history_confidence(q.weights, cfg, ranks)
    factors = model.step.factors
    step = model.step.with_anchor(anchor) if anchor else model.step  # appended rows outside FᵀF, as in the worker
    priors = [model.user_vector(user) for user in q.fetches.users]
    vectors = step.solve_batch(q.indptr, q.rows, c, priors)
    m = min(m, len(factors) - 1)
    ranked: list[list[int]] = []
    for start in range(0, len(lengths), chunk):
        stop = min(start + chunk, len(lengths))
        scores = vectors[start:stop] @ factors.T
        scores[model.indexed_at[None, :] > q.fetches.made_at[start:stop, None]] = -np.inf  # not in the index yet
        history = np.repeat(np.arange(stop - start), lengths[start:stop])
        scores[history, q.rows[q.indptr[start] : q.indptr[stop]]] = -np.inf  # the worker's own exclusion
        top = np.argpartition(-scores, m, axis=1)[:, :m]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
        listed = np.isfinite(np.take_along_axis(scores, top, 1))
        for j, qi in enumerate(range(start, stop)):
            seen = q.fetches.seen[qi]
            ranked.append([r for r in top[j][listed[j]].tolist() if r not in seen][:K])
    relevant = q.fetches.relevant.tolist()
    return Score(hit_rate_at_k(ranked, relevant, K), ndcg_at_k(ranked, relevant, K),
                 coverage(ranked, len(factors)), len(relevant))  # fmt: skip


# --- the grid and the choice (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One candidate default: λ, α, the history cap and, when set, recency-weighted confidence's γ and the user
    step's anchor μ toward the batch user vector (0: none)."""

    regularization: float
    alpha: float
    history_cap: int
    recency: float | None = None
    anchor: float = 0.0

    def label(self) -> str:
        history = f"cap {self.history_cap}" + (f", γ {self.recency:g}" if self.recency is not None else "")
        return f"λ {self.regularization:g}, α {self.alpha:g}, {history}" + (
            f", μ {self.anchor:g}" if self.anchor else ""
        )

    def key(self) -> tuple[float, float, int, float, float]:
        """The grid order: λ, α, cap, the hard cap before its recency-weighted variants, the anchor."""
        return (self.regularization, self.alpha, self.history_cap, -1.0 if self.recency is None else self.recency,
                self.anchor)  # fmt: skip


MIN_HITS = 200
"""A source ranks defaults only when its best row has this many hits: with fewer, a row's HR / best moves by
more than 1/√200 ≈ 7% by chance, and the min over sources would pick noise. Such a source is still shown."""


def deciding(scores: Mapping[Candidate, Mapping[str, Score]]) -> list[str]:
    """The sources whose best row has at least MIN_HITS hits (HR@10 × clicks scored)."""
    names = list(next(iter(scores.values())))
    return [n for n in names if max(round(row[n].hr * row[n].clicks) for row in scores.values()) >= MIN_HITS]


def worst_case(
    table: Mapping[Candidate, Mapping[str, float]], sources: Sequence[str] | None = None
) -> dict[Candidate, tuple[float, str]]:
    """Each row's min over ``sources`` (default: all) of HR / the source's best HR, and where it is reached.

    >>> a, b = Candidate(1.0, 1.0, 10), Candidate(2.0, 1.0, 10)
    >>> worst_case({a: {"x": 0.2, "y": 0.1}, b: {"x": 0.1, "y": 0.2}})[a]
    (0.5, 'y')
    """
    sources = list(sources or next(iter(table.values())))
    best = {s: max(row[s] for row in table.values()) for s in sources}
    return {row: min((hr[s] / best[s] if best[s] > 0 else 1.0, s) for s in sources) for row, hr in table.items()}


TIE = 0.01
"""Worst cases this close are ties, being below the ratios' noise (1/√hits ≥ 0.02 on every source that votes):
the smaller history cap wins them, as the worker's history writes, user steps and candidate searches grow with it."""


def choose(table: Mapping[Candidate, Mapping[str, float]], sources: Sequence[str] | None = None) -> Candidate:
    """The max-min row: the best worst-case ratio over ``sources`` (default: all), up to TIE; among rows that
    close, the smallest history cap, then the best worst case, the best mean ratio, the grid order."""
    sources = list(sources or next(iter(table.values())))
    worst = worst_case(table, sources)
    best = {s: max(row[s] for row in table.values()) for s in sources}
    mean = {row: statistics.fmean(hr[s] / best[s] if best[s] > 0 else 1.0 for s in sources)
            for row, hr in table.items()}  # fmt: skip
    top = max(ratio for ratio, _ in worst.values())
    tied = [row for row in sorted(table, key=Candidate.key) if worst[row][0] >= top - TIE - 1e-12]
    return min(tied, key=lambda row: (row.history_cap, -round(worst[row][0], 9), -round(mean[row], 9)))


def neighbours(pairs: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """λ and α halved and doubled around each (λ, α), one at a time.

    >>> neighbours([(40.0, 2.0)])
    [(20.0, 2.0), (80.0, 2.0), (40.0, 1.0), (40.0, 4.0)]
    """
    out: list[tuple[float, float]] = []
    for lam, alpha in pairs:
        out += [(lam / 2, alpha), (lam * 2, alpha), (lam, alpha / 2), (lam, alpha * 2)]
    return list(dict.fromkeys(out))


# --- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    about: str
    load: Callable[[], Split]


def movielens_sources(folder: Path) -> list[Source]:
    """MovieLens in time order (time split) and in a random order (per-user holdout), one read for both."""

    @functools.cache
    def head() -> tuple[list[Rating], dict[str, ItemEvent], dict[str, int]]:
        return without_tail(*read(movielens(folder)))

    def shuffled() -> Split:
        history, items, _ = head()
        return user_split(unordered(history), items, dict.fromkeys(items, 0))

    return [
        Source("movielens", "MovieLens 100K in time order", lambda: time_split(*head())),
        Source("movielens_shuffled", "the same first 80% in a random order", shuffled),
    ]


def world_source(name: str, mode: Mode, records: int) -> Source:
    """A named world's browsing stream (``records`` messages at WORLD_RATE_PER_S on WORLD_SEED)."""

    def load() -> Split:
        stream = synthetic(records, seed=WORLD_SEED, config=WORLDS[name], rate_per_s=WORLD_RATE_PER_S)
        history, items, announced = without_tail(*read(stream))
        return time_split(history, items, announced) if mode == "time" else user_split(history, items, announced)

    return Source(name, f"the {name} world, {records:,} messages", load)


WORLD_SPLITS: dict[str, Mode] = {"fresh": "time", "stable": "time", "sparse": "time", "dense": "user"}


@dataclass
class Prepared:
    """One source ready for the grid: its split, training log, item rows and scored clicks per history cap."""

    source: Source
    split: Split
    log: training.TrainingLog
    order: list[str]
    queries: dict[int, Queries]
    seconds: float


def prepare(source: Source, caps: Iterable[int], cfg: ALSConfig, settings: Settings) -> Prepared:
    started = time.perf_counter()
    s = source.load()
    order = item_rows(s)
    rows = {item: row for row, item in enumerate(order)}
    scored = fetches(s, rows, settings.worker.seen_cap)
    by_cap = {cap: queries(scored, rows, cap) for cap in caps}
    return Prepared(source, s, training_log(s), order, by_cap, time.perf_counter() - started)


@dataclass(frozen=True)
class Grid:
    """(λ, α) pairs; for each, hard history caps and recency-weighted ones (each γ at each of ``recency_caps``),
    each of those also with every anchor of ``anchors``."""

    pairs: list[tuple[float, float]]
    caps: tuple[int, ...]
    recency: tuple[float, ...]
    recency_caps: tuple[int, ...]
    refine_top: int
    anchors: tuple[float, ...] = ()
    extra: tuple[Candidate, ...] = ()
    """rows evaluated whatever the grid: the current and the MovieLens-tuned defaults"""

    def rows(self, pair: tuple[float, float]) -> list[Candidate]:
        lam, alpha = pair
        rows = [Candidate(lam, alpha, cap) for cap in self.caps]
        rows += [Candidate(lam, alpha, cap, gamma, anchor) for cap in self.recency_caps for gamma in self.recency
                 for anchor in (0.0, *self.anchors)]  # fmt: skip
        return list(dict.fromkeys([*rows, *(r for r in self.extra if (r.regularization, r.alpha) == pair)]))

    def including(self, *extra: Candidate) -> Grid:
        pairs = [*self.pairs, *((r.regularization, r.alpha) for r in extra)]
        return Grid(list(dict.fromkeys(pairs)), self.caps, self.recency, self.recency_caps, self.refine_top,
                    self.anchors, (*self.extra, *extra))  # fmt: skip

    @property
    def all_caps(self) -> tuple[int, ...]:
        return tuple(sorted({*self.caps, *self.recency_caps, *(r.history_cap for r in self.extra)}))


FULL = Grid(
    list(itertools.product((10.0, 40.0, 160.0), (0.5, 2.0, 8.0))),
    (10, 30, 100, 300),
    (0.9, 0.95),
    (30, 100),
    2,
    (5.0, 10.0, 20.0, 40.0),
)
QUICK = Grid([(10.0, 2.0), (40.0, 2.0)], (10, 100), (0.9,), (30,), 0, (10.0,))
MOVIELENS_TUNED = Candidate(40.0, 2.0, 10)
"""The defaults before issue 16: chosen on MovieLens alone (bench/prequential.py --sweep)."""


def run_pairs(prepared: Sequence[Prepared], grid: Grid, pairs: Iterable[tuple[float, float]],
              scores: dict[Candidate, dict[str, Score]], m: int) -> None:  # fmt: skip
    """Train each (λ, α) on each source once and score every row of the grid that uses it."""
    base = ALSConfig()
    for pair in pairs:
        started = time.perf_counter()
        cfg = base.model_copy(update={"regularization": pair[0], "alpha": pair[1]})
        for p in prepared:
            model = train(p.split, p.log, p.order, cfg)
            for row in grid.rows(pair):
                scores.setdefault(row, {})[p.source.name] = evaluate(
                    model, p.queries[row.history_cap], row.recency, m, row.anchor
                )
        best = max(grid.rows(pair), key=lambda r: min(s.hr for s in scores[r].values()))
        console.print(f"  λ {pair[0]:g}, α {pair[1]:g}: {time.perf_counter() - started:.1f} s; HR@10 of "
                      f"{best.label()}: " + ", ".join(f"{n} {s.hr:.4f}" for n, s in scores[best].items()))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS, help="MovieLens 100K folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 λ × 2 caps, short world streams")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = Settings()
    defaults = ALSConfig()
    gamma = defaults.recency_decay
    current = Candidate(
        defaults.regularization,
        defaults.alpha,
        settings.model.history_cap,
        gamma if gamma < 1 else None,
        defaults.anchor,
    )
    grid = (QUICK if args.quick else FULL).including(current, MOVIELENS_TUNED)
    sources: list[Source] = []
    if (args.movielens / "u.data").is_file():
        sources += movielens_sources(args.movielens)
    else:
        console.print(f"[yellow]MovieLens 100K is not at {args.movielens}: its two sources are skipped[/yellow]")
    records = QUICK_RECORDS if args.quick else WORLD_RECORDS
    sources += [world_source(name, mode, records) for name, mode in WORLD_SPLITS.items()]
    prepared = []
    for source in sources:
        prepared.append(prepare(source, grid.all_caps, defaults, settings))
        console.print(f"{source.name}: prepared in {prepared[-1].seconds:.1f} s")
    scores: dict[Candidate, dict[str, Score]] = {}
    run_pairs(prepared, grid, grid.pairs, scores, settings.model.candidates_m)
    if grid.refine_top:
        worst = worst_case(hr_table(scores), deciding(scores))
        ranked = sorted(scores, key=lambda r: (-worst[r][0], r.key()))
        top = list(dict.fromkeys((r.regularization, r.alpha) for r in ranked))
        fresh = [pair for pair in neighbours(top[: grid.refine_top]) if pair not in grid.pairs]
        console.print(f"refining around {top[: grid.refine_top]}: {len(fresh)} more (λ, α)")
        run_pairs(prepared, grid, fresh, scores, settings.model.candidates_m)
    minutes = (time.perf_counter() - started) / 60
    chosen, decide = report(prepared, scores, current, minutes)
    if args.quick or args.no_record:
        return
    if len(prepared) < len(WORLD_SPLITS) + 2:
        console.print("not written to bench/results.json: a source is missing")
        return
    record_figures(scores, chosen, decide, " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]))


def hr_table(scores: Mapping[Candidate, Mapping[str, Score]]) -> dict[Candidate, dict[str, float]]:
    return {row: {name: s.hr for name, s in by_source.items()} for row, by_source in scores.items()}


TOP_ROWS = 15


def report(prepared: Sequence[Prepared], scores: dict[Candidate, dict[str, Score]], current: Candidate,
           minutes: float) -> tuple[Candidate, list[str]]:  # fmt: skip
    """The sources, the robustness table, the chosen row against the MovieLens-tuned one.

    Returns the choice and the sources that decided it (:func:`deciding`)."""
    hr = hr_table(scores)
    names = [p.source.name for p in prepared]
    decide = deciding(scores)
    if not decide:
        console.print(f"[yellow]no source has {MIN_HITS} hits (a smoke run?): every source votes[/yellow]")
        decide = names
    best = {n: max(sorted(hr, key=Candidate.key), key=lambda r, n=n: hr[r][n]) for n in names}
    table = Table(title=f"validation sources ({machine()}; {minutes:.1f} min)")
    for column in ("source", "what", "split", "training events", "users", "events per user", "catalogue",
                   "clicks scored", "hits of its best row", "ranks defaults"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("source", "what", "split") else "right")
    for p in prepared:
        log, clicks = p.log, scores[best[p.source.name]][p.source.name].clicks
        split_text = "time: train 0–60%, validate 60–80%" if p.split.mode == "time" else "per-user holdout, 1/4"
        table.add_row(p.source.name, p.source.about, split_text, f"{len(log.users):,}", f"{len(log.user_ids):,}",
                      f"{len(log.users) / max(len(log.user_ids), 1):.1f}", f"{len(p.order):,}", f"{clicks:,}",
                      f"{round(hr[best[p.source.name]][p.source.name] * clicks):,}",
                      "yes" if p.source.name in decide else f"no: < {MIN_HITS} hits")  # fmt: skip
    show(table, console)
    worst = worst_case(hr, decide)
    chosen = choose(hr, decide)
    ranked = sorted(hr, key=lambda r: (-worst[r][0], r.key()))
    shown = list(dict.fromkeys([*ranked[:TOP_ROWS], current, MOVIELENS_TUNED, *best.values()]))
    table = Table(title=f"robustness: HR@10 of each candidate default on each source; {len(hr)} rows evaluated, "
                        f"shown: the top {TOP_ROWS} by worst case over the sources that rank defaults, the defaults "
                        "and each source's best (bold)")  # fmt: skip
    for column in ("candidate default", *names, "worst / best", "worst on", "note"):
        table.add_column(column, justify="left" if column in ("candidate default", "worst on", "note") else "right")
    for row in shown:
        notes = [note for note, r in (("chosen", chosen), ("current default", current),
                                       ("MovieLens-tuned", MOVIELENS_TUNED)) if r == row]  # fmt: skip
        cells = [f"[bold]{hr[row][n]:.4f}[/bold]" if best[n] == row else f"{hr[row][n]:.4f}" for n in names]
        table.add_row(row.label(), *cells, f"{worst[row][0]:.3f}", worst[row][1], ", ".join(notes))
    show(table, console)
    table = Table(title=f"chosen ({chosen.label()}) against MovieLens-tuned ({MOVIELENS_TUNED.label()}), per source")
    for column in ("source", "HR@10", "(tuned)", "nDCG@10", "(tuned) ", "coverage", "(tuned)  "):
        table.add_column(column, justify="left" if column == "source" else "right")
    for n in names:
        a, b = scores[chosen][n], scores[MOVIELENS_TUNED][n]
        table.add_row(n, f"{a.hr:.4f}", f"{b.hr:.4f}", f"{a.ndcg:.4f}", f"{b.ndcg:.4f}", f"{a.coverage:.3f}",
                      f"{b.coverage:.3f}")  # fmt: skip
    show(table, console)
    top = max(sorted(hr, key=Candidate.key), key=lambda r: worst[r][0])
    tie = "" if top == chosen else f" ({top.label()}: {worst[top][0]:.3f}, within {TIE}: the smaller history cap wins)"
    console.print(
        f"chosen: {chosen.label()}: of the {len(hr)} rows, the best worst case over {', '.join(decide)}: "
        f"{worst[chosen][0]:.3f} of the best HR@10, on {worst[chosen][1]}{tie}. The MovieLens-tuned default falls to "
        f"{worst[MOVIELENS_TUNED][0]:.3f} on {worst[MOVIELENS_TUNED][1]}; each source's own best row, taken as the "
        "default, would fall to: "
        + "; ".join(f"{n}'s ({best[n].label()}) {worst[best[n]][0]:.3f} on {worst[best[n]][1]}" for n in decide)
    )
    return chosen, decide


def record_figures(scores: Mapping[Candidate, Mapping[str, Score]], chosen: Candidate, decide: Sequence[str],
                   command: str) -> None:  # fmt: skip
    """validate_hr10_worst_ratio and validate_hr10_<source> of the chosen row; baseline: the MovieLens-tuned row."""
    hr = hr_table(scores)
    worst = worst_case(hr, decide)
    figures = {"validate_hr10_worst_ratio": figure(worst[chosen][0], "HR@10 / the source's best, worst source",
                                                   command, worst[MOVIELENS_TUNED][0])}  # fmt: skip
    for name, value in hr[chosen].items():
        figures[f"validate_hr10_{name}"] = figure(value, "HR@10", command, hr[MOVIELENS_TUNED][name])
    record(figures)


if __name__ == "__main__":
    main()
