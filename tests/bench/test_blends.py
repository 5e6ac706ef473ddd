"""bench/blends.py's verdicts: a ranked row that was mostly not ranked invalidates the run, and "ranked lowest"
means below every other row on that seed."""

from __future__ import annotations

import argparse

import pytest

from bench.blends import MIN_RANKED_SHARE, ranked_lowest, report
from recstream.sim.simulator import SimResult


def run(regret: float, ranked: int = 0, feeds: int = 100) -> SimResult:
    return SimResult(feeds=feeds, ranked=ranked, regret=regret * feeds)


ARGS = argparse.Namespace(seeds=1, first_seed=1, seconds=60.0, feeds_per_s=30.0, no_record=True)


@pytest.mark.parametrize(("ranked", "valid"), [(49, False), (50, True), (51, True)])
def test_a_ranked_row_with_fewer_than_half_its_pages_ranked_makes_the_run_invalid(ranked, valid):
    assert MIN_RANKED_SHARE == 0.5
    results = {"fresh": {"fixed": [run(2.0)], "ranked": [run(1.0, ranked=ranked)]}}
    if valid:
        report(results, ARGS, "cmd", 1.0)
    else:
        with pytest.raises(SystemExit):
            report(results, ARGS, "cmd", 1.0)


@pytest.mark.parametrize(("ranked_regret", "lowest"), [(1.49, True), (1.5, False), (1.51, False)])
def test_ranked_is_lowest_only_below_every_other_row(ranked_regret, lowest):
    by_row = {"fixed": [run(2.0)], "popular_only": [run(1.5)], "ranked": [run(ranked_regret, ranked=100)]}
    assert ranked_lowest(by_row, 0) is lowest


@pytest.mark.parametrize("argv", [["--first-seed", "101"], ["--set", "ranker_min_rows=200"]], ids=" ".join)
def test_validation_runs_must_say_they_record_nothing_before_anything_starts(argv, capsys):
    """Validation seeds (101–103) or a candidate's settings recorded under the reported keys would replace the
    figures of seeds 1–5 at the defaults; such a run is refused at its options unless it says --no-record."""
    from bench.blends import main

    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and "add --no-record" in capsys.readouterr().err
