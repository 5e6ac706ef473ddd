"""The cost curve's math (bench/scale.py): power-law fits, their O(·) names, extrapolation and the capacity table."""

from __future__ import annotations

import doctest
import math

import pytest

from bench import scale
from bench.scale import GIB, Traffic, capacity, extrapolate, growth, power_fit


def test_the_module_examples_pass():
    assert doctest.testmod(scale).failed == 0


@pytest.mark.parametrize("b", [0.0, 0.5, 1.0, 1.3, 2.0])
def test_a_power_law_is_fitted_back_exactly_from_three_scales(b):
    sizes = [1e4, 1e5, 1e6]
    a, fitted = power_fit(sizes, [7.0 * n**b for n in sizes])
    assert fitted == pytest.approx(b, abs=1e-12) and a == pytest.approx(7.0, rel=1e-9)


def test_n_log_n_is_named_between_linear_and_quadratic_and_log_n_below_root_n():
    sizes = [1e4, 1e5, 1e6]
    assert growth(power_fit(sizes, [n * math.log(n) for n in sizes])[1]) == "O(n)"  # n^1.1 over these decades
    assert growth(power_fit(sizes, [math.log(n) for n in sizes])[1]) == "O(log n)"
    assert growth(power_fit(sizes, [n**1.3 for n in sizes])[1]) == "O(n log n)"


@pytest.mark.parametrize(
    ("b", "label"),
    [(0.05 - 1e-9, "O(1)"), (0.05, "O(log n)"), (0.25 - 1e-9, "O(log n)"), (0.25, "O(√n)"), (0.75, "O(n)"),
     (1.15 - 1e-9, "O(n)"), (1.15, "O(n log n)"), (1.5 - 1e-9, "O(n log n)"), (1.5, "O(n²)")],
)  # fmt: skip
def test_growth_bounds_are_half_open(b, label):
    assert growth(b) == label


@pytest.mark.parametrize("pairs", [([1e4], [1.0]), ([1e4, 1e5], [1.0]), ([1e4, 1e5], [1.0, 0.0]), ([0, 1e5], [1, 2])])
def test_a_fit_refuses_fewer_than_two_positive_pairs(pairs):
    with pytest.raises(ValueError):
        power_fit(*pairs)


def test_extrapolation_follows_the_exponent():
    assert extrapolate(1e6, 3.0, 0.5, 1e8) == pytest.approx(30.0)
    assert extrapolate(1e6, 3.0, -1.0, 1e8) == pytest.approx(0.03)


def needs(rows: list[tuple[str, str, str]]) -> dict[str, str]:
    return {part: need for part, need, _ in rows}


def test_capacity_rounds_every_count_up_at_the_node_limit():
    traffic = Traffic(users=1_000, items_per_user=0.0, redis_node_bytes=1_000_000)
    at = needs(capacity(traffic, 1_000.0, 0.0, 1e9, GIB, 1e9, 1.0))  # exactly one node's worth
    above = needs(capacity(traffic, 1_000.001, 0.0, 1e9, GIB, 1e9, 1.0))
    below = needs(capacity(traffic, 999.999, 0.0, 1e9, GIB, 1e9, 1.0))
    assert at["Redis Cluster masters"] == below["Redis Cluster masters"] == "1"
    assert above["Redis Cluster masters"] == "2"


def test_capacity_counts_workers_and_readers_from_the_peak():
    traffic = Traffic(users=86_400_000, events_per_user_day=1.0, feeds_per_user_day=2.0, peak_factor=1.0)
    assert traffic.peak_events_per_s == pytest.approx(1_000.0) and traffic.peak_feeds_per_s == pytest.approx(2_000.0)
    for rate, workers in ((999.0, "2"), (1_000.0, "1"), (1_001.0, "1")):
        assert needs(capacity(traffic, 1.0, 1.0, rate, GIB, 1_000.0, 1.0))["worker processes"] == workers
    assert needs(capacity(traffic, 1.0, 1.0, 1_000.0, GIB, 999.0, 1.0))["reader processes"] == "3"
    assert needs(capacity(traffic, 1.0, 1.0, 1_000.0, GIB, 1_000.0, 1.0))["reader processes"] == "2"
