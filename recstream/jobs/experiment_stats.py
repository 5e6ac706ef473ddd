"""The statistics of an A/B report: Wilson intervals, a two-proportion z-test and a user-level test.

The two-proportion test treats each view as a Bernoulli trial. Users, not views, are randomized,
so one user's views are correlated and that test is optimistic when users see many items; the
report therefore also runs :func:`user_level_test` (the CTR as a ratio of per-user sums, its
variance by the delta method) and calls a difference significant only when both tests agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054
"""Φ⁻¹(0.975): the two-sided 95% normal quantile."""


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion: (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n).

    Unlike the normal interval p̂ ± z·√(p̂(1−p̂)/n) it stays inside [0, 1] and is not empty at 0
    clicks, which matters for CTRs of a few percent on small arms.

    >>> [round(x, 4) for x in wilson_interval(10, 100)]
    [0.0552, 0.1744]
    >>> [round(x, 4) for x in wilson_interval(0, 20)]
    [0.0, 0.1611]
    """
    if trials <= 0:
        return 0.0, 1.0
    p = min(successes, trials) / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    center = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, center - half), min(1.0, center + half)


def user_level_test(users_a: Iterable[tuple[int, int]], users_b: Iterable[tuple[int, int]]) -> tuple[float, float]:
    """(z, two-sided p-value) comparing CTR = Σclicks/Σviews of two arms whose units are users.

    Per arm, with n users, v̄ their mean views, R the arm's CTR and d_u = c_u − R·v_u, the delta
    method gives Var(R) ≈ s²(d)/(n·v̄²) (s² the sample variance); z = (R_b − R_a)/√(Var_a + Var_b).
    Users with many views weigh what they should, and their views are not taken as independent.

    >>> z, p = user_level_test([(2, 1), (2, 0)], [(4, 2), (2, 2)])
    >>> round(z, 4), round(p, 4)
    (1.2457, 0.2129)
    """
    arms = []
    for users in (users_a, users_b):
        rows = np.asarray(list(users), dtype=np.float64).reshape(-1, 2)
        views, clicks = rows[:, 0], rows[:, 1]
        if views.size < 2 or views.sum() <= 0:
            return 0.0, 1.0
        ratio = clicks.sum() / views.sum()
        arms.append((ratio, np.var(clicks - ratio * views, ddof=1) / (views.size * views.mean() ** 2)))
    (ratio_a, var_a), (ratio_b, var_b) = arms
    if var_a + var_b <= 0:
        return 0.0, 1.0
    z = float((ratio_b - ratio_a) / math.sqrt(var_a + var_b))
    return z, math.erfc(abs(z) / math.sqrt(2))


def two_proportion_test(clicks_a: int, views_a: int, clicks_b: int, views_b: int) -> tuple[float, float]:
    """(z, two-sided p-value) of H0: both CTRs equal, with the pooled proportion p̄:

    z = (p̂_b − p̂_a) / √(p̄(1−p̄)(1/n_a + 1/n_b)),  p = erfc(|z|/√2).

    >>> z, p = two_proportion_test(100, 1000, 130, 1000)
    >>> round(z, 4), round(p, 4)
    (2.1027, 0.0355)
    >>> two_proportion_test(0, 10, 0, 10)
    (0.0, 1.0)
    """
    if views_a <= 0 or views_b <= 0:
        return 0.0, 1.0
    clicks_a, clicks_b = min(clicks_a, views_a), min(clicks_b, views_b)
    pooled = (clicks_a + clicks_b) / (views_a + views_b)
    variance = pooled * (1 - pooled) * (1 / views_a + 1 / views_b)
    if variance <= 0:
        return 0.0, 1.0
    z = (clicks_b / views_b - clicks_a / views_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One variant's figures; the comparison fields are None for the control (``p_users`` also without users)."""

    name: str
    views: int
    clicks: int
    ctr: float | None
    ci: tuple[float, float]
    lift: float | None = None
    """CTR relative to the control's, minus 1 (0.1 = 10% more clicks per view)."""
    z: float | None = None
    p_value: float | None = None
    """Two-proportion z-test against the control (views as trials)."""
    p_users: float | None = None
    """:func:`user_level_test` against the control (users as units)."""

    @property
    def p_decisive(self) -> float | None:
        """The p-value the verdict uses: the larger of the two tests (both must agree)."""
        known = [p for p in (self.p_value, self.p_users) if p is not None]
        return max(known) if known else None


@dataclass(frozen=True, slots=True)
class Comparison:
    control: str
    arms: list[ArmResult]
    alpha: float
    winner: str | None
    """The best variant that significantly beats the control; the control if all others are significantly
    worse; None otherwise."""

    @property
    def verdict(self) -> str:
        return f"{self.winner} is better" if self.winner else "no significant difference"


def compare(
    counts: Mapping[str, tuple[int, int]],
    control: str,
    alpha: float = 0.05,
    users: Mapping[str, Iterable[tuple[int, int]]] | None = None,
) -> Comparison:
    """Every variant's CTR and 95% Wilson interval, and each one against the control (z-tests, lift).

    ``counts`` maps a variant to (views, clicks); ``users``, if given, to its users' (views, clicks)
    for the user-level test. A variant differs significantly from the control when its decisive
    p-value (the larger of the tests run) is below α/(k−1) (Bonferroni over the k−1 comparisons).
    The winner is the best variant that beats the control so; the control wins when every other
    variant is significantly worse. Otherwise there is no winner.

    >>> c = compare({"a": (1000, 100), "b": (1000, 130)}, control="a")
    >>> c.winner, round(c.arms[1].lift, 2), round(c.arms[1].p_value, 4)
    ('b', 0.3, 0.0355)
    >>> compare({"a": (1000, 100), "b": (1000, 130)}, control="a", alpha=0.01).verdict
    'no significant difference'
    >>> compare({"a": (1_000_000, 100_000), "b": (1_000_000, 130_000)}, control="a").winner  # p underflows to 0.0
    'b'
    """
    if control not in counts:
        raise ValueError(f"the control {control!r} has no data")
    base_views, base_clicks = counts[control]
    base_ctr = base_clicks / base_views if base_views else None
    base_users = list(users[control]) if users is not None else []
    arms = []
    for name, (views, clicks) in counts.items():
        ctr = clicks / views if views else None
        result = ArmResult(name, views, clicks, ctr, wilson_interval(clicks, views))
        if name != control:
            z, p = two_proportion_test(base_clicks, base_views, clicks, views)
            lift = ctr / base_ctr - 1 if ctr is not None and base_ctr else None
            p_users = user_level_test(base_users, users[name])[1] if users is not None else None
            result = ArmResult(name, views, clicks, ctr, result.ci, lift, z, p, p_users)
        arms.append(result)
    others = [a for a in arms if a.name != control]
    level = alpha / max(len(others), 1)
    significant = [a for a in others if a.p_decisive is not None and a.p_decisive < level and a.z]  # 0.0 included
    better = [a for a in significant if (a.z or 0.0) > 0]
    if better:
        winner: str | None = max(better, key=lambda a: a.ctr or 0.0).name
    elif others and len(significant) == len(others):
        winner = control
    else:
        winner = None
    return Comparison(control, arms, alpha, winner)
