from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from recstream.models.bandit import (
    BetaPrior,
    choose_explore,
    epsilon_greedy_top_k,
    explore_gate,
    graduated,
    per_row,
    thompson_picks,
    thompson_top_k,
)


def test_prior_has_the_global_ctr_as_mean_and_the_pseudo_count_as_weight():
    prior = BetaPrior.from_ctr(0.04, pseudo_count=25)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(0.04)
    assert prior.alpha + prior.beta == pytest.approx(25)


def test_prior_clamps_a_ctr_outside_the_open_interval_and_rejects_invalid_input():
    """0 and 1 (a tiny sample), below 0 and above 1 (clicks per view where clicks outnumber views) are clamped."""
    assert BetaPrior.from_ctr(0.0, 10).alpha == BetaPrior.from_ctr(-0.1, 10).alpha == pytest.approx(1e-5)
    assert BetaPrior.from_ctr(1.0, 10).beta == BetaPrior.from_ctr(10.07, 10).beta == pytest.approx(1e-5)
    bad_ctr = [(float("nan"), 10, "ctr must be"), (float("inf"), 10, "ctr must be")]
    bad_count = [(0.1, 0, "pseudo_count"), (0.1, -1e-9, "pseudo_count"), (0.1, float("inf"), "pseudo_count")]
    for ctr, n, says in bad_ctr + bad_count:
        with pytest.raises(ValueError, match=says):
            BetaPrior.from_ctr(ctr, n)
    assert BetaPrior.from_ctr(0.04, 1e-9).alpha + BetaPrior.from_ctr(0.04, 1e-9).beta == pytest.approx(1e-9)
    with pytest.raises(ValueError):
        BetaPrior(0.0, 1.0)


@pytest.mark.parametrize(
    ("clicks", "views", "mean"),
    [
        ([], [], 0.05),  # nothing seen: the global CTR
        ([30, 0], [100, 100], (30 + 20 * 0.05) / 220),  # new items clicked above the catalogue: a higher mean
        ([0, 1], [100, 100], (1 + 20 * 0.05) / 220),  # below it: a lower one
        ([40], [10], 1.0 - 1e-6),  # clicks whose views were lost: clamped, as from_ctr clamps
        ([-5, 3], [-100, 30], (3 + 20 * 0.05) / 50),  # a negative count (a damaged key) counts as none
        ([0.0], [1e308, 1e308], 0.05),  # counts past a double's range: the global CTR
    ],
)
def test_the_pool_prior_has_the_pools_smoothed_ctr_as_mean_and_the_pseudo_count_as_weight(clicks, views, mean):
    prior = BetaPrior.of_pool(clicks, views, global_ctr=0.05, ctr_mass=20.0, pseudo_count=10.0)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(mean)
    assert prior.alpha + prior.beta == pytest.approx(10.0)


@pytest.mark.parametrize(("clicks", "alpha"), [(-1, 2.0), (0, 2.0), (1, 3.0)])
def test_a_negative_click_count_counts_as_none_so_every_draw_stays_defined(clicks, alpha):
    """A damaged counter below zero would give α ≤ 0, and every Thompson draw over the pool would raise."""
    a, b = BetaPrior(2.0, 48.0).posterior([clicks], [10])
    assert (a.tolist(), b.tolist()) == ([alpha], [48.0 + 10 - max(clicks, 0)])
    assert thompson_picks(a, b, 1, np.random.default_rng(0))[0].tolist() == [0]


def test_posterior_adds_clicks_and_misses_and_ignores_orphan_clicks():
    alpha, beta = BetaPrior(2.0, 48.0).posterior(np.array([0, 3, 5]), np.array([0, 10, 4]))
    assert alpha.tolist() == [2.0, 5.0, 7.0]
    assert beta.tolist() == [48.0, 55.0, 48.0]


def test_graduation_boundaries_are_exact():
    now = 1_700_000_000_000
    views = np.array([99, 100, 0, 0])
    created = np.array([now, now, now - 3_600_000 + 1, now - 3_600_000])
    assert graduated(views, created, now, max_views=100, max_age_s=3600).tolist() == [
        False,
        True,
        False,
        True,
    ]


def _pool() -> tuple[np.ndarray, np.ndarray]:
    # a clearly good item, a clearly bad one, and one with no data yet (prior mean 0.04)
    return BetaPrior.from_ctr(0.04, 20).posterior([12, 1, 0], [100, 100, 0])


def test_thompson_prefers_the_better_item_but_still_tries_the_new_one():
    alpha, beta = _pool()
    rng = np.random.default_rng(42)
    picks = Counter(int(thompson_top_k(alpha, beta, 1, rng)[0]) for _ in range(4_000))
    assert picks[0] > 0.8 * 4_000
    assert picks[2] > 100  # no data: explored, sometimes
    assert picks[1] < picks[2] / 5  # a lot of evidence against: hardly ever


def test_thompson_is_reproducible_per_seed_and_varies_across_seeds():
    alpha, beta = np.full(50, 2.0), np.full(50, 48.0)
    runs = [thompson_top_k(alpha, beta, 5, np.random.default_rng(seed)).tolist() for seed in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_thompson_never_returns_excluded_or_repeated_items():
    alpha, beta = np.full(10, 1.0), np.full(10, 1.0)
    mask = np.zeros(10, dtype=bool)
    mask[[0, 3, 7]] = True
    for seed in range(50):
        chosen = thompson_top_k(alpha, beta, 10, np.random.default_rng(seed), exclude=mask)
        assert sorted(chosen.tolist()) == [1, 2, 4, 5, 6, 8, 9]
    by_index = thompson_top_k(alpha, beta, 3, np.random.default_rng(0), exclude=[0, 1, 2])
    assert not set(by_index.tolist()) & {0, 1, 2} and len(by_index) == 3


@pytest.mark.parametrize("policy", ["thompson", "epsilon_greedy"])
def test_an_empty_exclude_list_excludes_nothing(policy):
    """np.asarray([]) is float64, which numpy refuses as an index: the reader excluding nothing must not crash."""
    alpha, beta = _pool()
    expected = choose_explore(policy, alpha, beta, 3, np.random.default_rng(3), epsilon=0.5)
    for nothing in ([], (), np.array([], dtype=np.int64)):
        chosen = choose_explore(policy, alpha, beta, 3, np.random.default_rng(3), exclude=nothing, epsilon=0.5)
        assert chosen.tolist() == expected.tolist()


def test_epsilon_zero_is_greedy_by_posterior_mean_with_ties_to_the_lower_index():
    alpha, beta = _pool()
    alpha, beta = np.append(alpha, alpha[2]), np.append(beta, beta[2])  # a second no-data item
    for seed in range(5):
        chosen = epsilon_greedy_top_k(alpha, beta, 4, np.random.default_rng(seed), epsilon=0.0)
        assert chosen.tolist() == [0, 2, 3, 1]
    tied_at_the_cut = epsilon_greedy_top_k([1.0, 1.0, 1.0, 5.0], [9.0, 9.0, 9.0, 5.0], 3, None, epsilon=0.0)  # type: ignore[arg-type]
    assert tied_at_the_cut.tolist() == [3, 0, 1]


def test_epsilon_one_picks_uniformly_without_repeats():
    alpha, beta = _pool()
    rng = np.random.default_rng(3)
    firsts = Counter()
    for _ in range(3_000):
        chosen = epsilon_greedy_top_k(alpha, beta, 3, rng, epsilon=1.0).tolist()
        assert sorted(chosen) == [0, 1, 2]
        firsts[chosen[0]] += 1
    assert all(900 < firsts[i] < 1_100 for i in range(3))


def test_epsilon_greedy_explores_about_epsilon_of_the_time():
    alpha, beta = np.array([50.0, 1.0, 1.0, 1.0]), np.array([50.0, 99.0, 99.0, 99.0])
    rng = np.random.default_rng(4)
    not_best = sum(epsilon_greedy_top_k(alpha, beta, 1, rng, epsilon=0.2)[0] != 0 for _ in range(5_000))
    assert not_best / 5_000 == pytest.approx(0.2 * 3 / 4, abs=0.02)


def test_choose_explore_switches_policy_by_name():
    alpha, beta = _pool()
    ts = choose_explore("thompson", alpha, beta, 2, np.random.default_rng(5))
    assert ts.tolist() == thompson_top_k(alpha, beta, 2, np.random.default_rng(5)).tolist()
    eg = choose_explore("epsilon_greedy", alpha, beta, 2, np.random.default_rng(5), epsilon=0.0)
    assert eg.tolist() == [0, 2]
    with pytest.raises(ValueError, match="policy"):
        choose_explore("ucb", alpha, beta, 2, np.random.default_rng(5))  # type: ignore[arg-type]


def test_k_larger_than_the_pool_returns_every_eligible_item_once():
    alpha, beta = _pool()
    for policy in ("thompson", "epsilon_greedy"):
        chosen = choose_explore(policy, alpha, beta, 10, np.random.default_rng(6), exclude=[1], epsilon=0.5)
        assert sorted(chosen.tolist()) == [0, 2]
        assert choose_explore(policy, alpha, beta, 3, np.random.default_rng(6), exclude=[0, 1, 2]).size == 0


def test_thompson_picks_are_thompson_top_k_with_the_draws_that_chose_them():
    alpha, beta = np.array([1.0, 5.0, 2.0, 9.0]), np.array([9.0, 5.0, 8.0, 1.0])
    index, theta = thompson_picks(alpha, beta, 3, np.random.default_rng(4), exclude=[2])
    assert index.tolist() == thompson_top_k(alpha, beta, 3, np.random.default_rng(4), exclude=[2]).tolist()
    assert theta.tolist() == np.random.default_rng(4).beta(alpha, beta)[index].tolist()
    assert theta.tolist() == sorted(theta.tolist(), reverse=True) and 2 not in index.tolist()
    again = thompson_picks(alpha, beta, 3, np.random.default_rng(4), exclude=[2])
    assert again[0].tolist() == index.tolist() and again[1].tolist() == theta.tolist(), "same seed, same page"


@pytest.mark.parametrize(
    ("p", "kept"),
    [(np.nextafter(0.2, 0.0), 1), (0.2, 1), (np.nextafter(0.2, 1.0), 0)],  # θ/(1 + θ) = 0.25/1.25 = 0.2
)
def test_a_pick_keeps_its_slot_when_its_draw_on_the_rankers_scale_is_at_least_the_displaced_probability(p, kept):
    assert explore_gate(per_row([0.25]), [p]) == kept


@pytest.mark.parametrize(("drawn", "kept"), [(np.nextafter(0.2, 0.0), 0), (0.2, 1), (np.nextafter(0.2, 1.0), 1)])
def test_a_draw_just_below_the_displaced_probability_gives_up_its_slot(drawn, kept):
    assert explore_gate([drawn], [0.2]) == kept


def test_a_draw_per_view_is_a_probability_per_row_of_the_same_clicks():
    clicks, views = 30, 120  # the ranker's rows: 120 views (0) and 30 clicks (1)
    assert per_row([clicks / views]).tolist() == [clicks / (views + clicks)]
    assert per_row([0.0, 1.0]).tolist() == [0.0, 0.5]


def test_the_gate_stops_at_the_first_losing_pick_and_never_keeps_more_than_it_was_given():
    assert explore_gate([0.5, 0.28, 0.2], [0.1, 0.3, 0.0]) == 1, "0.28 < 0.3: that slot and the next go ranked"
    assert explore_gate([1.0, 1.0], [0.0, 0.0]) == 2, "nothing to push off: every pick, and only those, keep"
    assert explore_gate([0.0], [0.0]) == 1 and explore_gate([0.0], [1e-12]) == 0
    assert explore_gate([], []) == 0, "an empty pool keeps nothing"
    with pytest.raises(ValueError, match="one displaced probability per pick"):
        explore_gate([0.2, 0.1], [0.1])
