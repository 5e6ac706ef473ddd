"""The prequential benchmark's rows: two baselines and the consistency check in memory, and the pipeline's rows.

* popularity — top 10 by clicks so far, minus what the user has seen;
* frozen batch iALS — the batch model's own user vectors, never updated; users it does not know get the
  popularity list (counted in the tally's ``fallbacks``);
* consistency check — not a baseline: the worker's own online logic (streams.personalize.Personalizer:
  capped history, exact user step with fixed item factors, HNSW candidates minus the history) driven in
  process by the same events. The pipeline's candidate lists must equal its lists (bench/prequential.py
  fails the run below CONSISTENCY_MIN), which is what lets ``--sweep`` tune defaults on it alone;
* the pipeline's rows (:class:`PipelineResult`, filled by bench/prequential.py through bench/pipeline.py):
  candidate lists as the worker stored them, and feeds as each reader served them (:class:`ServedRow`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from recstream.models.als import ALSConfig
from recstream.models.artifacts import ModelArtifacts
from recstream.models.history import History
from recstream.models.ranker import FTRLConfig
from recstream.streams.personalize import Personalizer
from recstream.streams.ranker_training import Partition, batch_rows, train_batch

from bench.pipeline import Page
from bench.prequential_protocol import (
    K,
    Popularity,
    Rating,
    Round,
    Stream,
    Tally,
    events_of,
    first_uses,
    seen_sets,
    top_k,
)
from recstream.contracts.events import Event, partition_for
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.ranking import CONTEXT_KEY
from recstream.jobs import training
from recstream.jobs.sources import Record


@dataclass
class Batch:
    """The model trained on the history: the artifacts the workers load (the batch user vectors among them)."""

    artifacts: ModelArtifacts
    seconds: float


def train_history(
    stream: Stream, history: Sequence[Rating], cfg: ALSConfig, feedback: FeedbackTypes = DEFAULT_FEEDBACK
) -> Batch:
    """``recstream.jobs.training`` on the history, as ``recstream train`` would: the frozen baseline's user vectors
    are the version's own, which the workers' anchored step reads too."""
    started = time.perf_counter()
    records = [Record("item", stream.items[i]) for i in first_uses(history, set(), "item")]
    records += [Record("event", e) for e in events_of(history)]
    log = training.collect(records, feedback=feedback)
    artifacts, _ = training.train(log, cfg, holdout=0)
    return Batch(artifacts, time.perf_counter() - started)


class Row:
    """One in-memory recommender: sees published ratings (and announced items), answers a top-k."""

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        raise NotImplementedError

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        raise NotImplementedError


class PopularityRow(Row):
    def __init__(self) -> None:
        self.counts = Popularity()

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        self.counts.add(events_of(ratings))

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        return self.counts.top(seen)


class FrozenRow(Row):
    """Batch user vectors · item factors over the trained items; unknown users get popularity."""

    def __init__(self, batch: Batch, tally: Tally) -> None:
        self.popular = Popularity()
        self.tally = tally
        self.items = np.array(batch.artifacts.item_ids, dtype=object)
        self.factors = batch.artifacts.item_factors
        self.user_vector = batch.artifacts.user_vector

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        self.popular.add(events_of(ratings))

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        vector = self.user_vector(user)
        if vector is None:
            self.tally.fallbacks += 1
            return self.popular.top(seen)
        scores = self.factors @ vector
        order = np.argsort(-scores, kind="stable")[: K + len(seen)]
        return top_k(self.items[order].tolist(), seen)


class ConsistencyRow(Row):
    """The worker's Personalizer in process: same history merge, user step, HNSW query and exclusions, and the
    fold-ins the pipeline's worker made (``fold_ins``: one mapping per publish, applied after it, as the worker
    folds graduated items in after the batch that graduated them); without them, the vectors of new items in a
    user's history, and the index they are re-linked in, differ from the worker's.

    The fold-ins come from the pipeline run, so they are read per publish (history, then each round): a fold-in
    the worker made in the middle of a round is applied at its end here, the residual the check tolerates.
    """

    def __init__(
        self,
        version: str,
        artifacts: ModelArtifacts,
        stream: Stream,
        history_cap: int,
        m: int,
        feedback: FeedbackTypes = DEFAULT_FEEDBACK,
        fold_ins: Sequence[Mapping[str, np.ndarray]] = (),
    ) -> None:
        self.personalizer = Personalizer(version, artifacts, history_cap, m, feedback)
        self.stream = stream
        self.histories: dict[str, History] = {}
        self.candidates: dict[str, list[str]] = {}
        self.fold_ins = iter(fold_ins)

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        for item in new_items:
            self.personalizer.apply_item(self.stream.items[item])
        update = self.personalizer.update_users(events_of(ratings), self.histories)
        self.histories.update(update.histories)
        for suffix, value in update.blobs:
            if suffix.startswith("user:") and suffix.endswith(":cand"):  # ids may hold ":" themselves
                self.candidates[suffix[len("user:") : -len(":cand")]] = [row[0] for row in orjson.loads(value)]
        for item, vector in next(self.fold_ins, {}).items():
            self.personalizer.apply_fold_in(item, vector)

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        return top_k(self.candidates.get(user, ()), seen)


def replay_in_memory(
    rows: dict[str, Row], tallies: dict[str, Tally], history: Sequence[Rating], schedule: Sequence[Round]
) -> None:
    """Feed the history, then each round: publish, then score every click of the round on every row."""
    known: set[str] = set()
    seen: dict[str, set[str]] = {}

    def publish(ratings: Sequence[Rating]) -> None:
        new_items = list(first_uses(ratings, known, "item"))
        known.update(new_items)
        seen_sets(ratings, seen)
        for name, row in rows.items():
            started = time.perf_counter()
            row.observe(ratings, new_items)
            tallies[name].seconds += time.perf_counter() - started

    publish(history)
    for tally in tallies.values():
        tally.seconds = 0.0  # the tail replay is what the column reports
    empty: set[str] = set()
    for step in schedule:
        publish(step.publish)
        for rating in step.score:
            for name, row in rows.items():
                started = time.perf_counter()
                tallies[name].add(row.recommend(rating.user_id, seen.get(rating.user_id, empty)), rating.item_id)
                tallies[name].seconds += time.perf_counter() - started


@dataclass
class ServedRow:
    """One reader's pages: the tally, with the slots and hits per source and its degraded answers."""

    tally: Tally = field(default_factory=Tally)
    degraded: int = 0  # pages still degraded after the retries (scored as served)
    retried: int = 0  # degraded answers asked again
    ranked: int = 0  # pages the ranker ordered (the others: the fixed blend)
    slots: dict[str, int] = field(default_factory=dict)  # served items per source
    hits: dict[str, int] = field(default_factory=dict)  # hits per source of the served item

    def add(self, page: Page, clicked: str) -> None:
        self.tally.add([item for item, _ in page.items], clicked)
        self.retried += page.retried
        self.degraded += page.degraded
        self.ranked += page.ranked
        for item, source in page.items:
            self.slots[source] = self.slots.get(source, 0) + 1
            self.hits[source] = self.hits.get(source, 0) + (item == clicked)


class ImpressionTrainer:
    """The ranker's training from the served pages, with the workers' own code (streams.ranker_training).

    What a client's reports of a page would make of it: a view of every item served with its vector
    (a negative row), and a click of the rated item when the page held it (a positive row), in the
    order of the round's scored ratings, grouped by the events partition of their user (Kafka's
    partitioner, as the producer sends them); each partition learns on top of its state, as its worker
    would. bench/prequential.py explains why these rows are learned here and not published as events.

    A view is learned once per (user, item): a real client's view puts the item in the user's seen set, so
    the reader never shows it again, and its worker learns one negative row from it. The harness publishes
    no views, so an unrated item stays on the user's pages round after round; learned every time, those
    re-shows were 87% of the view rows on the validation split (91k of 104k) and taught the ranker that
    the items a user keeps being shown are not clicked. Re-shows are counted in ``repeats``; a click is
    always learned (the harness scores the page that held it as a hit).
    """

    def __init__(self, partitions: int, config: FTRLConfig) -> None:
        self.partitions = partitions
        self.config = config
        self.states: dict[Partition, bytes] = {}
        self.rows = 0
        self.clicks = 0
        self.repeats = 0  # views of a (user, item) pair shown on an earlier page, not learned again
        self._shown: set[tuple[str, str]] = set()

    def learn(self, pages: Sequence[tuple[Rating, Sequence[str], dict[str, str]]]) -> dict[int, bytes]:
        """Learn each (scored rating, page items, item → served vector); the changed states by partition."""
        events: list[Event] = []
        for rating, items, vectors in pages:
            ts = rating.events[-1].ts
            for item in items:
                if (rating.user_id, item) in self._shown:
                    self.repeats += 1
                    continue
                self._shown.add((rating.user_id, item))
                if item in vectors:
                    events.append(Event(type="view", user_id=rating.user_id, item_id=item, ts=ts,
                                        context={CONTEXT_KEY: vectors[item]}))  # fmt: skip
            if rating.item_id in vectors:
                events.append(Event(type="click", user_id=rating.user_id, item_id=rating.item_id, ts=ts,
                                    context={CONTEXT_KEY: vectors[rating.item_id]}))  # fmt: skip
        partitions = [("events", partition_for(e.user_id, self.partitions)) for e in events]
        trained = train_batch(batch_rows(events, partitions), self.states, self.config).trained
        for partition, result in trained.items():
            self.states[partition] = result.state
            self.rows += len(result.labels)
            self.clicks += int(result.labels.sum())
        return {partition[1]: result.state for partition, result in trained.items()}


@dataclass
class PipelineResult:
    """The pipeline rows: candidate lists read from Redis, and each reader's served pages."""

    candidates: Tally = field(default_factory=Tally)
    served: dict[str, ServedRow] = field(default_factory=dict)  # by reader name
    history_seconds: float = 0.0
    catch_up_seconds: float = 0.0  # publishing and waiting for the worker, over the tail
    reader_wait_seconds: float = 0.0
    rounds: int = 0
    trainer: ImpressionTrainer | None = None  # the ranker's training from the served row's pages
    fold_ins: list[dict[str, np.ndarray]] = field(default_factory=list)
    """The fold-ins the worker stored during each publish (the history, then each round), for the consistency
    check to apply at the same point."""
