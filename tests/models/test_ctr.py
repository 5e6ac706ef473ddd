from __future__ import annotations

import math
import random

import numpy as np
import pytest
from recstream.models.ctr import (
    TREND_FRACTION_BITS,
    quantize_ctr,
    quantized_global_ctr,
    segment_ctr,
    smoothed_ctr,
    trend_epochs,
    trend_increment,
    trend_value,
)


def test_smoothed_ctr_scalar_and_array_agree_bit_for_bit():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 10_000, 500)
    clicks = rng.binomial(views, 0.05)
    vectorized = smoothed_ctr(clicks, views, 0.0431, 37.5)
    one_by_one = [float(smoothed_ctr(int(c), int(v), 0.0431, 37.5)) for c, v in zip(clicks, views, strict=True)]
    assert vectorized.tolist() == one_by_one
    assert smoothed_ctr(0, 0, 0.0431, 37.5) == 0.0431


def test_smoothed_ctr_rejects_a_prior_worth_no_views():
    with pytest.raises(ValueError, match="prior_mass"):
        smoothed_ctr(0, 0, 0.1, 0.0)


def test_segment_ctr_falls_back_to_the_items_global_smoothed_ctr():
    global_smoothed = smoothed_ctr([50, 1], [100, 100], 0.05, 20.0)
    unseen = segment_ctr([0, 0], [0, 0], [50, 1], [100, 100], global_ctr=0.05, prior_mass=20.0)
    np.testing.assert_array_equal(unseen, global_smoothed)
    # with segment data the score moves toward the segment's own rate, more with a smaller segment mass
    light = segment_ctr(9, 10, 50, 100, global_ctr=0.05, prior_mass=20.0, segment_prior_mass=5.0)
    heavy = segment_ctr(9, 10, 50, 100, global_ctr=0.05, prior_mass=20.0)
    assert light == pytest.approx((9 + 5 * global_smoothed[0]) / 15)
    assert light > heavy > global_smoothed[0]


def test_quantize_ctr_is_on_the_grid_within_half_a_step_and_idempotent():
    rel = 0.005
    for p in np.geomspace(1e-6, 1.0, 2_001):
        q = quantize_ctr(float(p), rel)
        k = math.log(q) / math.log1p(rel)
        assert abs(k - round(k)) < 1e-9
        assert abs(q / p - 1) <= rel / 2 + 1e-12
        assert quantize_ctr(q, rel) == q


def test_quantize_ctr_is_monotone_and_stable_across_a_grid_boundary():
    rel = 0.005
    log_step = math.log1p(rel)
    k = math.floor(math.log(0.04) / log_step)
    boundary = math.exp((k + 0.5) * log_step)
    lower, upper = math.exp(k * log_step), math.exp((k + 1) * log_step)
    near = [boundary]
    for _ in range(20):
        near = [math.nextafter(near[0], 0.0), *near, math.nextafter(near[-1], 1.0)]
    results = [quantize_ctr(p, rel) for p in near]
    assert results == [quantize_ctr(p, rel) for p in near]  # same input, same float
    assert set(results) == {lower, upper}
    assert results == sorted(results)  # one switch point, no flip-flop
    assert results[0] == lower and results[-1] == upper


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, math.nan])
def test_quantize_ctr_rejects_ctrs_outside_0_1(p):
    with pytest.raises(ValueError):
        quantize_ctr(p, 0.005)


def test_quantized_global_ctr_is_defined_before_the_first_click():
    q = quantized_global_ctr(0, 0, rel_step=0.005, default_ctr=0.05, default_mass=100.0)
    assert q == pytest.approx(0.05, rel=0.003)
    assert quantized_global_ctr(0, 5_000, rel_step=0.005, default_ctr=0.05, default_mass=100.0) > 0


def test_rescore_rule_makes_scores_depend_only_on_final_counters():
    """The worker protocol from `quantize_ctr`'s docstring, under three random batchings."""
    rng = np.random.default_rng(1)
    n_items, n_events = 40, 4_000
    items = rng.integers(0, n_items, n_events)
    clicks = rng.random(n_events) < 0.03 + 0.1 * (items % 3 == 0)
    rel, p0, m0, m = 0.005, 0.05, 50.0, 20.0

    def run(batch_ends: list[int]) -> dict[int, float]:
        c, v = np.zeros(n_items, np.int64), np.zeros(n_items, np.int64)
        scores: dict[int, float] = {}
        prior, start = None, 0
        for end in batch_ends:
            np.add.at(v, items[start:end], 1)
            np.add.at(c, items[start:end], clicks[start:end])
            q = quantized_global_ctr(int(c.sum()), int(v.sum()), rel_step=rel, default_ctr=p0, default_mass=m0)
            touched = np.arange(n_items) if q != prior else np.unique(items[start:end])
            scores.update(zip(touched.tolist(), smoothed_ctr(c[touched], v[touched], q, m).tolist(), strict=True))
            prior, start = q, end
        return scores

    runs = []
    for seed in range(3):
        cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n_events), 60, replace=False))
        runs.append(run([*cuts.tolist(), n_events]))
    assert runs[0] == runs[1] == runs[2]


def test_trend_epochs_rotate_on_multiples_of_r_half_lives():
    current, previous = trend_epochs([0, 7_999, 8_000, -1], half_life_ms=1_000, epoch_half_lives=8)
    assert current.tolist() == [0, 0, 8_000, -8_000]
    assert (current - previous).tolist() == [8_000] * 4


def test_trend_sums_are_exact_in_any_order_and_decay_with_the_half_life():
    rng = np.random.default_rng(2)
    h, r = 3_600_000, 8
    start = 1_700_000_000_000 // (h * r) * (h * r)
    ts = start + rng.integers(0, 2 * h * r, 5_000)
    weights = rng.choice([1.0, 3.0], 5_000)
    now = int(ts.max())
    epoch = trend_epochs(now, h, r)[1]
    increments = trend_increment(ts, epoch, h, weights).tolist()
    totals = set()
    for _ in range(5):
        random.Random(len(totals)).shuffle(increments)
        total = 0.0  # a Redis score is a double
        for inc in increments:
            total += inc
        totals.add(total)
    assert len(totals) == 1
    exact = float(np.sum(weights * np.exp2(-(now - ts) / h)))
    assert float(trend_value(totals.pop(), now, epoch, h)) == pytest.approx(exact, rel=1e-6)


def test_the_read_key_holds_the_last_epoch_and_stays_below_2_53():
    h, r = 1_000, 8
    length = h * r
    ts = np.arange(0, 10 * length, 7)
    now = int(ts[-1])
    read_epoch = trend_epochs(now, h, r)[1]
    current, previous = trend_epochs(ts, h, r)
    in_key = (current == read_epoch) | (previous == read_epoch)
    assert np.all(in_key[ts > now - length])
    assert np.all(ts[in_key] >= read_epoch)
    # the largest possible increment: an event 2R half-lives after the epoch, where the key stops taking events
    per_event = int(trend_increment(read_epoch + 2 * length, read_epoch, h))
    assert per_event == 2 ** (TREND_FRACTION_BITS + 2 * r)
    # ZINCRBY adds to a double: the key stays exact while it holds fewer than 2^21 such events (a multiple of 2^32,
    # exact in a double, as each partial sum was), so even the odd increment of an event at the epoch's start is
    # kept to the unit; from 2^21 on the double's unit is 2 and it is rounded away
    odd = int(trend_increment(read_epoch + 1, read_epoch, h))
    assert odd % 2 == 1
    for events, exact in [(2**21 - 1, True), (2**21, False), (2**21 + 1, False)]:
        held = float(events * per_event)
        assert (int(held + odd) == events * per_event + odd) is exact
