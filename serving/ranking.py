"""The ranking stage's math: the workers' rankers averaged, when to rank, scores and what explains them.

Pure (no Redis, no snapshot). The workers train one FTRL ranker per events partition
(``Keys.ranker(topic, p)``, models/ranker.py), each on its own users' views and clicks. The reader's
snapshot loader reads them all at every reload (serving/snapshot.py) and keeps their mean weight
vector (:class:`RankerState`): each partition learned from a disjoint share of the users, and a
logistic regression's logit is linear in its weights, so averaging the weights averages the
partitions' logits. A page is ranked only when :func:`ranking_mode` says so; otherwise
it is the fixed-quota blend (serving/feed.py).

>>> from recstream.contracts.settings import BlendSettings
>>> state = RankerState(weights=np.zeros(len(FEATURES) + 1), rows=10, refreshed_at=100.0)
>>> ranking_mode(state, BlendSettings(ranker_min_rows=10, ranker_stale_s=5.0), now=105.0)
'ranked'
>>> ranking_mode(state, BlendSettings(ranker_min_rows=11), now=105.0)
'fixed-cold'
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from recstream.models.ranker import FTRLRanker, probability
from recstream.serving.blend import Source

from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import BlendSettings

log = logging.getLogger(__name__)

Mode = Literal["ranked", "fixed-cold", "fixed-stale", "fixed-off"]
MODES: tuple[str, ...] = ("ranked", "fixed-cold", "fixed-stale", "fixed-off", "degraded")
"""How a feed was made: ranked, the fixed blend because the ranker is cold, stale or switched off, or the
degraded popular list (Redis unreachable). The ``mode`` label of recstream_reader_feeds_by_mode_total."""
GENERATOR: dict[str, Source | None] = {
    "als_rank": "personal",
    "batch_rank": "personal",
    "personal": "personal",
    "popular": "popular",
    "ctr_logit": "popular",
    "segment_ctr_logit": "popular",
    "fresh": "fresh",
    "explore": "fresh",
    "pool_age": "fresh",
    "category_affinity": "fresh",
    "category_lift": "fresh",
    "warm": None,
}
"""The generator each feature speaks for: a ranked item is served as the generator its top feature names
(when that generator proposed it), and its reason is that generator's."""
GENERATORS: tuple[Source, ...] = ("personal", "popular", "fresh")
"""The generators of the ranked union, in the order of :func:`generator_pull`'s columns."""
_GROUPS = np.array([[GENERATOR[f] == g for f in FEATURES] for g in GENERATORS], dtype=np.float64).T
_EXPLAINING = slice(0, len(FEATURES) - 1)
"""The features that explain a score, all but the last, ``warm``: it is the same for every item of a page, moves every
score alike and explains none."""
if [GENERATOR[f] is not None for f in FEATURES] != [True] * (len(FEATURES) - 1) + [False]:
    raise ImportError("top_features takes every feature but the last as explaining: GENERATOR and FEATURES disagree")
_TOP_NAMES: tuple[str | None, ...] = (*FEATURES, None)
"""A top feature's name by its column, None past them (no feature raised the score)."""
_CTR, _SEGMENT_CTR = FEATURES.index("ctr_logit"), FEATURES.index("segment_ctr_logit")
WEIGHT_NAMES: tuple[str, ...] = ("bias", *FEATURES)
"""A weight vector's entries by name, the bias first (models/ranker.FTRLRanker.weights' layout)."""
PROB_CLIP = 1e-6


@dataclass(frozen=True, slots=True)
class RankerState:
    """The averaged weights a feed scores with (bias first; None: no partition has a state yet).

    ``rows`` (Σ n_updates over the partitions) is the weights' version; ``refreshed_at`` when the loader
    last read the states successfully and ``changed_at`` when they last changed (time.monotonic()).
    """

    weights: np.ndarray | None = None
    rows: int = 0
    partitions: int = 0
    refreshed_at: float | None = None
    changed_at: float | None = None
    states: tuple[bytes | None, ...] = ()

    def refreshed(self, states: Iterable[bytes | None], now: float) -> RankerState:
        """The state after a successful read of every partition's bytes (None: that partition has none);
        averaged again only when the bytes changed."""
        states = tuple(states)
        if states == self.states and self.changed_at is not None:
            return dataclasses.replace(self, refreshed_at=now)
        weights, rows, partitions = average_weights(states)
        return RankerState(weights, rows, partitions, now, now, states)


def average_weights(states: Iterable[bytes | None]) -> tuple[np.ndarray | None, int, int]:
    """(mean weight vector, Σ n_updates, partitions averaged) over the partitions whose state is a ranker of as many
    features; a malformed state or one of another count is left out (and logged). States of another feature set are
    never read: their key names the feature set's version (contracts/keys.py ``Keys.ranker``).

    >>> one, two = FTRLRanker(len(FEATURES)), FTRLRanker(len(FEATURES))
    >>> _ = one.update([[1.0] + [0.0] * (len(FEATURES) - 1)], [1])
    >>> weights, rows, partitions = average_weights([one.to_bytes(), None, two.to_bytes(), b"junk"])
    >>> bool(np.allclose(weights, (one.weights + two.weights) / 2)), rows, partitions
    (True, 1, 2)
    """
    vectors, rows = [], 0
    for state in states:
        if state is None:
            continue
        try:
            ranker = FTRLRanker.from_bytes(state)
        except ValueError as exc:
            log.warning("ranker state left out: %s", exc)
            continue
        if ranker.n_features != len(FEATURES):
            log.warning("ranker state of %d features left out (expected %d)", ranker.n_features, len(FEATURES))
            continue
        vectors.append(ranker.weights)
        rows += ranker.n_updates
    if not vectors:
        return None, 0, 0
    return np.mean(vectors, axis=0), rows, len(vectors)


def named_weights(weights: np.ndarray | None) -> dict[str, float] | None:
    """What the ranker weighs, by name (the bias first), as ``GET /v1/stats`` and ``recstream_reader_ranker_weight``
    show a reader's averaged weights; None without weights. On each feature's raw scale (a flag's weight against a
    CTR logit's, which spans ±14): a weight's size compares across features only with the feature's spread.

    >>> named = named_weights(np.arange(len(FEATURES) + 1.0))
    >>> named["bias"], named["als_rank"], named_weights(None)
    (0.0, 1.0, None)
    """
    return None if weights is None else dict(zip(WEIGHT_NAMES, weights.tolist(), strict=True))


def ranking_mode(state: RankerState, blend: BlendSettings, now: float) -> Mode:
    """Ranked, unless switched off, stale (no successful refresh for more than ``ranker_stale_s``) or cold
    (fewer than ``ranker_min_rows`` rows learned, or no weights at all): then the fixed blend, and why."""
    if not blend.ranker:
        return "fixed-off"
    if state.refreshed_at is None or now - state.refreshed_at > blend.ranker_stale_s:
        return "fixed-stale"
    if state.weights is None or state.rows < blend.ranker_min_rows:
        return "fixed-cold"
    return "ranked"


def score(weights: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Click probabilities σ(w₀ + Σ w_i·x_i) of feature rows (the logit clipped as models.ranker clips it), and
    the contributions w_i·x_i, one row per item.

    >>> p, c = score(np.array([0.0, 2.0, -1.0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> p.round(3).tolist(), c.tolist()
    ([0.881, 0.269], [[2.0, -0.0], [0.0, -1.0]])
    """
    logit, contributions = logits(weights, rows)
    return probability(logit), contributions


def logits(weights: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score`'s logits w₀ + Σ w_i·x_i, unclipped, and its contributions w_i·x_i.

    >>> z, _ = logits(np.array([0.5, 2.0, -1.0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> z.tolist()
    [2.5, -0.5]
    """
    contributions = rows * weights[1:]
    return contributions.sum(axis=1) + weights[0], contributions


def score_at_ctr(weights: np.ndarray, rows: np.ndarray, logit: np.ndarray, ctr: np.ndarray) -> np.ndarray:
    """Click probabilities of ``rows`` (``logit`` their :func:`logits`) were their items' CTR ``ctr`` (a Thompson
    draw, say): its logit in place of ``ctr_logit``, and ``segment_ctr_logit`` moved by as much (the segment's lift
    over the overall CTR kept). Compared with the page's scores, a draw is then judged on the ranker's own scale,
    whatever the counters count. The page's logits are reused, not recomputed: a row's sum is the same bits in a
    page's matrix as alone (checked on 40,000 random matrices, one and two rows out of 58).

    >>> w = np.zeros(len(FEATURES) + 1)
    >>> w[1 + _CTR], w[1 + _SEGMENT_CTR] = 1.0, 0.5
    >>> row = np.zeros((1, len(FEATURES)))
    >>> row[0, _CTR], row[0, _SEGMENT_CTR] = -2.0, -1.0
    >>> z, _ = logits(w, row)
    >>> score_at_ctr(w, row, z, np.array([0.5])).round(4).tolist(), float(row[0, _CTR])  # σ(0.5·(−1 + 2)), rows kept
    ([0.6225], -2.0)
    """
    shift = ctr_logit(ctr) - rows[:, _CTR]  # w·x moves by (w_ctr + w_segment)·shift
    return probability(logit + shift * (weights[1 + _CTR] + weights[1 + _SEGMENT_CTR]))


def top_features(contributions: np.ndarray) -> list[str | None]:
    """Per row, the feature that raised its score most, None when none raised it (every contribution ≤ 0);
    ``warm`` is left out: it is the same for every item of a page and explains none.

    >>> top_features(np.array([[0.5, 0.0, 2.0] + [0.0] * (len(FEATURES) - 3), [0.0] * len(FEATURES)]))
    ['personal', None]
    """
    explaining = contributions[:, _EXPLAINING]  # a view: no copy with −inf for warm
    tops = explaining.argmax(axis=1)
    tops = np.where(explaining[np.arange(len(tops)), tops] > 0, tops, len(FEATURES))  # a gather: max() costs more
    return list(map(_TOP_NAMES.__getitem__, tops.tolist()))


def generator_pull(contributions: np.ndarray) -> np.ndarray:
    """Per row, the summed contributions of each generator's features, columns personal, popular, fresh."""
    return contributions @ _GROUPS


def ctr_logit(p: np.ndarray) -> np.ndarray:
    """ln(p / (1 − p)) of CTRs, p clipped to [1e-6, 1 − 1e-6] so that a 0 or 1 stays finite.

    >>> ctr_logit(np.array([0.5, 0.0])).round(3).tolist()
    [0.0, -13.816]
    """
    p = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), PROB_CLIP), 1.0 - PROB_CLIP)
    return np.log(p) - np.log1p(-p)
