from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
from recstream.models.ranker import MAX_ABS_INPUT, FTRLConfig, FTRLRanker, auc, logloss, update_many


def state(ranker: FTRLRanker) -> tuple[np.ndarray, np.ndarray]:
    """z and n, read from the tail of `to_bytes` (little-endian float64, z then n)."""
    width = ranker.n_features + 1
    z, n = np.frombuffer(ranker.to_bytes()[-16 * width :], dtype="<f8").reshape(2, width)
    return z, n


def planted(rng: np.random.Generator, n_rows: int, n_noise: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose feature 0 drives clicks, P(click) = σ(−1 + 2.5·x_0); the other features are noise."""
    rows = rng.normal(size=(n_rows, 1 + n_noise))
    clicks = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-(-1.0 + 2.5 * rows[:, 0])))
    return rows, clicks.astype(np.int64)


def sigmoid(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-s))


def ftrl_weight(z: float, n: float, cfg: FTRLConfig) -> float:
    """The closed form, written out again: w = 0 if |z| ≤ λ1 else −(z − sgn(z)·λ1) / ((β + √n)/α + λ2)."""
    if abs(z) <= cfg.l1:
        return 0.0
    return -(z - math.copysign(cfg.l1, z)) / ((cfg.beta + math.sqrt(n)) / cfg.alpha + cfg.l2)


def accumulated(
    z: list[float], n: list[float], w: list[float], g: list[float], alphas: list[float]
) -> tuple[list[float], list[float]]:
    """The accumulators after one row, written out again: σ_i = (√(n_i + g_i²) − √n_i)/α_i, z_i + g_i − σ_i·w_i and
    n_i + g_i²."""
    sigma = [(math.sqrt(ni + gi * gi) - math.sqrt(ni)) / a for ni, gi, a in zip(n, g, alphas, strict=True)]
    z_next = [zi + gi - si * wi for zi, gi, si, wi in zip(z, g, sigma, w, strict=True)]
    return z_next, [ni + gi * gi for ni, gi in zip(n, g, strict=True)]


def test_one_update_is_the_hand_computed_ftrl_step():
    cfg = FTRLConfig(alpha=0.5, beta=1.0, l1=0.1, l2=1.0)
    ranker = FTRLRanker(2, cfg)
    # From z = n = 0 every w is 0, so p = 1/2 and g = (1/2 − 1)·(1, 2, −1), the bias first.
    # σ·w = 0, so z = g and n = g²; den = (1 + |g|)/0.5 + 1 = (4, 5, 4); w = −(z − sgn(z)·0.1)/den.
    assert ranker.update([[2.0, -1.0]], [1]) == pytest.approx(math.log(2.0))
    z, n = state(ranker)
    np.testing.assert_allclose(z, [-0.5, -1.0, 0.5], rtol=1e-15)
    np.testing.assert_allclose(n, [0.25, 1.0, 0.25], rtol=1e-15)
    np.testing.assert_allclose(ranker.weights, [0.4 / 4, 0.9 / 5, -0.4 / 4], rtol=1e-15)

    # A second row, y = 0, now with w ≠ 0, so the σ·w term counts: every formula applied by hand.
    x, w = [1.0, 1.0, 3.0], [0.1, 0.18, -0.1]
    p = sigmoid(sum(wi * xi for wi, xi in zip(w, x, strict=True)))
    g = [(p - 0.0) * xi for xi in x]
    z_next, n_next = accumulated(z.tolist(), n.tolist(), w, g, [cfg.alpha] * 3)

    assert ranker.update([[1.0, 3.0]], [0]) == pytest.approx(-math.log(1.0 - p), rel=1e-12)
    z, n = state(ranker)
    np.testing.assert_allclose(z, z_next, rtol=1e-12)
    np.testing.assert_allclose(n, n_next, rtol=1e-12)
    expected_w = [ftrl_weight(zi, ni, cfg) for zi, ni in zip(z_next, n_next, strict=True)]
    np.testing.assert_allclose(ranker.weights, expected_w, rtol=1e-12)
    assert ranker.n_updates == 2


@pytest.mark.parametrize("l1", [0.0, 0.5])
def test_state_depends_on_the_rows_only_not_on_batches_or_restarts(l1):
    rows, clicks = planted(np.random.default_rng(1), 300, n_noise=3)
    cfg = FTRLConfig(alpha=0.1, l1=l1)

    whole = FTRLRanker(4, cfg)
    whole.update(rows, clicks)
    again = FTRLRanker(4, cfg)
    again.update(rows, clicks)
    assert again.to_bytes() == whole.to_bytes()

    batched = FTRLRanker(4, cfg)
    for start, stop in itertools.pairwise([0, 1, 7, 100, 299, 300]):
        batched.update(rows[start:stop], clicks[start:stop])
    assert batched.to_bytes() == whole.to_bytes()

    crashed = FTRLRanker(4, cfg)
    crashed.update(rows[:120], clicks[:120])
    restored = FTRLRanker.from_bytes(crashed.to_bytes())
    restored.update(rows[120:], clicks[120:])
    assert restored.to_bytes() == whole.to_bytes()
    assert restored.n_updates == 300


def test_learned_weights_separate_a_planted_signal():
    rows, clicks = planted(np.random.default_rng(2), 6000, n_noise=1)
    ranker = FTRLRanker(2)
    losses = [ranker.update(rows[i : i + 500], clicks[i : i + 500]) for i in range(0, 4000, 500)]

    assert auc(ranker.score(rows[4000:]), clicks[4000:]) > 0.8
    _, signal, noise = ranker.weights  # bias first
    assert abs(signal) > abs(noise)
    assert signal > 0
    assert losses[-1] < losses[0], "the progressive logloss falls as the model learns"
    assert np.argmax(np.abs(ranker.contributions([1.0, 1.0]))) == 0, "feature 0 contributed most"


def test_contributions_and_bias_add_up_to_the_logit():
    rows, clicks = planted(np.random.default_rng(3), 500, n_noise=2)
    ranker = FTRLRanker(3)
    ranker.update(rows, clicks)
    row = np.array([0.3, -1.2, 2.0])
    p = ranker.score(row[None, :])[0]
    assert ranker.contributions(row).sum() + ranker.weights[0] == pytest.approx(math.log(p / (1.0 - p)), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        ranker.contributions(row[:2])


def test_update_returns_the_loss_of_predictions_made_before_each_row():
    rows, clicks = planted(np.random.default_rng(4), 50, n_noise=1)
    stepwise, batch = FTRLRanker(2), FTRLRanker(2)
    losses, scores, predicted = [], [], []
    for row, y in zip(rows, clicks, strict=True):
        p = stepwise.score(row[None, :])[0]
        loss = stepwise.update(row[None, :], [y])
        assert loss == pytest.approx(logloss([p], [y]), rel=1e-12)
        losses.append(loss)
        scores.append(p)
    assert batch.update(rows, clicks, predicted) == pytest.approx(np.mean(losses), rel=1e-12)
    assert predicted == pytest.approx(scores, rel=1e-12)
    assert batch.to_bytes() == stepwise.to_bytes()


def test_round_trip_through_bytes():
    rows, clicks = planted(np.random.default_rng(5), 400, n_noise=2)
    ranker = FTRLRanker(3, FTRLConfig(alpha=0.2, beta=0.5, l1=0.3, l2=2.0))
    ranker.update(rows[:200], clicks[:200])
    data = ranker.to_bytes()
    assert len(data) <= 64 + 24 * 4, "a small header, then the prior, z and n as float64"

    loaded = FTRLRanker.from_bytes(data)
    assert (loaded.n_features, loaded.config, loaded.n_updates) == (3, ranker.config, 200)
    np.testing.assert_array_equal(loaded.weights, ranker.weights)
    np.testing.assert_array_equal(loaded.score(rows), ranker.score(rows))
    assert loaded.to_bytes() == data
    assert FTRLRanker.from_bytes(bytearray(data)).to_bytes() == data
    assert FTRLRanker.from_bytes(memoryview(data)).to_bytes() == data
    assert loaded.update(rows[200:], clicks[200:]) == ranker.update(rows[200:], clicks[200:])
    assert loaded.to_bytes() == ranker.to_bytes()


def test_a_prior_is_where_the_weights_start_and_what_they_are_pulled_towards():
    cfg = FTRLConfig(alpha=0.5, beta=1.0, l1=0.0, l2=1.0, prior=(-1.0, 2.0, 0.0))
    ranker = FTRLRanker(2, cfg)
    np.testing.assert_array_equal(ranker.weights, [-1.0, 2.0, 0.0])
    assert ranker.score([[1.0, 5.0]])[0] == pytest.approx(sigmoid(1.0))
    # The first row is predicted with w₀ + 0: p = σ(−1 + 2·1 + 0·3) = σ(1); the residual's step is the plain
    # FTRL step from z = n = 0 with that p: g = (p − 0)·(1, 1, 3), z = g, n = g², w = −z / ((1 + |g|)/0.5 + 1).
    p = sigmoid(1.0)
    assert ranker.update([[1.0, 3.0]], [0]) == pytest.approx(-math.log(1.0 - p), rel=1e-12)
    g = np.array([p, p, 3.0 * p])
    z, n = state(ranker)
    np.testing.assert_allclose(z, g, rtol=1e-15)
    np.testing.assert_allclose(n, g * g, rtol=1e-15)
    np.testing.assert_allclose(ranker.weights, np.array(cfg.prior) - g / ((1.0 + g) / 0.5 + 1.0), rtol=1e-12)
    loaded = FTRLRanker.from_bytes(ranker.to_bytes())
    assert loaded.config == cfg and loaded.to_bytes() == ranker.to_bytes()
    # the same rows from no prior: only the weights' starting point differs, the step is the same
    plain = FTRLRanker(2, FTRLConfig(alpha=0.5))
    plain.update([[1.0, 3.0]], [0])
    assert not np.allclose(state(plain)[0], z)


def test_a_prior_of_the_right_sign_lowers_the_early_loss_and_the_data_still_moves_the_weights():
    rows, clicks = planted(np.random.default_rng(8), 3000, n_noise=2)
    cold = FTRLRanker(3, FTRLConfig(alpha=0.1))
    primed = FTRLRanker(3, FTRLConfig(alpha=0.1, prior=(-1.0, 1.0, 0.0, 0.0)))  # half the planted slope
    assert primed.update(rows[:200], clicks[:200]) < cold.update(rows[:200], clicks[:200])
    primed.update(rows[200:], clicks[200:])
    assert primed.weights[1] > 1.5, "the planted slope 2.5 pulls the weight past the prior's 1"
    assert primed.to_bytes() == FTRLRanker.from_bytes(primed.to_bytes()).to_bytes()


def test_the_bias_alpha_is_the_bias_coordinates_learning_rate_scale_in_the_hand_computed_step():
    cfg = FTRLConfig(alpha=0.5, beta=1.0, l1=0.0, l2=1.0, bias_alpha=2.0)
    ranker = FTRLRanker(2, cfg)
    # From zero p = 1/2, g = (1/2 − 1)·(1, 2, −1) as in the plain step; only the bias's den uses its own α:
    # den = ((1 + 0.5)/2 + 1, (1 + 1)/0.5 + 1, (1 + 0.5)/0.5 + 1) = (1.75, 5, 4).
    ranker.update([[2.0, -1.0]], [1])
    np.testing.assert_allclose(ranker.weights, [0.5 / 1.75, 1.0 / 5, -0.5 / 4], rtol=1e-15)
    # The second step by hand: σ_0 = (√(n_0 + g_0²) − √n_0) / 2 for the bias, / 0.5 for the features.
    z, n = state(ranker)
    w, x = ranker.weights.tolist(), [1.0, 1.0, 3.0]
    p = sigmoid(sum(wi * xi for wi, xi in zip(w, x, strict=True)))
    g = [p * xi for xi in x]
    alphas = [2.0, 0.5, 0.5]
    z_next, n_next = accumulated(z.tolist(), n.tolist(), w, g, alphas)
    ranker.update([[1.0, 3.0]], [0])
    z, n = state(ranker)
    np.testing.assert_allclose(z, z_next, rtol=1e-12)
    np.testing.assert_allclose(n, n_next, rtol=1e-12)
    expected = [-zi / ((1.0 + math.sqrt(ni)) / a + 1.0) for zi, ni, a in zip(z_next, n_next, alphas, strict=True)]
    np.testing.assert_allclose(ranker.weights, expected, rtol=1e-12)


def test_a_bias_alpha_keeps_determinism_and_round_trips_and_an_equal_one_is_the_plain_model():
    rows, clicks = planted(np.random.default_rng(9), 300, n_noise=2)
    cfg = FTRLConfig(alpha=0.1, bias_alpha=1.0)
    whole, batched = FTRLRanker(3, cfg), FTRLRanker(3, cfg)
    whole.update(rows, clicks)
    batched.update(rows[:77], clicks[:77])
    restored = FTRLRanker.from_bytes(batched.to_bytes())
    assert restored.config == cfg
    restored.update(rows[77:], clicks[77:])
    assert restored.to_bytes() == whole.to_bytes()
    plain, same = FTRLRanker(3, FTRLConfig(alpha=0.1)), FTRLRanker(3, FTRLConfig(alpha=0.1, bias_alpha=0.1))
    plain.update(rows, clicks)
    same.update(rows, clicks)
    assert same.to_bytes() == plain.to_bytes()
    assert not np.array_equal(whole.weights, plain.weights)


def test_a_larger_bias_alpha_learns_the_base_rate_in_the_bias_not_in_an_always_negative_feature():
    """The closed loop's trouble in miniature: a feature near −2 on every row (a CTR logit), P(click) =
    σ(−3 + 0.5·x), about 2%. From zero with a small α the feature's weight takes much of the base rate (and its
    slope is wrong); a bias α lets the bias take it, and the slope comes out near the planted one."""
    rng = np.random.default_rng(10)
    ctr_logit = rng.normal(-2.0, 0.5, size=(20_000, 1))
    clicks = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-(-3.0 + 0.5 * ctr_logit[:, 0])))).astype(np.int64)
    slow, fast = FTRLRanker(1, FTRLConfig(alpha=0.05)), FTRLRanker(1, FTRLConfig(alpha=0.05, bias_alpha=0.5))
    slow.update(ctr_logit, clicks)
    fast.update(ctr_logit, clicks)
    assert slow.weights[0] > -2.0 and slow.weights[1] > 1.0, "the slow bias leaves the base rate to the feature"
    assert fast.weights[0] < -2.5, "the bias takes the base rate"
    assert abs(fast.weights[1] - 0.5) < 0.2, "and the feature's weight is near its planted slope"


def test_a_standardized_step_is_the_hand_computed_one_on_the_scaled_row():
    cfg = FTRLConfig(alpha=0.5, bias_alpha=2.0, standardize=True)
    ranker = FTRLRanker(2, cfg)
    # Row 1: no statistics yet (μ = 0, s = 1), so it is learned as it is: the plain step with the bias's α,
    # w = (0.5/1.75, 1/5, −0.5/4) on x̃. Then μ = (2, −1), s = 1, so on raw rows the bias is w_0 − 2·w_1 + w_2.
    ranker.update([[2.0, -1.0]], [1])
    np.testing.assert_allclose(ranker.weights, [0.5 / 1.75 - 0.4 - 0.125, 1.0 / 5, -0.5 / 4], rtol=1e-15)
    data = np.frombuffer(ranker.to_bytes()[-48 * 3 :], dtype="<f8").reshape(6, 3)  # prior, z, n, μ, M2, mask
    z1, n1 = data[1].tolist(), data[2].tolist()
    # Row 2 is scaled by the statistics of row 1 alone: μ = (2, −1), variance 0 → s = 1, so x̃ = (1 − 2, 3 + 1).
    x_tilde = [1.0, -1.0, 4.0]
    w = [ftrl_weight(zi, ni, FTRLConfig(alpha=a)) for zi, ni, a in zip(z1, n1, [2.0, 0.5, 0.5], strict=True)]
    p = sigmoid(sum(wi * xi for wi, xi in zip(w, x_tilde, strict=True)))
    g = [p * xi for xi in x_tilde]
    alphas = [2.0, 0.5, 0.5]
    z2, n2 = accumulated(z1, n1, w, g, alphas)
    predicted: list[float] = []
    ranker.update([[1.0, 3.0]], [0], predicted)
    assert predicted[0] == pytest.approx(p, rel=1e-12)
    data = np.frombuffer(ranker.to_bytes()[-48 * 3 :], dtype="<f8").reshape(6, 3)  # prior, z, n, μ, M2, mask
    np.testing.assert_allclose(data[1], z2, rtol=1e-12)
    np.testing.assert_allclose(data[2], n2, rtol=1e-12)
    # After both rows: μ = (1.5, 1), M2 = (0.5, 8), s = (0.5, 2); the weights map back to raw features.
    np.testing.assert_allclose(data[3], [0.0, 1.5, 1.0], rtol=1e-15)
    np.testing.assert_allclose(data[4], [0.0, 0.5, 8.0], rtol=1e-15)
    learned = [-zi / ((1.0 + math.sqrt(ni)) / a + 1.0) for zi, ni, a in zip(z2, n2, alphas, strict=True)]
    raw = [learned[1] / 0.5, learned[2] / 2.0]
    np.testing.assert_allclose(ranker.weights, [learned[0] - raw[0] * 1.5 - raw[1] * 1.0, *raw], rtol=1e-12)


def test_standardized_weights_score_a_raw_row_as_the_update_predicted_it():
    rng = np.random.default_rng(11)
    rows = rng.normal([3.0, -2.0, 0.0], [2.0, 0.1, 1.0], size=(400, 3))
    rows[:, 2] = 1.0  # a constant feature: variance 0, never scaled, never weighs
    clicks = (rng.random(400) < sigmoid(-1.0)).astype(np.int64)
    ranker, predicted = FTRLRanker(3, FTRLConfig(alpha=0.1, bias_alpha=0.5, standardize=True)), []
    for k in range(len(rows)):
        before = ranker.score(rows[k : k + 1])[0]
        ranker.update(rows[k : k + 1], clicks[k : k + 1], predicted)
        assert before == pytest.approx(predicted[-1], rel=1e-12)
    row = np.array([1.0, -1.9, 1.0])
    p = ranker.score(row[None, :])[0]
    assert ranker.contributions(row).sum() + ranker.weights[0] == pytest.approx(math.log(p / (1.0 - p)), rel=1e-9)


def test_standardized_state_depends_on_the_rows_only_and_round_trips():
    rows, clicks = planted(np.random.default_rng(12), 300, n_noise=2)
    rows = rows * [1.0, 10.0, 0.1] + [5.0, 0.0, -3.0]
    cfg = FTRLConfig(alpha=0.1, bias_alpha=0.5, standardize=True)
    whole = FTRLRanker(3, cfg)
    whole.update(rows, clicks)
    batched = FTRLRanker(3, cfg)
    for start, stop in itertools.pairwise([0, 1, 2, 50, 299, 300]):
        batched = FTRLRanker.from_bytes(batched.to_bytes())
        batched.update(rows[start:stop], clicks[start:stop])
    assert batched.to_bytes() == whole.to_bytes() and batched.config == cfg
    lengths = [40, 0, 7, 40, 1]
    batches = [(rows[:k] * 2.0, clicks[:k]) for k in lengths]
    alone, together = [FTRLRanker(3, cfg) for _ in lengths], [FTRLRanker(3, cfg) for _ in lengths]
    for ranker, (x, y) in zip(alone, batches, strict=True):
        ranker.update(x, y)
    update_many(together, *zip(*batches, strict=True))
    assert [r.to_bytes() for r in together] == [r.to_bytes() for r in alone]
    state = whole.to_bytes()  # … μ, M2, mask: 4 values each
    negative_m2 = state[:-40] + np.array([-1.0], dtype="<f8").tobytes() + state[-32:]
    with pytest.raises(ValueError, match=">= 0"):
        FTRLRanker.from_bytes(negative_m2)


def test_a_step_standardizing_a_subset_scales_only_those_features():
    """Feature 0 stays raw, feature 1 is standardized: the hand-computed steps of the full case, with μ_0 = 0 and
    s_0 = 1 throughout."""
    cfg = FTRLConfig(alpha=0.5, bias_alpha=2.0, standardize=True, standardize_only=(1,))
    ranker = FTRLRanker(2, cfg)
    ranker.update([[2.0, -1.0]], [1])  # no statistics yet: the plain step; then μ = (0, −1), s = 1
    np.testing.assert_allclose(ranker.weights, [0.5 / 1.75 - 0.125, 1.0 / 5, -0.5 / 4], rtol=1e-15)
    data = np.frombuffer(ranker.to_bytes()[-48 * 3 :], dtype="<f8").reshape(6, 3)  # prior, z, n, μ, M2, mask
    z1, n1 = data[1].tolist(), data[2].tolist()
    x_tilde = [1.0, 1.0, 4.0]  # row 2 = (1, 3): feature 0 raw, feature 1 is (3 − (−1))/1
    alphas = [2.0, 0.5, 0.5]
    w = [ftrl_weight(zi, ni, FTRLConfig(alpha=a)) for zi, ni, a in zip(z1, n1, alphas, strict=True)]
    p = sigmoid(sum(wi * xi for wi, xi in zip(w, x_tilde, strict=True)))
    z2, n2 = accumulated(z1, n1, w, [p * xi for xi in x_tilde], alphas)
    predicted: list[float] = []
    ranker.update([[1.0, 3.0]], [0], predicted)
    assert predicted[0] == pytest.approx(p, rel=1e-12)
    data = np.frombuffer(ranker.to_bytes()[-48 * 3 :], dtype="<f8").reshape(6, 3)
    np.testing.assert_allclose(data[1], z2, rtol=1e-12)
    np.testing.assert_allclose(data[2], n2, rtol=1e-12)
    assert data[3].tolist() == [0.0, 0.0, 1.0] and data[4].tolist() == [0.0, 0.0, 8.0], "feature 0 has no statistics"
    assert data[5].tolist() == [0.0, 0.0, 1.0], "the mask: only feature 1"
    learned = [-zi / ((1.0 + math.sqrt(ni)) / a + 1.0) for zi, ni, a in zip(z2, n2, alphas, strict=True)]
    np.testing.assert_allclose(ranker.weights, [learned[0] - learned[2] / 2.0, learned[1], learned[2] / 2.0],
                               rtol=1e-12)  # fmt: skip


def test_a_subset_standardized_state_round_trips_and_learns_on_as_one_run():
    rows, clicks = planted(np.random.default_rng(14), 200, n_noise=2)
    rows = rows * [1.0, 10.0, 0.1] + [5.0, 0.0, -3.0]
    cfg = FTRLConfig(alpha=0.1, bias_alpha=0.5, standardize=True, standardize_only=(0, 2))
    whole, batched = FTRLRanker(3, cfg), FTRLRanker(3, cfg)
    whole.update(rows, clicks)
    for start, stop in itertools.pairwise([0, 1, 77, 200]):
        batched = FTRLRanker.from_bytes(batched.to_bytes())
        batched.update(rows[start:stop], clicks[start:stop])
    assert batched.to_bytes() == whole.to_bytes() and batched.config == cfg
    every = FTRLRanker.from_bytes(FTRLRanker(3, FTRLConfig(standardize=True, standardize_only=(0, 1, 2))).to_bytes())
    assert every.config.standardize_only == (), "every feature standardized reads back as ()"


@pytest.mark.parametrize(("only", "n_features", "error"), [
    ((0,), 1, None), ((1,), 1, "feature 1 of 1"), ((2,), 3, None), ((3,), 3, "feature 3 of 3"),
])  # fmt: skip
def test_a_standardized_feature_must_be_one_of_the_rankers(only, n_features, error):
    cfg = FTRLConfig(standardize=True, standardize_only=only)
    if error is None:
        assert FTRLRanker(n_features, cfg).config.standardize_only == only
    else:
        with pytest.raises(ValueError, match=error):
            FTRLRanker(n_features, cfg)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"standardize_only": (1,)}, "needs standardize"), ({"standardize": True, "standardize_only": (-1,)}, ">= 0")],
)
def test_a_standardized_subset_is_validated(kwargs, error):
    with pytest.raises(ValueError, match=error):
        FTRLConfig(**kwargs)


@pytest.mark.parametrize("mask", [[1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0]], ids=["bias", "half", "none"])
def test_a_state_with_a_broken_standardized_mask_is_refused(mask):
    state = FTRLRanker(2, FTRLConfig(standardize=True)).to_bytes()
    with pytest.raises(ValueError, match="mask"):
        FTRLRanker.from_bytes(state[:-24] + np.array(mask, dtype="<f8").tobytes())


@pytest.mark.parametrize("standardize", [False, True])
def test_a_version_3_state_reads_as_the_same_ranker(standardize):
    """Version 3 (before the mask) is version 4 without it: a stored ranker learns on after an upgrade."""
    ranker = FTRLRanker(2, FTRLConfig(standardize=standardize))
    ranker.update([[1.0, 2.0], [0.0, -1.0]], [1, 0])
    state = ranker.to_bytes()
    v3 = state[:4] + struct.pack("<H", 3) + state[6:]
    if standardize:
        v3 = v3[:-24]  # the mask: every feature standardized
    assert FTRLRanker.from_bytes(v3).to_bytes() == state
    with pytest.raises(ValueError, match="version 2"):
        FTRLRanker.from_bytes(state[:4] + struct.pack("<H", 2) + state[6:])


def test_standardized_features_of_any_scale_weigh_alike():
    """The same planted signal on a feature scaled by 0.05 and shifted by 3: raw, FTRL barely weighs it in a few
    thousand rows; standardized, it ranks as well as on the unit scale."""
    rows, clicks = planted(np.random.default_rng(13), 4000, n_noise=1)
    squeezed = rows * [0.05, 1.0] + [3.0, 0.0]
    raw, scaled = FTRLRanker(2), FTRLRanker(2, FTRLConfig(bias_alpha=0.5, standardize=True))
    raw.update(squeezed[:3000], clicks[:3000])
    scaled.update(squeezed[:3000], clicks[:3000])
    raw_auc, scaled_auc = (auc(r.score(squeezed[3000:]), clicks[3000:]) for r in (raw, scaled))
    assert scaled_auc > 0.8 > raw_auc


def test_standardize_refuses_a_prior():
    with pytest.raises(ValueError, match="do not combine"):
        FTRLConfig(standardize=True, prior=(0.0, 1.0))


@pytest.mark.parametrize("width", [2, 4])
def test_a_prior_of_the_wrong_length_is_refused(width):
    with pytest.raises(ValueError, match="prior needs 3 weights"):
        FTRLRanker(2, FTRLConfig(prior=(1.0,) * width))
    assert FTRLRanker(2, FTRLConfig(prior=(1.0,) * 3)).prior.tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="finite"):
        FTRLConfig(prior=(math.nan, 1.0))


def test_from_bytes_rejects_what_to_bytes_did_not_write():
    data = FTRLRanker(3).to_bytes()
    nan_state = data[:-8] + np.array([np.nan], dtype="<f8").tobytes()
    for bad, message in [
        (data[:-1], "expected"),
        (data[:10], "at least"),
        (b"", "at least"),
        (data + b"\0", "expected"),
        (b"XXXX" + data[4:], "magic"),
        (data[:4] + (1).to_bytes(2, "little") + data[6:], "version"),
        (nan_state, "finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            FTRLRanker.from_bytes(bad)


def test_l1_makes_the_weights_of_pure_noise_features_exactly_zero():
    rows, clicks = planted(np.random.default_rng(6), 4000, n_noise=3)
    dense, sparse = FTRLRanker(4), FTRLRanker(4, FTRLConfig(l1=100.0))
    dense.update(rows, clicks)
    sparse.update(rows, clicks)
    assert (dense.weights[2:] != 0.0).all()
    assert (sparse.weights[2:] == 0.0).all()
    assert sparse.weights[1] > 1.0, "the planted feature survives"
    assert (sparse.contributions([1.0, 5.0, -5.0, 5.0])[1:] == 0.0).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", 0.0),
        ("alpha", -1.0),
        ("alpha", math.inf),
        ("beta", 0.0),
        ("l1", -0.1),
        ("l2", math.nan),
        ("bias_alpha", 0.0),
        ("bias_alpha", math.nan),
    ],
)
def test_config_rejects_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FTRLConfig(**{field: value})


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [
        ([[1.0, 2.0, 3.0]], [1], "shape"),
        ([1.0, 2.0], [1], "shape"),
        ([[1.0, math.nan]], [1], "finite"),
        ([[1.0, 2.0]], [0.5], "0 or 1"),
        ([[1.0, 2.0]], [1, 0], "labels"),
    ],
)
def test_a_rejected_batch_leaves_the_model_unchanged(rows, labels, message):
    ranker = FTRLRanker(2)
    ranker.update([[0.5, -0.5]], [1])
    before = ranker.to_bytes()
    with pytest.raises(ValueError, match=message):
        ranker.update(rows, labels)
    assert ranker.to_bytes() == before


def test_an_empty_batch_changes_nothing():
    ranker = FTRLRanker(2)
    before = ranker.to_bytes()
    assert math.isnan(ranker.update(np.empty((0, 2)), []))
    assert ranker.to_bytes() == before and ranker.n_updates == 0
    assert ranker.score(np.empty((0, 2))).shape == (0,)


@pytest.mark.parametrize(("l1", "prior"), [(0.0, ()), (0.5, ()), (0.0, (0.5, -1.0, 0.0, 2.0, 0.0))])
def test_rankers_stepped_together_end_in_the_bytes_each_learns_alone(l1, prior):
    """A worker's partitions learn in one loop; each partition's state, predictions and loss stay its own."""
    rng = np.random.default_rng(5)
    cfg = FTRLConfig(alpha=0.1, l1=l1, prior=prior)
    lengths = [40, 0, 7, 40, 1]  # ties, an empty batch, and batches that stop while others go on
    batches = [planted(rng, k, n_noise=3) for k in lengths]
    alone, together = [FTRLRanker(4, cfg) for _ in lengths], [FTRLRanker(4, cfg) for _ in lengths]
    for start in (alone, together):  # learned states, not only fresh ones
        for ranker, (rows, clicks) in zip(start, batches, strict=True):
            ranker.update(rows[::-1], clicks[::-1])
    predicted_alone, predicted_together = [[] for _ in lengths], [[] for _ in lengths]
    losses = [r.update(x, y, p) for r, (x, y), p in zip(alone, batches, predicted_alone, strict=True)]
    together_losses = update_many(together, *zip(*batches, strict=True), predicted_together)
    assert [r.to_bytes() for r in together] == [r.to_bytes() for r in alone]
    assert predicted_together == predicted_alone
    np.testing.assert_array_equal(together_losses, losses)  # nan for the empty batch in both


def test_rankers_of_other_configs_learn_together_each_by_its_own_and_a_bad_batch_stops_all():
    a, b = FTRLRanker(2), FTRLRanker(2, FTRLConfig(alpha=0.5, standardize=True))
    a_alone, b_alone = FTRLRanker.from_bytes(a.to_bytes()), FTRLRanker.from_bytes(b.to_bytes())
    update_many([a, b], [[[1.0, 0.0], [0.5, 2.0]], [[1.0, 0.0]]], [[1, 0], [0]])
    a_alone.update([[1.0, 0.0], [0.5, 2.0]], [1, 0])
    b_alone.update([[1.0, 0.0]], [0])
    assert (a.to_bytes(), b.to_bytes()) == (a_alone.to_bytes(), b_alone.to_bytes())
    c = FTRLRanker(2)
    before = (a.to_bytes(), c.to_bytes())
    with pytest.raises(ValueError, match="finite"):
        update_many([a, c], [[[1.0, 0.0]], [[math.inf, 0.0]]], [[1], [0]])
    assert (a.to_bytes(), c.to_bytes()) == before
    with pytest.raises(ValueError, match="only one batch"):
        update_many([a, a], [[[1.0, 0.0]], [[1.0, 0.0]]], [[1], [0]])


def test_huge_features_saturate_instead_of_overflowing():
    ranker = FTRLRanker(1, FTRLConfig(alpha=10.0))
    for _ in range(20):
        loss = ranker.update([[1e6], [-1e6]], [1, 0])
    assert math.isfinite(loss)
    p = ranker.score([[1e6], [-1e6]])
    assert 0.0 < p[1] < 1e-12 and 1.0 - 1e-12 < p[0] < 1.0


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (np.nextafter(MAX_ABS_INPUT, 0.0), True),
        (MAX_ABS_INPUT, True),
        (-MAX_ABS_INPUT, True),
        (np.nextafter(MAX_ABS_INPUT, math.inf), False),
        (-np.nextafter(MAX_ABS_INPUT, math.inf), False),
        (1e160, False),  # g² = 1e320 overflowed n to inf, and every later weight was NaN
    ],
)
def test_rows_up_to_the_feature_bound_keep_the_state_finite_and_larger_ones_are_refused(value, valid, standardize):
    ranker = FTRLRanker(2, FTRLConfig(standardize=standardize))
    ranker.update([[0.5, 1.0]] * 5, [1, 0, 0, 1, 0])
    before = ranker.to_bytes()
    rows, labels = [[value, 1.0], [-value, 1.0]] * 50, [1, 0] * 50  # wrong-way labels: the largest gradients
    if valid:
        assert math.isfinite(ranker.update(rows, labels))
        assert np.isfinite(ranker.weights).all() and np.isfinite(ranker.score([[0.5, 1.0]])).all()
        assert FTRLRanker.from_bytes(ranker.to_bytes()).to_bytes() == ranker.to_bytes()
    else:
        with pytest.raises(ValueError, match="MAX_ABS_INPUT"):
            ranker.update(rows, labels)
        assert ranker.to_bytes() == before


def _at_the_edge_of_the_float_range() -> FTRLRanker:
    """A valid (finite) state whose weights are −1e308: a row of ones sums two of them, past the largest double."""
    state = bytearray(FTRLRanker(1, FTRLConfig(alpha=1.0, l2=0.0)).to_bytes())
    z = len(state) - 4 * 8  # the header and the prior, then z (2 values) and n (2 values)
    state[z : z + 16] = np.array([1e308, 1e308], dtype="<f8").tobytes()
    return FTRLRanker.from_bytes(bytes(state))


@pytest.mark.parametrize(
    ("make", "row"),
    [
        (lambda: FTRLRanker(1, FTRLConfig(alpha=1e-300)), 1e10),  # σ = Δ√n/α overflows; σ·w = inf·0: z NaN
        (_at_the_edge_of_the_float_range, 1.0),  # the logit w·x overflows to −inf (clipped, it would pass unseen)
    ],
    ids=["nan", "overflow"],
)
def test_a_batch_that_would_leave_a_non_finite_state_is_refused_and_no_ranker_changes(make, row):
    """`update_many` steps copies and writes them back only when finite: a NaN state would fail from_bytes, and the
    worker would restart the partition's ranker from zero."""
    broken = make()
    fine = FTRLRanker(1, broken.config)
    fine.update([[1.0]], [0])
    before = [fine.to_bytes(), broken.to_bytes()]
    predicted: list[list[float]] = [[], []]
    with pytest.raises(ValueError, match="non-finite state"):
        update_many([fine, broken], [[[1.0]], [[row]] * 3], [[1], [1, 0, 1]], predicted)
    assert [fine.to_bytes(), broken.to_bytes()] == before and (fine.n_updates, broken.n_updates) == (1, 0)
    assert predicted == [[], []]
    update_many([fine], [[[1.0]]], [[1]])
    assert np.isfinite(fine.weights).all() and fine.n_updates == 2, "alone, the other batch is learned"


@pytest.mark.parametrize(
    ("vector", "coordinate"),
    [(3, 0), (4, 0), (3, 1), (4, 1)],
    ids=["bias-mean", "bias-m2", "raw-mean", "raw-m2"],
)
def test_a_state_with_statistics_where_nothing_is_standardized_is_refused(vector, coordinate):
    """Feature 0 is left raw: a mean or M2 on it (or on the bias) would scale and shift every score."""
    ranker = FTRLRanker(2, FTRLConfig(alpha=0.5, standardize=True, standardize_only=(1,)))
    ranker.update([[3.0, 1.0], [1.0, -2.0], [5.0, 0.5]], [1, 0, 0])
    state = np.frombuffer(ranker.to_bytes(), dtype="<f8", offset=len(ranker.to_bytes()) - 6 * 3 * 8).reshape(6, 3)
    assert FTRLRanker.from_bytes(ranker.to_bytes()).to_bytes() == ranker.to_bytes()
    assert state[vector, 2] != 0.0, "feature 1, standardized, holds statistics"
    tampered = state.copy()
    tampered[vector, coordinate] = 2.0
    header = ranker.to_bytes()[: -tampered.nbytes]
    with pytest.raises(ValueError, match="where the mask is 0"):
        FTRLRanker.from_bytes(header + tampered.tobytes())


def test_auc_of_perfect_reversed_tied_and_one_class_rankings():
    labels = [0, 0, 1, 1]
    assert auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
    assert math.isnan(auc([0.1, 0.2], [1, 1]))
    assert math.isnan(auc([0.1, 0.2], [0, 0]))
    assert math.isnan(auc([], []))
    # positives 0.5 and 0.9 against negatives 0.1 and 0.5: three pairs won, one tied, (3 + 1/2) / 4
    assert auc([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.875


def test_auc_is_the_fraction_of_positive_negative_pairs_ordered_right():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 10, 200).astype(float)  # many ties
    labels = rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), rel=1e-15)


def test_auc_rejects_nan_scores_and_non_binary_labels():
    with pytest.raises(ValueError, match="nan"):
        auc([0.1, math.nan], [0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0.1, 0.2], [0, 2])


def test_logloss_matches_a_hand_value_and_stays_finite_at_the_edges():
    assert logloss([0.9, 0.2], [1, 0]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-15)
    assert logloss([0.5], [1]) == pytest.approx(math.log(2.0), rel=1e-15)
    assert logloss([0.0], [1]) == pytest.approx(-math.log(1e-15), rel=1e-15), "p clipped to [ε, 1 − ε]"
    assert logloss([1.0], [0]) == pytest.approx(-math.log1p(-(1.0 - 1e-15)), rel=1e-15)
    assert logloss([1.0, 0.0], [1, 0]) < 1e-14
    assert math.isnan(logloss([], []))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logloss([1.5], [1])
