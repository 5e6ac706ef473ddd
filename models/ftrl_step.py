"""FTRL-Proximal's row loop, compiled: the part of models/ranker.py that runs once per training row.

Why compiled: a row's step is a dozen operations on a vector of about a dozen coordinates, and the rows
must be applied one after another (each prediction uses the weights the rows before it left), so in numpy
the per-call overhead was the whole cost: ~4 µs a row, a sixth of a worker's time per event with ranker
training. Compiled, the loop costs a fraction of a microsecond a row. numba compiles it without fastmath:
every operation is the IEEE one, in the order written, so the state stays a pure function of the rows.

Only processes that learn import this module (models/ranker.update_many imports it when called): the reader
scores with the weights and does not pay numba's import (~80 MB resident, ~0.3 s). The machine code is cached
on disk (``cache=True``: next to this file, or in numba's per-user cache where that is not writable).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SIGNATURE = "b1(f8[:, ::1], f8[::1], f8[::1], f8[::1], f8[::1], f8[::1], f8, f8[::1], f8[::1], f8[::1], f8, f8, f8, f8, f8, f8[::1], f8[::1])"  # noqa: E501


@numba.njit(_SIGNATURE, cache=True, nogil=True)
def learn(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    learned: float,
    alphas: np.ndarray,
    standardized: np.ndarray,
    prior: np.ndarray,
    beta: float,
    l1: float,
    l2: float,
    logit_clip: float,
    var_floor: float,
    probs: np.ndarray,
    losses: np.ndarray,
) -> bool:
    """Learn the rows ``x`` (column 0 the bias's 1s) with labels ``y``, in order, updating z, n and the running
    statistics (mean, m2) in place; each row's prediction made before it was learned goes to ``probs``, its loss
    −ln p(y) to ``losses``. ``learned`` is how many rows the statistics hold already. False, and the state half
    updated, when a row's logit is not finite (weights near the float range's end): the caller refuses the batch.

    Per row (the formulas of models/ranker.FTRLRanker): x̃_i = (x_i − μ_i)/s_i where ``standardized``, else x_i;
    w_i = (z_i − clip(z_i, ±λ1)) / −((β + √n_i)/α_i + λ2); p = σ(clip((w₀ + w)·x̃, ±logit_clip));
    g_i = (p − y)·x̃_i; z_i += g_i − (√(n_i + g_i²) − √n_i)/α_i · w_i; n_i += g_i²; then Welford's recurrence on
    the raw standardized features: d = x − μ, μ += d/k, M2 += d·(x − μ).
    """
    width = x.shape[1]
    xt = np.empty(width)
    w = np.empty(width)
    for t in range(x.shape[0]):
        counted = learned + t  # rows in the statistics before this one
        floor = max(counted, 1.0)
        s = 0.0
        for i in range(width):
            xi = x[t, i]
            if standardized[i] != 0.0:
                var = m2[i] / floor
                xi = (xi - mean[i]) / (math.sqrt(var) if var > var_floor else 1.0)
            xt[i] = xi
            zi = z[i]
            numerator = zi if l1 == 0.0 else zi - min(max(zi, -l1), l1)
            w[i] = numerator / ((-beta - math.sqrt(n[i])) / alphas[i] - l2)
            s += (w[i] + prior[i]) * xi
        if not math.isfinite(s):
            return False
        s = min(max(s, -logit_clip), logit_clip)
        p = 1.0 / (1.0 + math.exp(-s))
        probs[t] = p
        losses[t] = math.log1p(math.exp(-s)) if y[t] == 1.0 else math.log1p(math.exp(s))
        residual = p - y[t]
        for i in range(width):
            g = residual * xt[i]
            grown = n[i] + g * g
            z[i] += g - (math.sqrt(grown) - math.sqrt(n[i])) / alphas[i] * w[i]
            n[i] = grown
        for i in range(width):
            if standardized[i] != 0.0:
                d = x[t, i] - mean[i]
                mean[i] += d / (counted + 1.0)
                m2[i] += d * (x[t, i] - mean[i])
    return True
