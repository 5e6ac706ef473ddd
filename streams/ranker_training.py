"""The online ranker learns from the events stream: rows from served feature vectors, one update per partition.

The reader stamps every attributed view and click with the feature vector it served the item with
(:mod:`recstream.contracts.ranking`); an event of a positive type (a click) is a positive row, any other (a view,
a dislike) a negative one (:func:`batch_rows`). The ranker
is trained per events-topic partition: a partition's rows arrive in offset order and only the
worker that owns the partition writes its state, together with the partition's watermark in the
batch's one atomic script (recstream/store/state.py). So a partition's state is a function of its
log alone (models/ranker.py: the state does not depend on how rows were cut into batches), the
same after a kill and restart, a rebalance, a gap repair or a rebuild. Events without a valid
vector of the current version (finite, within ±MAX_ABS_FEATURE) train nothing; they are counted by reason
(:data:`SKIP_REASONS`).

Pure: no I/O. streams/processor.py reads the states and writes them back.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from recstream.models.ranker import FTRLConfig, FTRLRanker, auc, logloss, update_many

from recstream.contracts.events import Event
from recstream.contracts.feedback import DEFAULT_FEEDBACK
from recstream.contracts.ranking import (
    CONTEXT_KEY,
    FEATURE_VERSION,
    FEATURES,
    MAX_ABS_FEATURE,
    decode_rows,
    prior_weights,
)
from recstream.contracts.settings import RankerSettings

Partition = tuple[str, int]
"""(topic, partition) of the events a state learned from."""
SKIP_REASONS = ("no_features", "other_version", "malformed")
POSITIVE = DEFAULT_FEEDBACK.with_role("positive")
"""Why an event trained nothing: no vector in its context, a vector of another feature set, or a broken one."""
WINDOW_ROWS = 10_000
"""Rows the online AUC and logloss gauges cover (the most recent ones this worker learned)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rows:
    """One partition's training rows in offset order: served feature vectors and labels (1 = click)."""

    features: np.ndarray  # (n, len(FEATURES))
    labels: np.ndarray  # (n,) float64 0/1


@dataclass(frozen=True, slots=True)
class BatchRows:
    """A batch's rows by partition, and how many of its events trained nothing, by reason."""

    by_partition: dict[Partition, Rows]
    skipped: Counter[str]


@dataclass(frozen=True, slots=True)
class Trained:
    """One partition's ranker after a batch: its new state, and each row's prediction made before it was learned."""

    state: bytes  # FTRLRanker.to_bytes
    n_updates: int
    predictions: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, slots=True)
class BatchTraining:
    trained: dict[Partition, Trained]
    skipped: Counter[str]


def skip_reason(value: object) -> str:
    """Why a context value is not a vector to train on (it is one when ``decode_features`` accepts it and every value
    is within ±MAX_ABS_FEATURE; a vector beyond it is ``malformed`` too).

    >>> skip_reason(None), skip_reason("00000000:1,2"), skip_reason(FEATURE_VERSION + ":1,2")
    ('no_features', 'other_version', 'malformed')
    """
    if value is None:
        return "no_features"
    version, colon, _ = value.partition(":") if isinstance(value, str) else ("", "", "")
    return "other_version" if colon and version != FEATURE_VERSION else "malformed"


def batch_rows(
    events: Sequence[Event], partitions: Sequence[Partition], positive: Collection[str] = POSITIVE
) -> BatchRows:
    """The rows of a batch's events (in their order), grouped by the partition each came from (``partitions``).

    Label 1 for an event whose type has the positive role (``positive``: a click, a like, a purchase, … of the
    configured feedback types, recstream/contracts/feedback.py), 0 for any other (an impression, a dislike): the
    ranker scores the chance that a served item is acted on, and a rejected item was not. Only events carrying
    the served feature vector (the reader's context) become rows, so a like reported from the item's page
    without it teaches the ranker nothing.

    >>> from recstream.contracts.ranking import encode_features
    >>> served = {CONTEXT_KEY: encode_features([1.0] * len(FEATURES))}
    >>> events = [Event(type=t, user_id="u", item_id="i", ts=10**12, context=c)
    ...           for t, c in [("view", served), ("click", served), ("view", None)]]
    >>> rows = batch_rows(events, [("events", 0)] * 3)
    >>> rows.by_partition[("events", 0)].labels, dict(rows.skipped)
    (array([0., 1.]), {'no_features': 1})
    """
    values = [event.context.get(CONTEXT_KEY) if event.context else None for event in events]
    matrix, where = decode_rows(values)
    inside = (np.abs(matrix) <= MAX_ABS_FEATURE).all(axis=1)
    if not inside.all():  # no served feature comes near the bound: a producer's value that would overflow the step
        matrix, where = matrix[inside], [k for k, ok in zip(where, inside.tolist(), strict=True) if ok]
    skipped: Counter[str] = Counter()
    if len(where) < len(values):
        decoded = set(where)
        skipped.update(skip_reason(value) for k, value in enumerate(values) if k not in decoded)
    rows_of: dict[Partition, list[int]] = {}
    for row, k in enumerate(where):
        rows_of.setdefault(partitions[k], []).append(row)
    labels = np.fromiter((events[k].type in positive for k in where), dtype=np.float64, count=len(where))
    by_partition = {p: Rows(matrix[rows], labels[rows]) for p, rows in rows_of.items()}
    return BatchRows(by_partition, skipped)


def ftrl_config(settings: RankerSettings) -> FTRLConfig:
    """The workers' FTRL config from the settings: α, β, λ1, λ2, the prior (contracts.ranking.prior_weights), the
    bias's α and standardization (of the named features only, when named).

    >>> ftrl_config(RankerSettings(standardize=False)) == FTRLConfig(alpha=0.07)
    True
    >>> ftrl_config(RankerSettings(standardize=False, standardize_features="als_rank")).standardize_only  # unused off
    ()
    """
    r = settings
    return FTRLConfig(
        alpha=r.alpha,
        beta=r.beta,
        l1=r.l1,
        l2=r.l2,
        prior=prior_weights(r.prior_ctr),
        bias_alpha=r.bias_alpha,
        standardize=r.standardize,
        standardize_only=tuple(FEATURES.index(name) for name in r.standardize_features) if r.standardize else (),
    )


def restore(state: bytes | None, config: FTRLConfig) -> FTRLRanker:
    """A partition's ranker from its stored state, learning on with ``config`` (the settings may have changed
    since); a new one when there is no state, or one of another feature count, unreadable, or learned with another
    standardization, or of other features (its z and n weigh other features)."""
    width = len(FEATURES) + 1
    if state is not None:
        try:
            ranker = FTRLRanker.from_bytes(state)
        except ValueError as exc:
            log.warning("unreadable ranker state (%s): the partition's ranker starts again", exc)
        else:
            if ranker.n_features != len(FEATURES):
                log.warning("ranker state of %d features, not %d: the partition's ranker starts again",
                            ranker.n_features, len(FEATURES))  # fmt: skip
            elif not np.array_equal(ranker.config.standardized(width), config.standardized(width)):
                # the masks, not the spellings: every feature named is "every feature" (()) once stored
                log.warning("ranker state learned with standardize=%s (only %s): the partition's ranker starts again",
                            ranker.config.standardize, ranker.config.standardize_only)  # fmt: skip
            else:
                ranker.config = config
                return ranker
    return FTRLRanker(len(FEATURES), config)


def train(state: bytes | None, rows: Rows, config: FTRLConfig) -> Trained:
    """Learn one partition's rows, in order, on top of its stored state.

    >>> rows = Rows(np.eye(len(FEATURES))[:2], np.array([1.0, 0.0]))
    >>> first = train(None, rows, FTRLConfig())
    >>> first.n_updates, first.predictions.round(3).tolist()  # the second row after the first (a click) was learned
    (2, [0.5, 0.504])
    >>> train(first.state, rows, FTRLConfig()).n_updates
    4
    """
    one: Partition = ("events", 0)  # train_batch of a single partition
    states = {} if state is None else {one: state}
    return train_batch(BatchRows({one: rows}, Counter()), states, config).trained[one]


def train_batch(rows: BatchRows, states: Mapping[Partition, bytes], config: FTRLConfig) -> BatchTraining:
    """Every partition of the batch learns its rows on top of its state in ``states`` (absent: a new ranker), the
    partitions all or none (:func:`~recstream.models.ranker.update_many`: a refused batch changes no partition)."""
    partitions = list(rows.by_partition)
    rankers = [restore(states.get(p), config) for p in partitions]
    predicted: list[list[float]] = [[] for _ in partitions]
    batches = [rows.by_partition[p] for p in partitions]
    update_many(rankers, [b.features for b in batches], [b.labels for b in batches], predicted)
    trained = {
        p: Trained(ranker.to_bytes(), ranker.n_updates, np.asarray(probs), batch.labels)
        for p, ranker, probs, batch in zip(partitions, rankers, predicted, batches, strict=True)
    }
    return BatchTraining(trained, rows.skipped)


class RecentRows:
    """The last ``size`` rows learned: each one's prediction made before it was learned, and its label.

    The online AUC and logloss are computed over them when Prometheus scrapes, in its HTTP thread,
    while batches add rows: hence the lock.

    >>> window = RecentRows(size=3)
    >>> window.add(np.array([0.1, 0.2, 0.8, 0.3]), np.array([1.0, 0.0, 1.0, 1.0]))  # the first row falls out
    >>> window.auc(), round(window.logloss(), 4)  # −(ln 0.8 + ln 0.8 + ln 0.3) / 3
    (1.0, 0.5501)
    """

    def __init__(self, size: int = WINDOW_ROWS) -> None:
        self._predictions = np.zeros(size)
        self._labels = np.zeros(size)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        size = len(self._predictions)
        predictions, labels = predictions[-size:], labels[-size:]
        slots = self._next + np.arange(len(predictions))
        with self._lock:
            np.put(self._predictions, slots, predictions, mode="wrap")
            np.put(self._labels, slots, labels, mode="wrap")
            self._next = (self._next + len(predictions)) % size
            self._filled = min(size, self._filled + len(predictions))

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the predictions and labels in the window (in slot order, not time order)."""
        with self._lock:
            return self._predictions[: self._filled].copy(), self._labels[: self._filled].copy()

    def auc(self) -> float:
        """ROC AUC of the window's predictions; nan until it holds both a click and a view."""
        return auc(*self.window())

    def logloss(self) -> float:
        """Mean logloss of the window's predictions (progressive validation); nan while it is empty."""
        return logloss(*self.window())
