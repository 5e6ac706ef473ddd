"""An online click model: logistic regression trained with FTRL-Proximal, plus the metrics to watch it by.

FTRL-Proximal (McMahan et al. 2013, "Ad click prediction: a view from the trenches") keeps two
accumulators per coordinate, z and n, and derives the weights from them in closed form. Rows are
applied one at a time, in order, as the algorithm requires. A bias is handled internally as a coordinate
whose feature is always 1, and it is regularized like every other coordinate (its learning rate scale may
be its own, ``FTRLConfig.bias_alpha``).

A prior weight vector w₀ (``FTRLConfig.prior``) makes the model start from a known scorer instead of
from zero: the logit is (w₀ + w)·x and FTRL learns the residual w, its regularization pulling the
weights towards w₀ rather than towards 0 (a cold model scores as w₀ does; data moves it away).

Determinism: the state after a sequence of rows is a pure function of the config and the rows in
order, whatever batches they came in, so a worker restored from `to_bytes` and fed the rest of the
rows ends in the same bytes as one that never stopped. The row loop (models/ftrl_step.py, compiled) applies
IEEE operations in a fixed order, w·x summed coordinate by coordinate, with no BLAS kernel to depend on.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike

LOGIT_CLIP = 35.0
"""Logits are clipped to [-35, 35] before the sigmoid: p stays in (0, 1) and exp never overflows."""


def probability(logits: np.ndarray) -> np.ndarray:
    """σ(z) of logits clipped to ±LOGIT_CLIP (np.minimum/np.maximum: np.clip's dispatch costs twice as much on a
    page's small arrays, for the same values).

    >>> p = probability(np.array([0.0, 35.0, 100.0]))
    >>> float(p[0]), bool(p[1] == p[2] < 1.0)  # past ±35 every logit scores as ±35
    (0.5, True)
    """
    return 1.0 / (1.0 + np.exp(-np.minimum(np.maximum(logits, -LOGIT_CLIP), LOGIT_CLIP)))


_MAGIC = b"FTRL"
_VERSION = 4  # 2: the prior w₀ after the header; 3: the bias's α and standardize in it; 4: the standardized mask
_READS = (3, 4)
"""Versions `from_bytes` reads: a version 3 state is version 4's without the mask (every feature standardized)."""
# magic, version, n_features, n_updates, alpha, beta, l1, l2, bias_alpha, standardize
_HEADER = struct.Struct("<4sHIQ5d?")
_NON_FINITE = "the batch would leave a non-finite state (a logit, z, n or the statistics): nothing learned"
VAR_FLOOR = 1e-12
"""A feature whose running variance is at most this is not scaled (its scale is 1): a constant, or one row."""
MAX_ABS_INPUT = 1e100
"""The largest |x| a row may hold. Why: a row's x̃ enters n as g² = ((p − y)·x̃)² and, standardized, M2 as (x − μ)²,
and a finite row near 1e160 overflows them to inf, after which every weight is NaN. Within ±1e100, x̃ = (x − μ)/s is
at most 2e106 in magnitude (s > 1e-6: a smaller variance is not scaled), so a row adds at most about 4e212 to n or
M2, and the state stays finite for ~1e95 rows. Real features (flags, logits, log ages) are nowhere near it; the
worker refuses served vectors long before (recstream.contracts.ranking.MAX_ABS_FEATURE): this is the model's own."""


@dataclass(frozen=True, slots=True)
class FTRLConfig:
    """FTRL-Proximal hyperparameters: per-coordinate learning rate η_i = α / (β + sqrt(n_i)), L1 and L2; the
    prior w₀ the weights start from and are regularized towards (bias first; () is all zeros); the bias's own
    α (None: α); whether the features are standardized by their running mean and standard deviation, and which
    (``standardize_only``: 0-based feature indices; () is every feature).

    Why a bias α: from zero, a small α leaves the bias far from the base rate's logit for tens of thousands of
    rows, and the features that are far from 0 on most rows (a CTR logit near −2, a flag on most rows) explain
    the base rate in its place, which biases their weights; a larger α for the bias alone lets it take the base
    rate while the features keep the learning rate that weighs their differences.

    Why standardize: FTRL's per-coordinate step moves w_i·x_i by about α times the feature's scale, so a feature
    on a small scale (a position discount in [0, 1]) is weighed far more slowly than a CTR logit near −2, and a
    feature whose mean is far from 0 acts as a second bias. Learned on (x − μ)/s, every feature moves at the same
    pace and the bias alone carries the base rate (pair it with a bias α); ``weights`` maps the weights back to
    the raw features, so whoever scores with them needs no statistics.

    Why only some: a feature left raw keeps the pace and the meaning its raw scale gives it (a CTR logit that
    already orders items well), while the others are centred (no second bias) and move at a common pace.

    >>> FTRLConfig(alpha=0.1, l1=1.0)
    FTRLConfig(alpha=0.1, beta=1.0, l1=1.0, l2=1.0, prior=(), bias_alpha=None, standardize=False, standardize_only=())
    >>> FTRLConfig(standardize=True, standardize_only=(3, 0, 3)).standardize_only  # sorted, once each
    (0, 3)
    >>> FTRLConfig(prior=(0.0, 0.0)).prior  # all zeros is no prior: the same config
    ()
    >>> FTRLConfig(alpha=0.1, bias_alpha=0.1) == FTRLConfig(alpha=0.1)  # the bias's α equal to α is no bias α
    True
    >>> FTRLConfig(alpha=0.0)
    Traceback (most recent call last):
    ...
    ValueError: alpha must be finite and > 0, got 0.0
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 1.0
    prior: tuple[float, ...] = ()
    bias_alpha: float | None = None
    standardize: bool = False
    standardize_only: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        prior = tuple(float(v) for v in self.prior)
        if not all(math.isfinite(v) for v in prior):
            raise ValueError("prior weights must be finite")
        object.__setattr__(self, "prior", prior if any(prior) else ())
        if self.standardize and self.prior:
            raise ValueError("a prior and standardize do not combine: the prior weighs raw features")
        only = tuple(sorted({int(k) for k in self.standardize_only}))
        if only and not self.standardize:
            raise ValueError("standardize_only needs standardize")
        if only and only[0] < 0:
            raise ValueError(f"standardize_only holds feature indices >= 0, got {only[0]}")
        object.__setattr__(self, "standardize_only", only)
        for name in ("alpha", "beta", "bias_alpha"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.bias_alpha == self.alpha:
            object.__setattr__(self, "bias_alpha", None)
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")

    def alphas(self, width: int) -> np.ndarray:
        """α per coordinate of a (bias + features) vector of `width`: the bias's α first, then α.

        >>> FTRLConfig(alpha=0.05, bias_alpha=1.0).alphas(3).tolist()
        [1.0, 0.05, 0.05]
        """
        alphas = np.full(width, self.alpha)
        if self.bias_alpha is not None:
            alphas[0] = self.bias_alpha
        return alphas

    def standardized(self, width: int) -> np.ndarray:
        """1 for each coordinate of a (bias + features) vector of `width` that is standardized, else 0 (the bias never).

        >>> FTRLConfig(standardize=True, standardize_only=(1,)).standardized(4).tolist()
        [0.0, 0.0, 1.0, 0.0]
        >>> FTRLConfig(standardize=True).standardized(3).tolist(), FTRLConfig().standardized(3).tolist()
        ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0])
        """
        mask = np.zeros(width)
        if self.standardize:
            mask[1 + np.array(self.standardize_only, dtype=np.intp) if self.standardize_only else slice(1, None)] = 1.0
        return mask


class FTRLRanker:
    """Logistic regression on `n_features` dense features plus a bias, learned online with FTRL-Proximal.

    w_i = 0 if |z_i| ≤ λ1, else −(z_i − sgn(z_i)·λ1) / ((β + sqrt(n_i))/α_i + λ2);  p = σ((w₀ + w)·x).
    Each row (x, y) then applies: g_i = (p − y)·x_i, σ_i = (sqrt(n_i + g_i²) − sqrt(n_i))/α_i,
    z_i += g_i − σ_i·w_i, n_i += g_i². Coordinate 0 is the bias (x_0 = 1, α_0 the config's bias α, else α);
    w₀ the config's prior (0 without). With ``standardize``, x_i (i ≥ 1, of ``standardize_only`` when given) is
    (x_i − μ_i)/s_i in all of it, μ and s the running mean and standard deviation of the rows learned before this
    one (s_i = 1 while its variance is at most VAR_FLOOR), updated after the row by Welford's recurrence; a
    feature not standardized keeps μ_i = 0 and s_i = 1, so it is learned raw.

    `update` returns the progressive-validation logloss: the mean loss of each row's prediction
    made before that row was learned, what an online dashboard shows.

    >>> ranker = FTRLRanker(n_features=2, config=FTRLConfig(alpha=0.5))
    >>> rows = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ranker.score(rows)  # nothing learned yet: every row scores 1/2
    array([0.5, 0.5])
    >>> round(ranker.update(rows[:1], [1]), 4)  # the row was predicted at 1/2 before it was learned: ln 2
    0.6931
    >>> round(ranker.update(rows, [1, 0]), 4)  # mean loss of each row's prediction before its own update
    0.6943
    >>> ranker.score(rows).round(3)  # the clicked row now scores higher than the skipped one
    array([0.583, 0.493])
    >>> ranker.weights.round(3)  # bias first
    array([ 0.109,  0.226, -0.135])
    >>> ranker.contributions([1.0, 1.0]).round(3)  # w_i·x_i per feature, the bias excluded
    array([ 0.226, -0.135])
    >>> ranker.n_updates
    3
    >>> FTRLRanker.from_bytes(ranker.to_bytes()).to_bytes() == ranker.to_bytes()
    True
    >>> primed = FTRLRanker(n_features=2, config=FTRLConfig(prior=(0.0, 1.0, 0.0)))
    >>> primed.score(rows).round(3)  # cold, it scores as the prior does: σ(1) and σ(0)
    array([0.731, 0.5  ])
    """

    def __init__(self, n_features: int, config: FTRLConfig | None = None) -> None:
        if not (isinstance(n_features, int | np.integer) and n_features >= 1):
            raise ValueError(f"n_features must be an int >= 1, got {n_features!r}")
        self.n_features = int(n_features)
        self.config = FTRLConfig() if config is None else config
        self.n_updates = 0  # rows learned so far
        self._z = np.zeros(self.n_features + 1)
        self._n = np.zeros(self.n_features + 1)
        self._mean = np.zeros(self.n_features + 1)  # standardize: running mean and Σ squared deviations (Welford),
        self._m2 = np.zeros(self.n_features + 1)  # the bias's kept at 0 (it is not standardized)

    @property
    def config(self) -> FTRLConfig:
        return self._config

    @config.setter
    def config(self, config: FTRLConfig) -> None:
        if config.prior and len(config.prior) != self.n_features + 1:
            raise ValueError(f"the prior needs {self.n_features + 1} weights (bias first), got {len(config.prior)}")
        if config.standardize_only and config.standardize_only[-1] >= self.n_features:
            raise ValueError(f"standardize_only: feature {config.standardize_only[-1]} of {self.n_features}")
        self._config = config

    @property
    def prior(self) -> np.ndarray:
        """w₀, bias first: shape (n_features + 1,), zeros without a prior."""
        return np.array(self.config.prior) if self.config.prior else np.zeros(self.n_features + 1)

    def __repr__(self) -> str:
        return f"FTRLRanker(n_features={self.n_features}, config={self.config!r}, n_updates={self.n_updates})"

    @property
    def weights(self) -> np.ndarray:
        """The weights a raw row is scored with, w₀ + w (a copy), bias first: shape (n_features + 1,).

        Standardized, the learned w weighs (x − μ)/s: w_i/s_i on x_i, and w_0 − Σ w_i·μ_i/s_i on the bias.

        >>> FTRLRanker(3).weights
        array([0., 0., 0., 0.])
        """
        w = np.empty_like(self._z)
        _weights(self._z, _neg_den(np.sqrt(self._n), self.config), self.config.l1, out=w)
        np.add(w, self.prior, out=w)  # 0/−den is −0.0; adding shows it as 0.0
        if not self.config.standardize:
            return w
        np.divide(w, _scales(self._m2, self.n_updates), out=w)
        w[0] -= math.fsum((w[1:] * self._mean[1:]).tolist())
        return w

    def score(self, rows: ArrayLike) -> np.ndarray:
        """Click probabilities σ(w·x) of rows shaped (n_rows, n_features), with the logit clipped to ±35.

        Vectorized over rows, it gives the prediction `update` would make for a row up to rounding in
        the last bits (`update` sums w·x coordinate by coordinate, one row at a time; standardized,
        it applies the learned weights to (x − μ)/s where this applies their raw-feature form).

        >>> FTRLRanker(2).score(np.zeros((3, 2)))
        array([0.5, 0.5, 0.5])
        """
        x = self._design(rows)
        return probability(np.add.reduce(x * self.weights, axis=1))

    def contributions(self, row: ArrayLike) -> np.ndarray:
        """w_i·x_i for each feature of one row (shape (n_features,)): which feature pushed its score most.

        The logit is their sum plus the bias, `weights[0]`.

        >>> ranker = FTRLRanker(2, FTRLConfig(alpha=1.0))
        >>> _ = ranker.update([[2.0, 1.0]], [1])
        >>> ranker.contributions([2.0, 1.0]).round(3), round(float(ranker.weights[0]), 3)
        (array([0.667, 0.2  ]), 0.2)
        """
        x = np.asarray(row, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"row must have shape ({self.n_features},), got {x.shape}")
        return self.weights[1:] * x

    def update(self, rows: ArrayLike, labels: ArrayLike, predictions: list[float] | None = None) -> float:
        """Learn the rows in order (labels 1 = click, 0 = no click); return the progressive-validation logloss.

        That is the mean over rows of −ln p(y) for the prediction made just before the row's own
        update (what `score` gave for it then); those predictions are appended to `predictions` when
        given (an online AUC is computed from them). An empty batch changes nothing and returns nan.
        The batch is validated before anything is learned, and the new state is kept only if it is finite, so a
        rejected batch (ValueError) leaves the model as it was.
        The state after a row depends only on the rows so far, not on how they were cut into batches.

        >>> ranker, predicted = FTRLRanker(1), []
        >>> round(ranker.update([[1.0], [1.0]], [1, 1], predicted), 4), ranker.n_updates
        (0.6851, 2)
        >>> [round(p, 4) for p in predicted]  # the second row was predicted after the first was learned
        [0.5, 0.5081]
        >>> ranker.update([[1.0]], [2])
        Traceback (most recent call last):
        ...
        ValueError: labels must be 0 or 1
        """
        return update_many([self], [rows], [labels], None if predictions is None else [predictions])[0]

    def to_bytes(self) -> bytes:
        """The state as bytes: a header (magic, version, sizes, config), the prior w₀, z and n, then (standardized)
        the running mean, Σ squared deviations and which coordinates are standardized (0/1), little-endian float64.

        >>> len(FTRLRanker(16).to_bytes())  # 59-byte header + 3 × 17 float64
        467
        >>> len(FTRLRanker(16, FTRLConfig(standardize=True)).to_bytes())  # + 3 × 17
        875
        """
        cfg = self.config
        bias_alpha = cfg.alpha if cfg.bias_alpha is None else cfg.bias_alpha
        header = _HEADER.pack(_MAGIC, _VERSION, self.n_features, self.n_updates, cfg.alpha, cfg.beta, cfg.l1, cfg.l2,
                              bias_alpha, cfg.standardize)  # fmt: skip
        statistics = (self._mean, self._m2, cfg.standardized(self.n_features + 1)) if cfg.standardize else ()
        vectors = (self.prior, self._z, self._n, *statistics)
        return header + b"".join(v.astype("<f8").tobytes() for v in vectors)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> FTRLRanker:
        """The ranker `to_bytes` encoded; ValueError if the bytes are not one (magic, version, length, values).

        >>> FTRLRanker.from_bytes(FTRLRanker(2).to_bytes()[:-1])
        Traceback (most recent call last):
        ...
        ValueError: expected 131 bytes for 2 features, got 130
        """
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ValueError(f"expected at least {_HEADER.size} bytes, got {len(data)}")
        magic, version, n_features, n_updates, alpha, beta, l1, l2, bias_alpha, standardize = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError(f"not an FTRLRanker state: magic {magic!r}, expected {_MAGIC!r}")
        if version not in _READS:
            raise ValueError(f"unsupported FTRLRanker state version {version}, expected one of {_READS}")
        vectors = (6 if version == 4 else 5) if standardize else 3
        expected = _HEADER.size + 8 * vectors * (n_features + 1)
        if len(data) != expected:
            raise ValueError(f"expected {expected} bytes for {n_features} features, got {len(data)}")
        state = np.frombuffer(data, dtype="<f8", offset=_HEADER.size).astype(np.float64)
        state = state.reshape(vectors, n_features + 1)
        if not np.isfinite(state).all() or (state[2] < 0).any() or (standardize and (state[4] < 0).any()):
            raise ValueError("the prior, z, n and the statistics must be finite, n and Σ squared deviations >= 0")
        only: tuple[int, ...] = ()
        if standardize:
            mask = state[5] if version == 4 else np.array([0.0] + [1.0] * n_features)
            if mask[0] != 0.0 or not ((mask == 0.0) | (mask == 1.0)).all() or not mask.any():
                raise ValueError("the standardized mask must be 0 or 1, 0 for the bias, 1 for some feature")
            if state[3:5, mask == 0.0].any():  # `weights` would scale by them and shift the bias: every score changes
                raise ValueError("the running mean and Σ squared deviations must be 0 where the mask is 0 (the bias)")
            only = () if mask[1:].all() else tuple(np.flatnonzero(mask[1:]).tolist())
        prior = tuple(state[0].tolist())
        config = FTRLConfig(alpha=alpha, beta=beta, l1=l1, l2=l2, prior=prior, bias_alpha=bias_alpha,
                            standardize=standardize, standardize_only=only)  # fmt: skip
        ranker = cls(n_features, config)
        ranker._z, ranker._n = state[1].copy(), state[2].copy()
        if standardize:
            ranker._mean, ranker._m2 = state[3].copy(), state[4].copy()
        ranker.n_updates = n_updates
        return ranker

    def _design(self, rows: ArrayLike) -> np.ndarray:
        """Rows as float64 (n_rows, 1 + n_features), a leading column of ones for the bias."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows must have shape (n_rows, {self.n_features}), got {rows.shape}")
        if not (np.abs(rows) <= MAX_ABS_INPUT).all():  # NaN compares False: refused with inf
            raise ValueError(f"rows must be finite and within ±{MAX_ABS_INPUT:g} (MAX_ABS_INPUT)")
        x = np.empty((rows.shape[0], self.n_features + 1))
        x[:, 0] = 1.0
        x[:, 1:] = rows
        return x


def update_many(
    rankers: Sequence[FTRLRanker],
    rows: Sequence[ArrayLike],
    labels: Sequence[ArrayLike],
    predictions: Sequence[list[float]] | None = None,
) -> list[float]:
    """``rankers[k].update(rows[k], labels[k], predictions[k])`` for every k, all or none; each one's logloss.

    A worker's partitions learn a batch together: every batch is validated before anything is learned, and the
    rows run (models/ftrl_step.learn, compiled) on copies of the states, written back only if every ranker's
    logits and state stayed finite; on a ValueError no ranker changed.

    >>> a, b, c = FTRLRanker(1), FTRLRanker(1), FTRLRanker(1)
    >>> losses = update_many([a, b], [[[1.0], [2.0]], [[1.0]]], [[1, 0], [0]])
    >>> _ = c.update([[1.0], [2.0]], [1, 0])
    >>> a.to_bytes() == c.to_bytes(), b.n_updates, [round(x, 4) for x in losses]
    (True, 1, [0.7054, 0.6931])
    """
    from recstream.models.ftrl_step import learn  # numba: imported by the processes that learn, not the reader

    if not len(rankers) == len(rows) == len(labels) == (len(rankers) if predictions is None else len(predictions)):
        raise ValueError("rankers, rows, labels (and predictions) must have one entry per ranker")
    if len({id(r) for r in rankers}) != len(rankers):
        raise ValueError("a ranker can take only one batch per call")
    xs = [ranker._design(x) for ranker, x in zip(rankers, rows, strict=True)]
    ys = [_binary_labels(y, len(x)) for y, x in zip(labels, xs, strict=True)]
    learned = []
    for ranker, x, y in zip(rankers, xs, ys, strict=True):
        cfg, width = ranker.config, ranker.n_features + 1
        state = (ranker._z.copy(), ranker._n.copy(), ranker._mean.copy(), ranker._m2.copy())
        probs, losses = np.empty(len(x)), np.empty(len(x))
        finite = learn(x, np.ascontiguousarray(y), *state, float(ranker.n_updates), cfg.alphas(width),
                       cfg.standardized(width), ranker.prior, cfg.beta, cfg.l1, cfg.l2, LOGIT_CLIP, VAR_FLOOR, probs,
                       losses)  # fmt: skip
        if not (finite and all(np.isfinite(v).all() for v in state)):
            raise ValueError(_NON_FINITE)
        learned.append((state, probs, losses))
    for ranker, ((z, n, mean, m2), probs, _), prediction in zip(
        rankers, learned, predictions or [None] * len(rankers), strict=True
    ):
        ranker._z, ranker._n, ranker._mean, ranker._m2 = z, n, mean, m2
        ranker.n_updates += len(probs)
        if prediction is not None:
            prediction.extend(probs.tolist())
    return [math.fsum(losses.tolist()) / len(losses) if len(losses) else math.nan for _, _, losses in learned]


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC by ranks (Mann–Whitney): (R₊ − n₊(n₊ + 1)/2) / (n₊·n₋), R₊ the rank sum of the positives.

    Tied scores share their average rank, so a tie between a positive and a negative counts 1/2.
    nan when either class is absent (the AUC is undefined).

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auc([0.5, 0.5], [0, 1]), auc([0.2, 0.9], [1, 1])
    (0.5, nan)
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores must not be nan")
    positive = _binary_labels(labels, len(s)) == 1
    n_pos = int(positive.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], len(s))
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)  # 1-based ranks start+1 … end, averaged
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy −(1/N) Σ [y·ln p + (1 − y)·ln(1 − p)], p clipped to [ε, 1 − ε]; nan for no rows.

    >>> round(logloss([0.9, 0.2], [1, 0]), 6)  # −(ln 0.9 + ln 0.8) / 2
    0.164252
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probs must be 1-D, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("probs must be in [0, 1]")
    y = _binary_labels(labels, len(p))
    if len(p) == 0:
        return math.nan
    p = np.clip(p, eps, 1.0 - eps)
    return float(np.mean(np.where(y == 1, -np.log(p), -np.log1p(-p))))


def _neg_den(root_n: np.ndarray, cfg: FTRLConfig) -> np.ndarray:
    """−((β + sqrt(n))/α_i + λ2), computed as (−β − sqrt(n))/α_i − λ2: the same bits, negated exactly."""
    return (-cfg.beta - root_n) / cfg.alphas(root_n.shape[-1]) - cfg.l2


def _scales(m2: np.ndarray, count: int) -> np.ndarray:
    """s = sqrt(M2 / max(count, 1)), 1 where that variance is at most VAR_FLOOR (the bias's M2 is 0: its s is 1)."""
    var = m2 / max(float(count), 1.0)
    return np.where(var <= VAR_FLOOR, 1.0, np.sqrt(var))


def _weights(z: np.ndarray, neg_den: np.ndarray, l1: float, out: np.ndarray) -> np.ndarray:
    """w = (z − clip(z, −λ1, λ1)) / neg_den: 0 where |z| ≤ λ1, else −(z − sgn(z)·λ1) / den, into `out`."""
    if l1 == 0.0:
        return np.divide(z, neg_den, out)
    np.fmax(z, -l1, out=out)
    np.fmin(out, l1, out=out)
    np.subtract(z, out, out)
    return np.divide(out, neg_den, out)


def _binary_labels(labels: ArrayLike, n_rows: int) -> np.ndarray:
    """Labels as a float64 vector of 0s and 1s, one per row."""
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (n_rows,):
        raise ValueError(f"expected {n_rows} labels, got shape {y.shape}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y
