"""One half of an ALS sweep with the other side fixed: the online user step and item fold-in.

With fixed factors F (item factors Y for a user step, user factors X for an item fold-in):

    x = (FᵀF + λI + Σ_j (|c_j| − 1) f_j f_jᵀ)⁻¹ Σ_j p_j |c_j| f_j        (Hu, Koren, Volinsky 2008)

over the rows j the user (item) interacted with, `c_j = confidence(r_j)`, |c_j| ≥ 1, signed as
implicit stores it: c_j > 0 is an observation with preference p_j = 1, c_j < 0 a negative one
(a dislike) with p_j = 0, which only adds to the left side and so pulls x·f_j toward 0 with
weight |c_j| instead of the 1 of an unseen item. `FᵀF + λI` is computed once per model version;
each step only adds the rank-|history| correction.

Dtypes: F is stored float32 (the artifact's and the HNSW index's dtype; half the memory
of float64), the k×k system is built and solved in float64, results are float32. The
system's condition number grows like ‖F‖²/λ, so a float32 Cholesky can lose 3–4 digits
with a small λ. float32 arithmetic measured ~20% faster in the batched build; we keep
float64 so results do not depend on λ's conditioning (they agree with implicit's float32
solve to ~1e-6 on the benchmark data).

Rows appended after training (new items with content vectors) are used in the
history sum but do **not** enter `FᵀF`: it stays the model version's. Every user vector
computed between two hot swaps is then the same function of its history, so a replayed
or restarted worker reproduces its vectors exactly, old and new vectors stay comparable,
and a wave of new items with near-default vectors does not bias every user's negative
term toward them. The next batch retrain brings them into the Gram matrix.

The anchored step (a user the batch fit knew, its vector x̄ in the model version): the history's loss
plus λ‖x‖² + μ‖x − x̄‖², so

    x = (A + μI)⁻¹ (b + μx̄)        A, b the system above

Why: the online step sees the user's capped recent history (a cap keeps each step cheap and follows a
drifting taste), the batch fit saw all of it. Where the order says little (a user's long history
shuffled, a stable catalogue) the items past the cap still tell who the user is; μ keeps them in
through x̄ without storing them. bench/validate.py chose μ with λ, α and the cap.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve


class ALSStep:
    """Exact least-squares step for one side given fixed factors of the other side.

    >>> step = ALSStep(np.eye(3, dtype=np.float32), regularization=1.0)
    >>> step.solve(np.array([0]), np.array([3.0]))   # (I + I + 2·e0e0ᵀ) x = 3·e0
    array([0.75, 0.  , 0.  ], dtype=float32)
    >>> step.solve(np.array([0, 1]), np.array([3.0, -3.0]))   # a negative on e1: x·e1 stays 0, e0 as before
    array([0.75, 0.  , 0.  ], dtype=float32)
    >>> step.solve(np.array([], dtype=int), np.array([]))   # empty history: zero vector
    array([0., 0., 0.], dtype=float32)
    >>> pulled = ALSStep(np.eye(3, dtype=np.float32), regularization=1.0, anchor=2.0)
    >>> prior = np.array([0.0, 0.0, 1.5])
    >>> pulled.solve_batch(np.array([0, 1]), np.array([0]), np.array([3.0]), [prior])  # (4I + 2·e0e0ᵀ) x = 3·e0 + 2·x̄
    array([[0.5 , 0.  , 0.75]], dtype=float32)
    """

    def __init__(
        self, factors: np.ndarray, regularization: float, gram: np.ndarray | None = None, anchor: float = 0.0
    ) -> None:
        """`gram` is FᵀF (without λ) for when F is not at hand, as for the item fold-in, whose
        fixed side is users (their vectors live elsewhere; the model version keeps XᵀX):
        then pass `factors` with zero rows and call `solve_vectors`. `anchor` is μ of the anchored step
        (:meth:`solve_batch`'s priors; 0: priors are ignored).
        """
        if factors.ndim != 2:
            raise ValueError("factors must be a 2-D (rows, k) array")
        if regularization <= 0:
            raise ValueError("regularization must be > 0 (keeps the system positive definite)")
        k = factors.shape[1]
        self._buffer = np.array(factors, dtype=np.float32, order="C")
        self._size = factors.shape[0]
        if gram is None:
            f64 = self._buffer.astype(np.float64)
            gram = f64.T @ f64
        elif gram.shape != (k, k):
            raise ValueError(f"gram must be ({k}, {k}), got {gram.shape}")
        self.gram = gram + regularization * np.eye(k)  # FᵀF + λI of this model version
        self._gram_inv = cho_solve(cho_factor(self.gram), np.eye(k))
        self.regularization = regularization
        self._set_anchor(anchor)

    def _set_anchor(self, anchor: float) -> None:
        if not (np.isfinite(anchor) and anchor >= 0):
            raise ValueError("anchor must be finite and >= 0")
        self.anchor = anchor
        self._anchored_gram = self._anchored_gram_inv = None  # the anchored step's system, only when μ > 0
        if anchor > 0:
            self._anchored_gram = self.gram + anchor * np.eye(self.dim)  # FᵀF + (λ + μ)I
            self._anchored_gram_inv = cho_solve(cho_factor(self._anchored_gram), np.eye(self.dim))

    def with_anchor(self, anchor: float) -> ALSStep:
        """A copy of this step (its rows, and its Gram matrix, which rows appended since stay outside) with another
        anchor μ: what a worker would hold had the version been trained with it.

        >>> step = ALSStep(np.eye(3, dtype=np.float32), regularization=1.0)
        >>> _ = step.append(np.ones((1, 3)))
        >>> pulled = step.with_anchor(2.0)
        >>> len(pulled), bool((pulled.gram == step.gram).all()), pulled.anchor, step.anchor
        (4, True, 2.0, 0.0)
        """
        step = copy.copy(self)
        step._buffer = self._buffer.copy()
        step._set_anchor(anchor)
        return step

    @property
    def factors(self) -> np.ndarray:
        """The current rows, a view: it stops tracking this object after the next append grows it."""
        return self._buffer[: self._size]

    @property
    def dim(self) -> int:
        return self._buffer.shape[1]

    def __len__(self) -> int:
        return self._size

    def append(self, vectors: np.ndarray) -> np.ndarray:
        """Add rows (e.g. new items' content vectors); returns their row indices. Gram unchanged."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns, got {vectors.shape[1]}")
        needed = self._size + vectors.shape[0]
        if needed > self._buffer.shape[0]:  # geometric growth: amortised O(1) per appended row
            grown = np.empty((max(needed, 2 * self._buffer.shape[0], 16), self.dim), dtype=np.float32)
            grown[: self._size] = self.factors
            self._buffer = grown
        self._buffer[self._size : needed] = vectors
        rows = np.arange(self._size, needed)
        self._size = needed
        return rows

    def update(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite existing rows (e.g. a new item re-folded-in from its first users). Gram unchanged."""
        self._buffer[self._checked_rows(rows)] = vectors

    def solve(self, rows: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        """x for a history given as row indices into `factors` and their confidences."""
        return self.solve_vectors(self.factors[self._checked_rows(rows)], confidences)

    def solve_vectors(self, vectors: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        """x for a history given as the fixed-side vectors themselves (pseudo-items allowed): :meth:`solve_batch`'s
        calls on a stack of one."""
        c = _checked_confidences(confidences, len(vectors))
        if c.size == 0:
            return np.zeros(self.dim, dtype=np.float32)
        return self._solve_stacked(np.asarray(vectors, dtype=np.float64)[None], c[None])[0].astype(np.float32)

    def solve_batch(
        self,
        indptr: np.ndarray,
        rows: np.ndarray,
        confidences: np.ndarray,
        priors: Sequence[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """x for many histories in CSR layout: history u is rows[indptr[u]:indptr[u+1]]; with ``priors[u]``
        (not None, and ``anchor`` > 0) the anchored step toward that vector.

        Histories of one length (and kind, anchored or not) are stacked into a (B, L, k) array and solved together,
        each by the same BLAS and LAPACK calls as a batch of it alone (:meth:`solve`'s, unanchored): numpy's stacked
        matmul and ``linalg.solve`` loop over the stack, one call per matrix, and a matrix's shape is its own
        history's. So a user's x is bit-identical whichever other histories share the batch, and a restarted worker
        (other batches) reproduces a clean run's vectors (tests/models/test_user_step.py checks varied compositions).
        An empty history gets the zero vector, as in `solve`, prior or not: x̄ refines what a history says, and a
        user without one has no list to refine.
        """
        indptr = np.asarray(indptr, dtype=np.intp)
        rows = self._checked_rows(rows)
        c = _checked_confidences(confidences, len(rows))
        if indptr.ndim != 1 or indptr[0] != 0 or indptr[-1] != len(rows) or np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must rise from 0 to len(rows)")
        lengths = np.diff(indptr)
        if priors is not None and len(priors) != len(lengths):
            raise ValueError(f"expected {len(lengths)} priors, got {len(priors)}")
        pulled = np.zeros(len(lengths), dtype=bool)
        if priors is not None and self.anchor > 0:
            pulled = np.fromiter((p is not None for p in priors), dtype=bool, count=len(lengths))
        out = np.zeros((len(lengths), self.dim), dtype=np.float32)
        factors = self.factors
        for length in np.unique(lengths[lengths > 0]).tolist():
            for anchored in (False, True):
                users = np.flatnonzero((lengths == length) & (pulled == anchored))
                if not users.size:
                    continue
                slots = indptr[users, None] + np.arange(length)
                v = np.take(factors, rows[slots], axis=0).astype(np.float64)
                pulled_toward = self._checked_priors([priors[u] for u in users]) if anchored else None
                out[users] = self._solve_stacked(v, c[slots], pulled_toward)
        return out

    def _checked_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows as np.intp, IndexError unless each is in [0, len(self)): numpy would wrap a negative one silently."""
        rows = np.asarray(rows, dtype=np.intp)
        if rows.size and (rows.min() < 0 or rows.max() >= self._size):
            raise IndexError(f"rows outside [0, {self._size})")
        return rows

    def _checked_priors(self, priors: list[np.ndarray]) -> np.ndarray:
        """The priors as a (B, k) float64 array; ValueError unless each is a finite k-vector."""
        if all(np.shape(prior) == (self.dim,) for prior in priors):
            x = np.asarray(priors, dtype=np.float64)
            if np.isfinite(x).all():
                return x
        raise ValueError(f"priors must be finite vectors of {self.dim} values")

    def _solve_stacked(self, v: np.ndarray, c: np.ndarray, priors: np.ndarray | None = None) -> np.ndarray:
        """Solve B stacked (L, k) histories of one length L, through whichever system is smaller; with ``priors``
        (B, k), the anchored step.

        For L <= k the dual (L×L) form: with G = FᵀF + λI, W = diag(c − 1), Z = V G⁻¹ and
        M = Z Vᵀ, (G + VᵀWV) G⁻¹Vᵀ = Vᵀ (I + W M), so x = A⁻¹Vᵀc = Zᵀ (I + W M)⁻¹ c
        (I + WM is invertible: WM's eigenvalues are those of W½MW½ ⪰ 0): the solve is L×L
        instead of k×k. Longer histories use the primal k×k system. With signed c, W = diag(|c| − 1)
        and the right side is p∘|c|. Anchored, G = FᵀF + (λ + μ)I and the right side gains μx̄; by Woodbury
        x = h + Zᵀ (I + W M)⁻¹ (c − W V h) with h = μ G⁻¹x̄ (h = 0 is the plain form): the same L×L solve.
        """
        width, k = v.shape[1:]
        gram, gram_inv = (
            (self.gram, self._gram_inv) if priors is None else (self._anchored_gram, self._anchored_gram_inv)
        )
        if width > k:
            a, b = self._normal_equations(v, c, gram)
            if priors is not None:
                b += self.anchor * priors
            return np.linalg.solve(a, b[..., None])[..., 0]
        z = v @ gram_inv
        s = z @ np.swapaxes(v, -1, -2)
        w = np.maximum(np.abs(c) - 1.0, 0.0)
        s *= w[..., None]
        s += np.eye(width)
        rhs = np.maximum(c, 0.0)[..., None]
        if priors is None:
            return (np.swapaxes(z, -1, -2) @ np.linalg.solve(s, rhs))[..., 0]
        h = (self.anchor * priors)[:, None, :] @ gram_inv  # (B, 1, k): h = μ G⁻¹x̄, G symmetric
        rhs -= w[..., None] * (v @ np.swapaxes(h, -1, -2))
        return h[:, 0, :] + (np.swapaxes(z, -1, -2) @ np.linalg.solve(s, rhs))[..., 0]

    def _normal_equations(self, vectors: np.ndarray, c: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A = gram + Vᵀ diag(|c| − 1) V and b = Vᵀ (p∘|c|), for (n, k) or stacked (B, n, k) V; gram is FᵀF + λI
        (or + (λ + μ)I for the anchored step)."""
        vt = np.swapaxes(vectors, -1, -2)
        a = (vt * np.maximum(np.abs(c) - 1.0, 0.0)[..., None, :]) @ vectors + gram
        b = (vt @ np.maximum(c, 0.0)[..., None])[..., 0]
        return a, b


def _checked_confidences(confidences: np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(confidences, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError(f"expected {n} confidences, got shape {c.shape}")
    if not (np.isfinite(c) & (np.abs(c) >= 1.0)).all():
        raise ValueError("confidences must be finite and >= 1 or <= -1 (c = ±(1 + α·|r|))")
    return c
