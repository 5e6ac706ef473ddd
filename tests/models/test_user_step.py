from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from recstream.models.user_step import ALSStep
from threadpoolctl import threadpool_limits

K = 16
LAMBDA = 0.1


def _problem(seed: int = 0, n_rows: int = 300, n_histories: int = 40, max_len: int = 30, negative: float = 0.0):
    """Random factors and histories; a ``negative`` share of the entries are negative observations (c < 0)."""
    rng = np.random.default_rng(seed)
    factors = (rng.standard_normal((n_rows, K)) * 0.3).astype(np.float32)
    lengths = rng.integers(1, max_len + 1, n_histories)
    lengths[::7] = 0  # some empty histories
    rows = np.concatenate([rng.choice(n_rows, n, replace=False) for n in lengths])
    indptr = np.r_[0, np.cumsum(lengths)]
    conf = 1.0 + 20.0 * rng.random(len(rows))
    conf[rng.random(len(rows)) < negative] *= -1.0
    return factors, indptr, rows, conf


def _dense_solve(
    fixed: np.ndarray, rows: np.ndarray, conf: np.ndarray, anchor: float = 0.0, prior: np.ndarray | None = None
) -> np.ndarray:
    """x = (FᵀCF + λI + μI)⁻¹ (FᵀC p + μx̄) with C, p dense over all rows: the textbook form, no shortcuts (a
    negative confidence is an observation with p = 0 and confidence |c|; μ = 0: no prior)."""
    f = fixed.astype(np.float64)
    c_full = np.ones(len(f))
    p = np.zeros(len(f))
    c_full[rows] = np.abs(conf)
    p[rows] = conf > 0
    a = f.T @ (c_full[:, None] * f) + (LAMBDA + anchor) * np.eye(f.shape[1])
    return np.linalg.solve(a, f.T @ (c_full * p) + (anchor * prior if anchor else 0.0))


MU = 5.0


def _priors(n: int, seed: int = 8) -> list[np.ndarray | None]:
    """Batch vectors for two users in three; the third is a user the batch fit did not know."""
    vectors = np.random.default_rng(seed).standard_normal((n, K)) * 0.5
    return [vectors[u] if u % 3 else None for u in range(n)]


@pytest.mark.parametrize("negative", [0.0, 0.3])
def test_user_step_matches_implicit_recalculate_user(negative):
    """implicit reads a negative stored value as p = 0 with confidence |c|: so does the step (a dislike)."""
    factors, indptr, rows, conf = _problem(negative=negative)
    model = AlternatingLeastSquares(factors=K, regularization=LAMBDA, alpha=1.0, num_threads=1)
    model.item_factors = factors
    model.user_factors = np.zeros((len(indptr) - 1, K), dtype=np.float32)
    step = ALSStep(factors, LAMBDA)
    for u in range(len(indptr) - 1):
        r, c = rows[indptr[u] : indptr[u + 1]], conf[indptr[u] : indptr[u + 1]]
        user_items = sp.csr_matrix((c.astype(np.float32), r, [0, len(r)]), shape=(1, len(factors)))
        with threadpool_limits(1, "blas"):
            expected = model.recalculate_user(0, user_items)
        np.testing.assert_allclose(step.solve(r, c), expected, atol=1e-4)


@pytest.mark.parametrize("negative", [0.0, 0.3])
def test_item_fold_in_equals_dense_solve(negative):
    # roles swapped: the fixed side is user factors, the history is the users who clicked the item
    user_factors, indptr, rows, conf = _problem(seed=1, negative=negative)
    r, c = rows[indptr[3] : indptr[4]], conf[indptr[3] : indptr[4]]
    assert len(r) > 0
    expected = _dense_solve(user_factors, r, c)
    np.testing.assert_allclose(ALSStep(user_factors, LAMBDA).solve(r, c), expected, rtol=1e-5, atol=1e-6)
    # as a worker does it: the model version's XᵀX, and the clicking users' vectors fetched from elsewhere
    x = user_factors.astype(np.float64)
    from_gram = ALSStep(np.empty((0, K), dtype=np.float32), LAMBDA, gram=x.T @ x)
    np.testing.assert_allclose(from_gram.solve_vectors(user_factors[r], c), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_len", [30, 3 * K])  # shorter than k (dual solve) and longer (primal)
@pytest.mark.parametrize("negative", [0.0, 0.3])
def test_batched_path_equals_single_path(max_len, negative):
    factors, indptr, rows, conf = _problem(seed=2, max_len=max_len, negative=negative)
    step = ALSStep(factors, LAMBDA)
    batched = step.solve_batch(indptr, rows, conf)
    spans = [slice(indptr[u], indptr[u + 1]) for u in range(len(batched))]
    single = np.stack([step.solve(rows[s], conf[s]) for s in spans])
    np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("max_len", [30, 3 * K])
@pytest.mark.parametrize("anchored", [False, True])
def test_a_users_vector_is_bit_identical_whoever_shares_its_batch(max_len, anchored):
    """What lets the worker solve a batch's users together: a restarted worker cuts other batches, and each user
    must still get the bits a clean run stored. Random compositions: subsets, repeats, one user alone, all; anchored:
    two users in three with a batch vector."""
    factors, indptr, rows, conf = _problem(seed=6, n_histories=60, max_len=max_len, negative=0.2)
    step = ALSStep(factors, LAMBDA, anchor=MU if anchored else 0.0)
    spans = [slice(indptr[u], indptr[u + 1]) for u in range(len(indptr) - 1)]
    priors = _priors(len(spans)) if anchored else [None] * len(spans)
    alone = np.stack([step.solve_batch(np.array([0, s.stop - s.start]), rows[s], conf[s], [priors[u]])[0]
                      for u, s in enumerate(spans)])  # fmt: skip
    if not anchored:
        np.testing.assert_array_equal(alone, np.stack([step.solve(rows[s], conf[s]) for s in spans]))
    rng = np.random.default_rng(7)
    compositions = [[u] for u in range(len(spans))] + [list(range(len(spans)))]
    compositions += [rng.choice(len(spans), size=rng.integers(2, 3 * len(spans)), replace=True) for _ in range(30)]
    for users in compositions:
        lengths = [spans[u].stop - spans[u].start for u in users]
        batch = step.solve_batch(
            np.r_[0, np.cumsum(lengths)],
            np.concatenate([rows[spans[u]] for u in users]),
            np.concatenate([conf[spans[u]] for u in users]),
            [priors[u] for u in users],
        )
        np.testing.assert_array_equal(batch, alone[users])


@pytest.mark.parametrize("max_len", [30, 3 * K])
@pytest.mark.parametrize("negative", [0.0, 0.3])
def test_the_anchored_step_is_the_ridge_pulled_toward_the_batch_vector(max_len, negative):
    """x = (A + μI)⁻¹(b + μx̄) for a user with a batch vector, to float precision; a user without one gets the
    unanchored step's very bits, and so does everyone when μ is 0."""
    factors, indptr, rows, conf = _problem(seed=9, max_len=max_len, negative=negative)
    priors = _priors(len(indptr) - 1)
    plain = ALSStep(factors, LAMBDA).solve_batch(indptr, rows, conf)
    pulled = ALSStep(factors, LAMBDA, anchor=MU).solve_batch(indptr, rows, conf, priors)
    np.testing.assert_array_equal(ALSStep(factors, LAMBDA, anchor=0.0).solve_batch(indptr, rows, conf, priors), plain)
    moved = 0
    for u, prior in enumerate(priors):
        r, c = rows[indptr[u] : indptr[u + 1]], conf[indptr[u] : indptr[u + 1]]
        if prior is None or not len(r):  # no batch vector, or no history (the zero vector, prior or not)
            np.testing.assert_array_equal(pulled[u], plain[u])
            continue
        np.testing.assert_allclose(pulled[u], _dense_solve(factors, r, c, MU, prior), rtol=1e-5, atol=1e-6)
        moved += not np.allclose(pulled[u], plain[u], atol=1e-3)
    assert moved >= len(priors) // 2  # the prior changed the known users' vectors


def test_a_strong_anchor_holds_the_vector_at_the_batch_one_and_a_weak_one_leaves_the_history_s():
    factors, indptr, rows, conf = _problem(seed=10, max_len=20)
    priors = [np.full(K, 0.25)] * (len(indptr) - 1)
    plain = ALSStep(factors, LAMBDA).solve_batch(indptr, rows, conf)
    strong = ALSStep(factors, LAMBDA, anchor=1e6).solve_batch(indptr, rows, conf, priors)
    weak = ALSStep(factors, LAMBDA, anchor=1e-9).solve_batch(indptr, rows, conf, priors)
    has_history = np.diff(indptr) > 0
    np.testing.assert_allclose(strong[has_history], 0.25, atol=1e-3)
    np.testing.assert_allclose(weak, plain, atol=1e-6)


@pytest.mark.parametrize(
    ("priors", "problem"),
    [
        ([np.zeros(K)], "expected 2 priors, got 1"),
        ([np.zeros(K), np.zeros(K - 1)], f"priors must be finite vectors of {K} values"),
        ([np.zeros(K), np.full(K, np.nan)], f"priors must be finite vectors of {K} values"),
    ],
)
def test_priors_of_another_count_size_or_not_finite_are_refused(priors, problem):
    step = ALSStep(np.eye(K, dtype=np.float32), LAMBDA, anchor=MU)
    with pytest.raises(ValueError, match=problem):
        step.solve_batch(np.array([0, 1, 2]), np.array([0, 1]), np.array([2.0, 2.0]), priors)


@pytest.mark.parametrize("anchor", [-1e-9, np.nan, np.inf])
def test_an_anchor_that_is_negative_or_not_finite_is_refused(anchor):
    with pytest.raises(ValueError, match="anchor must be finite and >= 0"):
        ALSStep(np.eye(K, dtype=np.float32), LAMBDA, anchor=anchor)


def test_empty_history_gives_zero_vector():
    step = ALSStep(np.ones((4, K), dtype=np.float32), LAMBDA)
    assert not step.solve(np.array([], dtype=int), np.array([])).any()
    assert not step.solve_batch(np.array([0, 0]), np.array([], dtype=int), np.array([])).any()


def test_appended_rows_join_histories_but_not_the_gram_matrix():
    factors, _, _, _ = _problem(seed=3)
    step = ALSStep(factors, LAMBDA)
    gram = step.gram.copy()
    new_vectors = np.random.default_rng(4).standard_normal((1000, K)).astype(np.float32)  # forces growth
    new_rows = step.append(new_vectors)
    assert new_rows[0] == len(factors) and len(step) == len(factors) + 1000
    np.testing.assert_array_equal(step.gram, gram)
    hist, conf = np.array([new_rows[5], 7]), np.array([4.0, 2.0])
    v = step.factors[hist].astype(np.float64)
    expected = np.linalg.solve(gram + v.T @ ((conf - 1)[:, None] * v), v.T @ conf)
    np.testing.assert_allclose(step.solve(hist, conf), expected, rtol=1e-5, atol=1e-6)
    batched = step.solve_batch(np.array([0, 2]), hist, conf)[0]
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-6)


def test_update_overwrites_a_row():
    step = ALSStep(np.zeros((3, K), dtype=np.float32), LAMBDA)
    step.update(np.array([1]), np.ones((1, K)))
    assert step.factors[1].sum() == K and not step.factors[[0, 2]].any()
    with pytest.raises(IndexError):
        step.update(np.array([3]), np.ones((1, K)))


@pytest.mark.parametrize(("c", "valid"), [(-1.5, True), (-1.0, True), (-0.5, False), (0.5, False), (1.0, True)])
def test_a_confidence_between_minus_one_and_one_is_rejected(c, valid):
    step = ALSStep(np.ones((3, K), dtype=np.float32), LAMBDA)
    if valid:
        assert step.solve(np.array([0]), np.array([c])).shape == (K,)
    else:
        with pytest.raises(ValueError, match=">= 1 or <= -1"):
            step.solve(np.array([0]), np.array([c]))


@pytest.mark.parametrize("c", [np.nan, np.inf, -np.inf])
def test_a_confidence_that_is_not_finite_is_rejected(c):
    """NaN fails every comparison, so the range check alone let it through and returned a NaN vector."""
    step = ALSStep(np.ones((3, K), dtype=np.float32), LAMBDA)
    for solve in (
        lambda: step.solve(np.array([0, 1]), np.array([2.0, c])),
        lambda: step.solve_vectors(np.ones((2, K)), np.array([2.0, c])),
        lambda: step.solve_batch(np.array([0, 1, 2]), np.array([0, 1]), np.array([2.0, c])),
    ):
        with pytest.raises(ValueError, match="finite"):
            solve()


@pytest.mark.parametrize(("row", "valid"), [(-1, False), (0, True), (2, True), (3, False)])
def test_solve_and_solve_batch_refuse_the_same_rows(row, valid):
    """A negative row used to wrap around to the last rows in `solve` while `solve_batch` refused it."""
    step = ALSStep(np.arange(3 * K, dtype=np.float32).reshape(3, K), LAMBDA)
    rows, conf = np.array([row]), np.array([3.0])
    if valid:
        np.testing.assert_array_equal(step.solve(rows, conf), step.solve_batch(np.array([0, 1]), rows, conf)[0])
    else:
        for solve in (lambda: step.solve(rows, conf), lambda: step.solve_batch(np.array([0, 1]), rows, conf)):
            with pytest.raises(IndexError, match=r"rows outside \[0, 3\)"):
                solve()


def test_a_negative_observation_pulls_the_score_toward_zero_harder_than_an_unseen_item():
    """c = −1 is an unseen item (p 0, confidence 1): the same vector; a surer dislike shrinks the item's score more."""
    factors, _, _, _ = _problem(seed=5)
    step = ALSStep(factors, LAMBDA)
    liked = np.array([0, 1, 2])
    unseen = step.solve(liked, np.full(3, 5.0))
    neighbour = 3 + int(np.argmax(factors[3:] @ unseen))
    scores = [
        factors[neighbour] @ step.solve(np.r_[liked, neighbour], np.r_[np.full(3, 5.0), c]) for c in (-1, -5, -50)
    ]
    assert scores[0] == pytest.approx(factors[neighbour] @ unseen, abs=1e-6)
    assert scores[0] > scores[1] > scores[2] > -0.1 * scores[0] and scores[2] < 0.5 * scores[0]


def test_a_step_with_another_anchor_keeps_the_gram_matrix_its_appended_rows_stay_outside():
    """bench/validate.py scores each anchor on one trained model: the copy must solve what a worker holding the version
    trained with that anchor solves (FᵀF of the trained rows, new items' content vectors appended outside it)."""
    factors, indptr, rows, conf = _problem(seed=11)
    appended = np.random.default_rng(12).standard_normal((40, K)).astype(np.float32)
    plain = ALSStep(factors, LAMBDA)
    plain.append(appended)
    worker = ALSStep(factors, LAMBDA, anchor=MU)
    worker.append(appended)
    copied = plain.with_anchor(MU)
    rows = np.where(np.arange(len(rows)) % 3 == 0, len(factors) + rows % 40, rows)  # some history on appended rows
    priors = _priors(len(indptr) - 1)
    np.testing.assert_array_equal(copied.solve_batch(indptr, rows, conf, priors),
                                  worker.solve_batch(indptr, rows, conf, priors))  # fmt: skip
    copied.append(appended[:1])
    assert len(plain) == len(factors) + 40, "the copy's rows are its own"
