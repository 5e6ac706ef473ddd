from __future__ import annotations

import warnings

import implicit.utils
import numpy as np
import pydantic
import pytest
from recstream.models.als import (
    MAX_ALPHA,
    MAX_REGULARIZATION,
    ALSConfig,
    FitError,
    confidence,
    event_weights,
    history_confidence,
    interaction_matrix,
    train_als,
)
from recstream.models.user_step import ALSStep
from threadpoolctl import threadpool_limits

from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackType, FeedbackTypes


def _events(seed: int = 0, n_users: int = 60, n_items: int = 40, n_events: int = 900):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = (users + rng.integers(0, 8, n_events)) % n_items  # a banded taste structure
    clicks = rng.random(n_events) < 0.3
    return users, items, clicks, n_users, n_items


def _weights(clicks: np.ndarray, feedback: FeedbackTypes = DEFAULT_FEEDBACK) -> np.ndarray:
    return event_weights(["click" if c else "view" for c in clicks], [None] * len(clicks), feedback)


def test_interaction_matrix_sums_weights_and_drops_zeros():
    feedback = FeedbackTypes(
        {
            "view": FeedbackType(role="impression", weight=0.0, ctr=True),
            "click": FeedbackType(role="positive", weight=2.0, ctr=True),
        }
    )
    users, items = np.array([0, 0, 1, 1]), np.array([3, 3, 1, 2])
    r = interaction_matrix(users, items, _weights(np.array([True, True, False, True]), feedback), 2, 4)
    assert r.format == "csr" and r.dtype == np.float32
    # (1, 1) had only a zero-weight view: no entry, or implicit would count it as a positive
    assert r.nnz == 2
    assert r[0, 3] == 4.0 and r[1, 2] == 2.0


@pytest.mark.parametrize(
    ("users", "items", "weights", "says"),
    [
        ([0], [5], [1.0], "item_idx outside"),
        ([0], [-1], [1.0], "item_idx outside"),
        ([2], [0], [1.0], "user_idx outside"),
        ([0], [0], [np.nan], "must be finite"),
        ([0, 1], [0], [1.0], "same length"),
    ],
)
def test_interaction_matrix_rejects_bad_input(users, items, weights, says):
    with pytest.raises(ValueError, match=says):
        interaction_matrix(np.array(users), np.array(items), np.array(weights), 2, 5)


def test_interaction_matrix_takes_the_last_user_and_item():
    assert interaction_matrix(np.array([1]), np.array([4]), np.array([1.0]), 2, 5)[1, 4] == 1.0


def test_confidence_log_scale_compresses_heavy_users():
    r = np.array([1.0, 100.0])
    linear = confidence(r, ALSConfig(alpha=1.0))
    logged = confidence(r, ALSConfig(alpha=1.0, log_scale=True, log_epsilon=1.0))
    np.testing.assert_allclose(linear, [2.0, 101.0])
    np.testing.assert_allclose(logged, 1.0 + np.log1p(r))


@pytest.mark.parametrize(
    "bad",
    [
        {"regularization": 0.0},
        {"factors": 0},
        {"alpha": -1.0},
        {"unknown": 1},
        {"regularization": float("inf")},  # train --regularization inf was accepted
        {"alpha": float("inf")},
        {"alpha": float("nan")},
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(pydantic.ValidationError):
        ALSConfig(**bad)


def test_trained_user_factors_are_the_exact_step_under_our_confidence():
    """After convergence each user vector is the exact user step with c = 1 + α·r.

    This fails if implicit were handed raw weights (it would use c = α·r) or applied α twice.
    """
    users, items, clicks, n_users, n_items = _events()
    cfg = ALSConfig(factors=8, regularization=0.5, alpha=3.0, iterations=200, random_state=1, num_threads=1)
    r = interaction_matrix(users, items, _weights(clicks), n_users, n_items)
    fit = train_als(r, cfg)
    step = ALSStep(fit.item_factors, cfg.regularization)
    for u in range(n_users):
        row = r.getrow(u)
        np.testing.assert_allclose(step.solve(row.indices, confidence(row.data, cfg)), fit.user_factors[u], atol=1e-3)


def test_a_dislike_is_the_same_negative_observation_in_implicit_and_in_the_user_step():
    """Signed r (a dislike: p = 0, c = 1 + α·|r|) means one thing to implicit's fit and to our exact step: after
    convergence every user vector, disliked items included, is the step over the user's signed confidences."""
    users, items, clicks, n_users, n_items = _events(seed=4)
    types = np.where(clicks, "click", "view").astype(object)
    types[np.random.default_rng(4).random(len(types)) < 0.15] = "dislike"
    cfg = ALSConfig(factors=8, regularization=0.5, alpha=3.0, iterations=500, random_state=1, num_threads=1)
    r = interaction_matrix(
        users, items, event_weights(list(types), [None] * len(types), DEFAULT_FEEDBACK), n_users, n_items
    )
    assert (r.data < 0).sum() > 20, "the test needs negative pairs"
    fit = train_als(r, cfg)
    step = ALSStep(fit.item_factors, cfg.regularization)
    for u in range(n_users):
        row = r.getrow(u)
        np.testing.assert_allclose(step.solve(row.indices, confidence(row.data, cfg)), fit.user_factors[u], atol=1e-3)
    disliked = r.toarray() < 0
    scores = fit.user_factors @ fit.item_factors.T
    assert np.abs(scores[disliked]).mean() < np.abs(scores[r.toarray() == 0]).mean(), "pulled toward 0 harder"


def test_event_weights_scale_a_rating_by_its_value_and_negate_a_dislike():
    weights = event_weights(["view", "click", "rating", "rating", "dislike", "purchase"],
                            [None, None, 1.0, 5.0, None, None], DEFAULT_FEEDBACK)  # fmt: skip
    np.testing.assert_array_equal(weights, [1.0, 4.0, 1.0, 5.0, -4.0, 12.0])


def test_a_negative_pair_keeps_only_its_negatives_in_any_order():
    users, items = np.zeros(4, dtype=int), np.zeros(4, dtype=int)
    for weights in ([1.0, 4.0, -4.0, -2.0], [-4.0, 1.0, -2.0, 4.0]):
        assert interaction_matrix(users, items, np.array(weights), 1, 1).toarray()[0, 0] == -6.0


def test_train_report_and_dtypes():
    users, items, clicks, n_users, n_items = _events(seed=2)
    cfg = ALSConfig(factors=4, iterations=2, num_threads=1)
    r = interaction_matrix(users, items, _weights(clicks), n_users, n_items)
    fit = train_als(r, cfg)
    assert fit.item_factors.shape == (n_items, 4) and fit.item_factors.dtype == np.float32
    assert fit.user_factors.shape == (n_users, 4) and fit.user_factors.dtype == np.float32
    assert (fit.report.users, fit.report.items, fit.report.nnz) == (n_users, n_items, r.nnz)
    assert fit.report.seconds > 0 and np.isfinite(fit.report.loss) and fit.report.loss > 0
    np.testing.assert_allclose(fit.user_gram, fit.user_factors.T.astype(np.float64) @ fit.user_factors, rtol=1e-5)


def test_training_silences_the_openblas_threads_trap(monkeypatch):
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    users, items, clicks, n_users, n_items = _events(seed=3)
    cfg = ALSConfig(factors=4, iterations=1, num_threads=1)
    r = interaction_matrix(users, items, _weights(clicks), n_users, n_items)
    with threadpool_limits(limits=2, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("error")
        train_als(r, cfg)


def test_history_confidence_fades_with_rank_and_reads_back_to_back_histories_by_their_ranks():
    cfg = ALSConfig(alpha=2.0, recency_decay=0.8)
    r = np.array([1.0, 4.0, 1.0])
    one = history_confidence(r, cfg)
    np.testing.assert_allclose(one, 1 + 2.0 * r * 0.8 ** np.arange(3))
    both = history_confidence(np.concatenate([r, r[:2]]), cfg, ranks=np.array([0, 1, 2, 0, 1]))
    np.testing.assert_allclose(both, np.concatenate([one, one[:2]]))
    assert np.all(history_confidence(np.full(200, 5.0), cfg) >= 1.0), "an old item stays a positive, c >= 1"
    np.testing.assert_array_equal(history_confidence(r, ALSConfig(alpha=2.0, recency_decay=1.0)), confidence(r, cfg))


def test_a_config_written_before_feedback_types_still_loads():
    """Older model versions' config.json has view_weight and click_weight (settings now): a worker must load them."""
    old = '{"factors": 8, "regularization": 40.0, "alpha": 1.0, "view_weight": 1.0, "click_weight": 4.0}'
    assert ALSConfig.model_validate_json(old) == ALSConfig(factors=8)
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        ALSConfig.model_validate_json('{"factors": 8, "like_weight": 4.0}')


@pytest.mark.parametrize(
    ("name", "limit"), [("regularization", MAX_REGULARIZATION), ("alpha", MAX_ALPHA), ("anchor", MAX_REGULARIZATION)]
)
def test_regularization_and_alpha_are_bounded_and_a_fit_at_the_bound_is_finite(name: str, limit: float):
    """``train --regularization 1e40`` (or --alpha) passed the config and ended in implicit's NaN traceback after
    reading the whole log; the bound refuses it at once, and the largest value allowed still fits."""
    for accepted in (np.nextafter(limit, 0.0), limit):
        ALSConfig(**{name: accepted})
    with pytest.raises(pydantic.ValidationError, match="less than or equal to"):
        ALSConfig(**{name: np.nextafter(limit, np.inf)})
    users, items, clicks, n_users, n_items = _events()
    r = interaction_matrix(users, items, _weights(clicks), n_users, n_items)
    fit = train_als(r, ALSConfig(factors=8, iterations=3, num_threads=1, **{name: limit}))
    assert np.isfinite(fit.user_factors).all() and np.isfinite(fit.item_factors).all()


def test_the_anchor_may_be_zero_but_not_negative():
    """0 switches the user step's pull toward the batch vector off; below it the step would push away from it."""
    assert ALSConfig(anchor=0.0).anchor == 0.0
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        ALSConfig(anchor=-np.nextafter(0.0, 1.0))


def test_a_fit_that_diverges_is_a_fit_error_naming_what_to_lower():
    """Event weights so large that the float32 confidences overflow in implicit's fit: its ModelFitError left the
    command as a traceback; within the bounds of α and λ a fit can still meet it."""
    users, items, clicks, n_users, n_items = _events()
    r = interaction_matrix(users, items, _weights(clicks) * 1e30, n_users, n_items)
    with pytest.raises(FitError, match=r"the fit diverged \(NaN encountered in factors\) with regularization 40 and "):
        train_als(r, ALSConfig(factors=8, iterations=3, num_threads=1))
