"""Experiment statistics: Wilson intervals and both tests match hand-computed values; a verdict needs both."""

from __future__ import annotations

import pytest

from recstream.jobs.experiment_stats import compare, two_proportion_test, user_level_test, wilson_interval


def test_wilson_interval_matches_hand_computation():
    # p̂ = 0.3, n = 50, z² = 3.8415: centre (0.3 + 0.038415)/1.07683 = 0.31427,
    # half 1.96·√(0.0042 + 0.00038415)/1.07683 = 0.12325 → (0.1910, 0.4375)
    low, high = wilson_interval(15, 50)
    assert low == pytest.approx(0.1910, abs=1e-4) and high == pytest.approx(0.4375, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(50, 50)[1] == 1.0


def test_two_proportion_test_matches_hand_computation():
    # p̄ = 90/1500 = 0.06, se = √(0.06·0.94·(1/500 + 1/1000)) = 0.013008, z = (0.05 − 0.08)/se = −2.3063
    z, p = two_proportion_test(40, 500, 50, 1000)
    assert z == pytest.approx(-2.3063, abs=1e-4)
    assert p == pytest.approx(0.02109, abs=1e-4)  # 2·(1 − Φ(2.3063))


def test_compare_names_the_better_variant_only_when_significant():
    clear = compare({"control": (5_000, 200), "better": (5_000, 300)}, control="control")
    assert clear.winner == "better" and clear.arms[1].lift == pytest.approx(0.5)
    assert compare({"control": (5_000, 300), "worse": (5_000, 200)}, control="control").winner == "control"
    assert compare({"control": (500, 20), "b": (500, 24)}, control="control").verdict == "no significant difference"
    # three variants: Bonferroni halves the level, p ≈ 0.035 no longer counts
    three = compare({"a": (1000, 100), "b": (1000, 130), "c": (1000, 100)}, control="a")
    assert three.winner is None


def test_one_heavy_clicker_is_significant_by_views_but_not_by_users():
    # control: 10 users with 100 views and 5 clicks each; treatment: the same, but one user clicks 45 times.
    # By users: R_b = 90/1000, d_u = −4 (×9) and 36, s² = (9·16 + 36²)/9 = 160, Var_b = 160/(10·100²) = 0.0016,
    # Var_a = 0 (every d_u = 0), z = 0.04/0.04 = 1, p = erfc(1/√2) = 0.3173.
    # By views: p̄ = 140/2000, se = √(0.07·0.93·0.002) = 0.011411, z = 3.505, p = 0.00046.
    control, treatment = [(100, 5)] * 10, [(100, 5)] * 9 + [(100, 45)]
    z, p = user_level_test(control, treatment)
    assert z == pytest.approx(1.0) and p == pytest.approx(0.3173, abs=1e-4)
    counts = {"a": (1000, 50), "b": (1000, 90)}
    assert two_proportion_test(50, 1000, 90, 1000)[0] == pytest.approx(3.505, abs=1e-3)
    assert compare(counts, control="a").winner == "b"
    assert compare(counts, control="a", users={"a": control, "b": treatment}).winner is None


@pytest.mark.parametrize(("better", "worse"), [("b", "a"), ("a", "b")])
def test_an_overwhelming_difference_whose_p_values_underflow_to_zero_is_significant(better, worse):
    """Both tests' p-values underflow to exactly 0.0 past |z| ≈ 38, which ``p or 1.0`` read as 1.0: more data made a
    clear winner 'no significant difference'."""
    rates = {better: 130_000, worse: 100_000}
    counts = {arm: (1_000_000, rates[arm]) for arm in ("a", "b")}
    users = {arm: [(5, int(k < rates[arm])) for k in range(200_000)] for arm in ("a", "b")}  # 5 views each
    result = compare(counts, control="a", users=users)
    assert result.arms[1].p_value == 0.0 and result.arms[1].p_users == 0.0
    assert result.winner == better
