"""Popularity math: smoothed CTR, a quantized global prior, exponentially decayed "trending" counts.

Everything here is a pure function of integer counters and event timestamps, so the stream
workers can recompute any stored value after a crash and get the same float, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike

TREND_FRACTION_BITS = 16
"""Fixed-point resolution of trend increments: an event at its epoch start is worth 2**16 units."""


def smoothed_ctr(clicks: ArrayLike, views: ArrayLike, prior_ctr: ArrayLike, prior_mass: float) -> np.ndarray:
    """Bayesian-smoothed CTR: (clicks + m·p) / (views + m).

    Items with few views are pulled toward the prior `p`; `m` is how many views the prior is
    worth. Vectorized over every argument but `m`. Each step is one correctly rounded IEEE
    operation, so a scalar call and an array call give the same bits for the same counters.

    >>> smoothed_ctr(np.array([0, 5]), np.array([0, 10]), prior_ctr=0.1, prior_mass=10.0)
    array([0.1, 0.3])
    >>> float(smoothed_ctr(3, 10, 0.05, 20.0))
    0.13333333333333333
    """
    if not prior_mass > 0:
        raise ValueError(f"prior_mass must be > 0, got {prior_mass}")
    clicks = np.asarray(clicks, dtype=np.float64)
    views = np.asarray(views, dtype=np.float64)
    return (clicks + prior_mass * np.asarray(prior_ctr, dtype=np.float64)) / (views + prior_mass)


def segment_ctr(
    segment_clicks: ArrayLike,
    segment_views: ArrayLike,
    item_clicks: ArrayLike,
    item_views: ArrayLike,
    global_ctr: float,
    prior_mass: float,
    segment_prior_mass: float | None = None,
) -> np.ndarray:
    """CTR of an item within a segment, smoothed toward the item's global smoothed CTR.

    p_i = (C_i + m·p) / (V_i + m);  ctr_is = (c_is + m_s·p_i) / (v_is + m_s), with m_s = m by
    default. An item unseen in the segment scores its global smoothed CTR, so a segment ranking
    degrades to the global one instead of to the global mean. Note that the segment score then
    depends on the item's global counters: an event on an item changes its score in every segment.

    >>> float(segment_ctr(0, 0, 5, 10, global_ctr=0.1, prior_mass=10.0))
    0.3
    >>> float(segment_ctr(4, 10, 5, 10, global_ctr=0.1, prior_mass=10.0))
    0.35
    """
    item_prior = smoothed_ctr(item_clicks, item_views, global_ctr, prior_mass)
    mass = prior_mass if segment_prior_mass is None else segment_prior_mass
    return smoothed_ctr(segment_clicks, segment_views, item_prior, mass)


def quantize_ctr(p: float, rel_step: float) -> float:
    """Round a CTR to the nearest point of the geometric grid (1 + r)**k, k an integer ≤ 0.

    Why: the stream workers keep smoothed-CTR scores in Redis sorted sets, and every score
    depends on the global CTR `p`, which moves with every event. Rescoring every item on every
    batch is too slow; rescoring only touched items would leave untouched items scored with an
    older `p`, so the ranking would depend on how events were batched, and a worker restarted
    after a crash would not reproduce a clean run. With a quantized prior `q(p)` the rule is:
    rescore every item whenever `q(p)` changes, otherwise rescore only the touched items. Then
    every stored score equals `f(final counters of the item, q(final p))`, whatever the batching. (The workers
    rescore in bounded passes of a batch each, recstream/store/apply_batch.lua step 4: the equality holds once a
    pass has ended.)
    `p` itself must come from integer totals (see `quantized_global_ctr`), never a float sum.

    Determinism: k = floor(ln p / ln(1 + r) + 1/2) is an integer and the grid value
    exp(k·ln(1 + r)) is a pure function of it, so the result is monotone in `p`, the same float
    for the same input, and idempotent (q(q(p)) == q(p)). The relative rounding error is ≤ r/2.
    A global CTR hovering at a grid boundary flips `q` and triggers full rescorings; that costs
    time, never correctness, and there is deliberately no hysteresis (it would depend on history).

    >>> round(quantize_ctr(0.04, 0.005), 6)
    0.040077
    >>> quantize_ctr(quantize_ctr(0.04, 0.005), 0.005) == quantize_ctr(0.04, 0.005)
    True
    >>> quantize_ctr(1.0, 0.005)
    1.0
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    if not rel_step > 0.0:
        raise ValueError(f"rel_step must be > 0, got {rel_step}")
    log_step = math.log1p(rel_step)
    k = math.floor(math.log(p) / log_step + 0.5)
    return math.exp(k * log_step)


def quantized_global_ctr(
    total_clicks: int, total_views: int, *, rel_step: float, default_ctr: float, default_mass: float
) -> float:
    """The prior every CTR score uses: q((C + m0·p0) / (V + m0)) from the integer global totals.

    Smoothing toward a configured `p0` keeps the prior in (0, 1] before the first click, and
    integer totals make it independent of the order events were counted in.

    >>> round(quantized_global_ctr(0, 0, rel_step=0.005, default_ctr=0.05, default_mass=100.0), 6)
    0.049911
    >>> round(quantized_global_ctr(400, 10_000, rel_step=0.005, default_ctr=0.05, default_mass=100.0), 6)
    0.040077
    """
    p = float(smoothed_ctr(total_clicks, total_views, default_ctr, default_mass))
    return quantize_ctr(p, rel_step)


def trend_epochs(ts_ms: ArrayLike, half_life_ms: int, epoch_half_lives: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The two trend epochs (start times, ms) an event at `ts_ms` is added to: (current, previous).

    Decayed counts use the commutative-increment trick: store S = Σ w_j·2^((t_j − t0)/h) against
    a fixed epoch t0; the decayed count at time t is S·2^(−(t − t0)/h) (`trend_value`). Ranking a
    sorted set of S is ranking by decayed count, with no rescoring as time passes. S grows by 2x
    per half-life, so the epoch must move before S loses exactness or overflows.

    Re-basing by rotation instead of rewriting: epochs start at multiples of L = R·h. An event
    is added to the keys of epochs E(t) and E(t) − L, so the key of epoch e holds exactly the
    events with t in [e, e + 2L). At time t read the key of epoch E(t) − L (the second element
    of `trend_epochs(t)`): it holds every event of the last L ms (the events it lacks are older,
    decayed to under 2^−R of their weight), it never grew more than 2R half-lives, and which key
    an event lands in is a function of its own timestamp, so a replay after a crash rebuilds
    identical keys. Keys older than 2L can expire. With the fixed-point increments of
    `trend_increment`, a key stays exact in a double (Redis ZINCRBY) while the decayed count
    D < 2^(53 − F − 2R), i.e. 2^21 by default.

    >>> trend_epochs(np.array([0, 7_999, 8_000, 17_000]), half_life_ms=1_000)
    (array([    0,     0,  8000, 16000]), array([-8000, -8000,     0,  8000]))
    """
    if half_life_ms <= 0 or epoch_half_lives <= 0:
        raise ValueError("half_life_ms and epoch_half_lives must be > 0")
    length = int(half_life_ms) * int(epoch_half_lives)
    current = np.asarray(ts_ms, dtype=np.int64) // length * length
    return current, current - length


def trend_increment(ts_ms: ArrayLike, epoch_ms: ArrayLike, half_life_ms: int, weight: ArrayLike = 1.0) -> np.ndarray:
    """Fixed-point increment of an event to a trend key: round(w·2^(F + (t − t0)/h)), an int64.

    Integers added to a Redis score stay exact below 2^53, so the sum is the same whatever the
    order and grouping of the additions (a float increment would not be: float addition does not
    associate). F = TREND_FRACTION_BITS sets the resolution: 2^−16 of an event at the epoch start.

    >>> trend_increment(np.array([0, 1_000, 2_000]), 0, half_life_ms=1_000)
    array([ 65536, 131072, 262144])
    """
    growth = np.exp2(TREND_FRACTION_BITS + _half_lives_since(epoch_ms, ts_ms, half_life_ms))
    return np.rint(np.asarray(weight, np.float64) * growth).astype(np.int64)


def trend_value(stored: ArrayLike, now_ms: ArrayLike, epoch_ms: ArrayLike, half_life_ms: int) -> np.ndarray:
    """Decayed count at `now_ms` of a stored trend sum: S·2^(−F − (t − t0)/h) = Σ w_j·2^(−(t − t_j)/h).

    >>> float(trend_value(65536 + 131072, now_ms=1_000, epoch_ms=0, half_life_ms=1_000))
    1.5
    """
    decay = np.exp2(-TREND_FRACTION_BITS - _half_lives_since(epoch_ms, now_ms, half_life_ms))
    return np.asarray(stored, np.float64) * decay


def _half_lives_since(epoch_ms: ArrayLike, ts_ms: ArrayLike, half_life_ms: int) -> np.ndarray:
    """(t − t0)/h, with the difference taken in int64 so epoch-ms magnitudes lose no precision."""
    return (np.asarray(ts_ms, np.int64) - np.asarray(epoch_ms, np.int64)) / half_life_ms
