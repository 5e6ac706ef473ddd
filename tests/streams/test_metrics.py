"""The worker's bulk histogram observation equals one observe per value (no broker needed)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from recstream.streams.metrics import observe_many


def test_observe_many_exposes_what_one_observe_per_value_does():
    values = np.concatenate([np.random.default_rng(0).exponential(0.4, 2_000), [0.0, 0.1, 0.5, 30.0, 99.0]])
    exposed = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", buckets=(0.01, 0.1, 0.5, 1, 30), registry=registry)
        if bulk:
            observe_many(histogram, values)
        else:
            for value in values:
                histogram.observe(value)
        lines = generate_latest(registry).decode().splitlines()
        sums = [float(line.split()[-1]) for line in lines if line.startswith("h_sum")]
        exposed.append(([line for line in lines if not line.startswith(("h_sum", "h_created"))], sums))
    (one_by_one, sum_one), (at_once, sum_bulk) = exposed
    assert at_once == one_by_one
    assert np.isclose(sum_bulk, sum_one, rtol=1e-12)
