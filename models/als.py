"""Batch iALS training over `implicit` (CPU), with the confidence formula made explicit.

How implicit 0.7.3 reads its input (implicit/cpu/als.py and cpu/_als.pyx): every stored
value of the user×item matrix *is* the confidence `c_ui` (times its own `alpha`), with the
preference `p_ui = 1` for a positive value; missing entries get `c = 1, p = 0`. The user
step it solves is `(YᵀY + λI + Σ_i (c_ui − 1) y_i y_iᵀ) x_u = Σ_i c_ui y_i`, λ unscaled.
So passing raw weights `r` with `alpha=α` would give `c = α·r`, not Hu–Koren–Volinsky's
`c = 1 + α·r` (and `c < 1` for a light event, weighting a seen item *below* an unseen one).
We therefore build the confidence matrix ourselves and always hand implicit `alpha=1.0`.

Negative feedback (a dislike, recstream/contracts/feedback.py) is a *signed* r_ui < 0: a negative
observation, p_ui = 0 with c_ui = 1 + α·|r_ui|. It is stored as −c_ui, the convention implicit's
solver and loss (a negative stored value: p = 0, confidence its magnitude), Spark's implicit ALS
(c = 1 + α·|r|, p = [r > 0]) and `models.user_step` share, so it pulls the user's predicted score
for the item toward 0 harder than an unseen item does. How a pair's events combine
(models/history.combine_weights): positives add up; any negative makes the pair negative, its magnitude
the sum of the negatives (an explicit rejection outweighs the views and clicks that led to it).
This is commutative and associative, so the batch sum and the streaming history agree however
the events were ordered or cut.

Performance traps caught here: OpenBLAS' own thread pool fights implicit's OpenMP threads
(implicit warns, training gets several times slower), so the fit runs under
`threadpool_limits(1, "blas")`; implicit wants csr float32 and silently copies otherwise,
so the matrix is made csr float32 once; `num_threads=0` means "all cores of the host"
inside implicit, which in a container can exceed the cores we may use, so 0 here means
the cores this process is allowed to run on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares, calculate_loss
from implicit.recommender_base import ModelFitError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from threadpoolctl import threadpool_limits

from recstream.contracts.feedback import FeedbackTypes

MAX_REGULARIZATION = 1e6
MAX_ALPHA = 1e4


class FitError(ValueError):
    """The fit diverged (NaN or infinite factors): confidences 1 + α·r too large for float32."""


class ALSConfig(BaseModel):
    """Hyper-parameters of the batch model; the same object configures the online steps."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    factors: int = Field(64, ge=1, le=1024)
    # λ > 0 keeps every user step's system positive definite. implicit does not scale λ by the number of
    # interactions, so it is data-dependent. λ, α, recency_decay and anchor (with the worker's history cap) were
    # chosen by bench/validate.py's worst case over five sources (MovieLens in time order and shuffled, the stable,
    # sparse and dense worlds; the best min over sources of HR@10 / that source's best, of 360 candidates): λ 40,
    # α 1, γ 0.95, μ 10 and a cap of 30 reach 0.854 of every source's best (seen cap 1,000; 0.865 at 500), where the
    # MovieLens-tuned λ 40, α 2 and hard cap 10 fell to 0.55 (on the sparse world) for 1.07× on MovieLens itself.
    # Upper bounds, far past any useful value (λ 1e6 shrank every factor of a 4,000-event log to 1e-16; α 1e4 makes
    # one view worth ten thousand unseen items): `train --regularization 1e40` ended in implicit's NaN error after
    # reading the whole log. Within them a fit can still diverge on huge event weights: FitError.
    regularization: float = Field(40.0, gt=0.0, le=MAX_REGULARIZATION)
    alpha: float = Field(1.0, ge=0.0, le=MAX_ALPHA)
    # γ of the online user step's history_confidence: a history item's extra confidence fades by γ per more
    # recent item (1: no fading). Batch training sums events without order and does not use it.
    recency_decay: float = Field(0.95, gt=0.0, le=1.0)
    # μ of the online user step's pull toward the user's batch vector x̄ (models/user_step.ALSStep): the step
    # minimizes its history's loss + λ‖x‖² + μ‖x − x̄‖² for a user the batch fit knew, so the whole history the
    # batch saw still counts past the capped recent one (0: no pull). Chosen by bench/validate.py with the others.
    anchor: float = Field(10.0, ge=0.0, le=MAX_REGULARIZATION)
    iterations: int = Field(15, ge=1, le=500)
    log_scale: bool = False
    log_epsilon: float = Field(1.0, gt=0.0)
    random_state: int = Field(0, ge=0)
    num_threads: int = Field(0, ge=0)  # 0: the cores this process may use

    @model_validator(mode="before")
    @classmethod
    def _without_event_weights(cls, data: object) -> object:
        """A model written before feedback types had `view_weight` and `click_weight` here; they are settings now
        (RECSTREAM_FEEDBACK_TYPES), so an older version's config.json still loads."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("view_weight", "click_weight")}
        return data


@dataclass(frozen=True)
class TrainReport:
    users: int
    items: int
    nnz: int
    seconds: float
    loss: float  # implicit's normalised weighted squared error plus regularisation, after the last sweep


@dataclass(frozen=True)
class ALSFit:
    item_factors: np.ndarray  # (items, factors) float32
    user_factors: np.ndarray  # (users, factors) float32; CG approximations (implicit's 3 CG steps)
    report: TrainReport

    @property
    def user_gram(self) -> np.ndarray:
        """XᵀX in float64: the fixed-side Gram of the item fold-in, kept in the model artifacts."""
        x = self.user_factors.astype(np.float64)
        return x.T @ x


def event_weights(types: Sequence[str], values: Sequence[float | None], feedback: FeedbackTypes) -> np.ndarray:
    """The signed weight each event adds to r_ui: its type's weight (negated for a negative type), times its value
    for a valued type (a rating). The one place batch training, rebuild and the worker's user step get weights, so
    the batch and streaming paths cannot disagree; events must have passed validation (known type, value in range).

    >>> from recstream.contracts.feedback import DEFAULT_FEEDBACK
    >>> event_weights(["view", "click", "rating", "dislike"], [None, None, 4.5, None], DEFAULT_FEEDBACK)
    array([ 1. ,  4. ,  4.5, -4. ])
    """
    signed = feedback.signed_weight
    n = len(types)
    weights = np.fromiter((signed[t] for t in types), dtype=np.float64, count=n)
    scale = np.fromiter((1.0 if v is None else v for v in values), dtype=np.float64, count=n)
    return weights * scale


def confidence(r: np.ndarray, cfg: ALSConfig) -> np.ndarray:
    """Signed confidence from summed signed weights: `1 + α·r`, or `1 + α·log(1 + r/ε)` when log-scaled, negated for
    a negative r (p = 0 with confidence `1 + α·|r|`, see the module docstring).

    The log form stops a user who replays one item a hundred times from dominating
    their own vector. Used at training time and by the online steps alike.

    >>> confidence(np.array([0.0, 1.0, 5.0, -1.0]), ALSConfig(alpha=2.0))
    array([ 1.,  3., 11., -3.])
    >>> confidence(np.array([np.e - 1]), ALSConfig(alpha=2.0, log_scale=True, log_epsilon=1.0))
    array([3.])
    """
    s = scaled_weights(r, cfg)
    return np.where(s < 0, s * cfg.alpha - 1.0, 1.0 + cfg.alpha * s)


def scaled_weights(r: np.ndarray, cfg: ALSConfig) -> np.ndarray:
    """What α multiplies in the confidence: r, or `sign(r)·log(1 + |r|/ε)` when log-scaled.

    >>> scaled_weights(np.array([0.0, np.e - 1, 1 - np.e]), ALSConfig(log_scale=True, log_epsilon=1.0))
    array([ 0.,  1., -1.])
    """
    r = np.asarray(r, dtype=np.float64)
    return np.sign(r) * np.log1p(np.abs(r) / cfg.log_epsilon) if cfg.log_scale else r


def history_confidence(r: np.ndarray, cfg: ALSConfig, ranks: np.ndarray | None = None) -> np.ndarray:
    """Confidence of a user's history, most recent first: |c| = 1 + (|confidence(r)| − 1)·γ^rank, γ = `recency_decay`,
    with the sign of r (a negative observation fades toward an unseen item the same way).

    Rank 0 is the most recent item. An older item keeps p = 1 but its extra weight fades toward c = 1, so a
    long history still says what the user touched while the last items say most about what comes next: the
    soft form of a hard history cap, which won bench/validate.py's worst case over its sources where every
    hard cap lost somewhere (a short one on long histories, a long one on MovieLens). `ranks`: each entry's
    rank when `r` holds several histories back to back (default: one history, ranks 0, 1, 2, …).

    >>> history_confidence(np.array([1.0, 1.0, 5.0]), ALSConfig(alpha=2.0, recency_decay=0.5))
    array([3. , 2. , 3.5])
    >>> history_confidence(np.array([1.0, 5.0]), ALSConfig(alpha=2.0, recency_decay=1.0))  # confidence(r)
    array([ 3., 11.])
    >>> history_confidence(np.array([1.0, -1.0]), ALSConfig(alpha=2.0, recency_decay=0.5))
    array([ 3., -2.])
    """
    c = confidence(r, cfg)
    ranks = np.arange(c.size) if ranks is None else np.asarray(ranks)
    faded = 1.0 + (np.abs(c) - 1.0) * cfg.recency_decay ** ranks.astype(np.float64)
    return np.where(c < 0, -faded, faded)


def interaction_matrix(
    user_idx: np.ndarray, item_idx: np.ndarray, weights: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """r as csr float32: r_ui = the signed weights of u's events on i folded by models/history.combine_weights
    (the sum of the positives, or minus the sum of the negatives when there is one); zero sums are dropped.

    A stored zero would count as a positive with confidence 1 in implicit, so it is removed.

    >>> users, items = np.array([0, 0, 1, 1]), np.array([2, 2, 0, 0])
    >>> interaction_matrix(users, items, np.array([1.0, 4.0, 0.0, -4.0]), n_users=2, n_items=3).toarray()
    array([[ 0.,  0.,  5.],
           [-4.,  0.,  0.]], dtype=float32)
    """
    user_idx, item_idx = np.asarray(user_idx), np.asarray(item_idx)
    weights = np.asarray(weights, dtype=np.float64)
    if not user_idx.shape == item_idx.shape == weights.shape:
        raise ValueError("user_idx, item_idx and weights must have the same length")
    if user_idx.size and (user_idx.min() < 0 or user_idx.max() >= n_users):
        raise ValueError(f"user_idx outside [0, {n_users})")
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= n_items):
        raise ValueError(f"item_idx outside [0, {n_items})")
    if not np.all(np.isfinite(weights)):
        raise ValueError("event weights must be finite")
    shape = (n_users, n_items)
    positive = sp.coo_matrix((np.maximum(weights, 0.0), (user_idx, item_idx)), shape=shape).tocsr()  # sums duplicates
    negative = sp.coo_matrix((np.minimum(weights, 0.0), (user_idx, item_idx)), shape=shape).tocsr()
    negative.eliminate_zeros()
    r = positive - positive.multiply(negative != 0) + negative  # a negative pair keeps only its negatives
    r = sp.csr_matrix(r)
    r.eliminate_zeros()
    r.sort_indices()
    return r.astype(np.float32)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_als(r: sp.spmatrix, cfg: ALSConfig, show_progress: bool = False) -> ALSFit:
    """Fit iALS on r (users × items summed event weights) with `c = confidence(r)`.

    implicit's fit uses 3 conjugate-gradient steps per sweep (fast, approximate user and
    item factors); the online user step (`models.user_step`) solves exactly.
    """
    c = confidence_matrix(r, cfg)
    threads = cfg.num_threads or available_cores()
    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=1.0,  # c is already in the matrix; see the module docstring
            dtype=np.float32,
            iterations=cfg.iterations,
            num_threads=threads,
            random_state=cfg.random_state,
        )
        try:
            model.fit(c, show_progress=show_progress)
        except ModelFitError as exc:  # implicit's check of the factors after each sweep
            raise _diverged(cfg, str(exc)) from None
    seconds = time.perf_counter() - started
    return fitted(c, model.user_factors, model.item_factors, cfg, seconds)


def confidence_matrix(r: sp.spmatrix, cfg: ALSConfig) -> sp.csr_matrix:
    """c = confidence(r) on r's stored entries (csr float32, zeros dropped): what implicit's fit reads."""
    c = sp.csr_matrix(r, dtype=np.float32, copy=True)
    c.eliminate_zeros()
    c.data = confidence(c.data, cfg).astype(np.float32)
    return c


def fitted(
    c: sp.csr_matrix, user_factors: np.ndarray, item_factors: np.ndarray, cfg: ALSConfig, seconds: float
) -> ALSFit:
    """The fit of any engine, with implicit's loss on the confidence matrix c: one measure across engines."""
    user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
    item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):  # another engine's (Spark's)
        raise _diverged(cfg, "factors not finite")
    with threadpool_limits(limits=1, user_api="blas"):
        loss = calculate_loss(c, user_factors, item_factors, cfg.regularization, cfg.num_threads or available_cores())
    report = TrainReport(users=c.shape[0], items=c.shape[1], nnz=c.nnz, seconds=seconds, loss=float(loss))
    return ALSFit(item_factors=item_factors, user_factors=user_factors, report=report)


def _diverged(cfg: ALSConfig, why: str) -> FitError:
    return FitError(
        f"the fit diverged ({why}) with regularization {cfg.regularization:g} and alpha {cfg.alpha:g}: the confidences "
        "1 + α·r are too large; lower --alpha, or the event weights (RECSTREAM_FEEDBACK_TYPES)"
    )
