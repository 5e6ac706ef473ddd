"""bench/soak.py: a --quick smoke run records nothing."""

from __future__ import annotations

import pytest

from bench import soak
from bench.soak import Sample


def sample(minute: float) -> Sample:
    return Sample(minute, 5000.0, 5000.0, 0, 5.0, 20.0, 500.0, 10.0, 10_000, 0, 0, 200.0, 100.0, 50.0, 1000)


@pytest.mark.parametrize(("argv", "records"), [(["--quick"], False), ([], True)])
def test_a_quick_run_writes_no_results(argv, records, monkeypatch):
    """Three minutes of 20 s rows are not the half-hour soak its keys promise."""
    recorded = []
    monkeypatch.setattr(soak, "soak", lambda args, console: ([sample(m) for m in (1.0, 2.0, 3.0)], 1))
    monkeypatch.setattr(soak, "record", recorded.append)
    monkeypatch.setattr(soak.signal, "signal", lambda *_: None)  # the test process keeps its own SIGTERM handler
    soak.main(argv)
    assert bool(recorded) is records
