"""bench/blends.py's verdicts: a ranked row that was mostly not ranked invalidates the run, "ranked lowest" means
below every other row on that seed (and is no verdict without one), a throttled run is shown and never recorded,
and only the full run at the defaults may record."""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import pytest

from bench import blends, common
from bench.blends import MIN_RANKED_SHARE, ranked_lowest, report
from bench.policies import MIN_SERVED_SHARE, make_world, world_config
from recstream.sim.simulator import WORLDS, SimResult
from tests.conftest import MOVIELENS

OFFERED = 1800  # 30 feeds/s × 60 s


def run(regret: float, ranked: int = 0, feeds: int = OFFERED) -> SimResult:
    return SimResult(feeds=feeds, ranked=ranked, regret=regret * feeds)


ARGS = argparse.Namespace(seeds=1, first_seed=1, seconds=60.0, feeds_per_s=30.0, no_record=True)


def tables(monkeypatch, tmp_path, results: dict, args: argparse.Namespace = ARGS) -> dict[str, list[dict[str, str]]]:
    """report()'s tables as bench/run_all.py receives them: by title, each row a dict of its cells."""
    out = tmp_path / "tables.jsonl"
    monkeypatch.setenv(common.TABLES_ENV, str(out))
    report(results, args, "cmd", 1.0)
    parsed = {}
    for line in out.read_text().splitlines():
        title, _, header, _, *rows = json.loads(line)["markdown"].splitlines()
        cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in (header, *rows)]
        parsed[title.strip("*")] = [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]
    return parsed


@pytest.mark.parametrize(("ranked", "valid"), [(49, False), (50, True), (51, True)])
def test_a_ranked_row_with_fewer_than_half_its_pages_ranked_makes_the_run_invalid(ranked, valid):
    assert MIN_RANKED_SHARE == 0.5
    results = {"fresh": {"fixed": [run(2.0, feeds=100)], "ranked": [run(1.0, ranked=ranked, feeds=100)]}}
    if valid:
        report(results, ARGS, "cmd", 1.0)
    else:
        with pytest.raises(SystemExit):
            report(results, ARGS, "cmd", 1.0)


@pytest.mark.parametrize(("ranked_regret", "lowest"), [(1.49, True), (1.5, False), (1.51, False)])
def test_ranked_is_lowest_only_below_every_other_row(ranked_regret, lowest):
    by_row = {"fixed": [run(2.0)], "popular_only": [run(1.5)], "ranked": [run(ranked_regret, ranked=1800)]}
    assert ranked_lowest(by_row, 0) is lowest


def test_with_only_the_ranked_row_the_lowest_columns_say_no_verdict(monkeypatch, tmp_path):
    """Below no other row is not "lowest": it once printed "ranked lowest: yes" (min of nothing is infinity)."""
    shown = tables(monkeypatch, tmp_path, {"fresh": {"ranked": [run(1.0, ranked=1800)]}})
    by_seed = next(rows for title, rows in shown.items() if title.startswith("regret per feed, by world"))
    summary = next(rows for title, rows in shown.items() if title.startswith("closed loop, fresh world"))
    assert by_seed[0]["ranked lowest"] == "–"
    assert summary[0]["seeds with the lowest regret"] == "–"


def test_the_by_seed_table_shows_each_runs_feeds_served(monkeypatch, tmp_path):
    results = {"fresh": {"fixed": [run(2.0, feeds=1790)], "ranked": [run(1.0, ranked=1500, feeds=1500)]}}
    shown = tables(monkeypatch, tmp_path, results)
    by_seed = next(rows for title, rows in shown.items() if title.startswith("regret per feed, by world"))
    assert by_seed[0]["feeds served (fixed / ranked; 1,800 offered)"] == "1,790 / 1,500"


@pytest.mark.parametrize("served", [int(MIN_SERVED_SHARE * OFFERED) - 1, int(MIN_SERVED_SHARE * OFFERED)])
def test_a_throttled_run_fails_a_recorded_run_and_warns_a_validation_one(served, monkeypatch, capsys):
    """A run that served under 95% of the feeds offered saw fewer feeds than the other rows of its seed."""
    recorded = []
    monkeypatch.setattr(blends, "record", recorded.append)
    results = {"fresh": {"fixed": [run(2.0)], "ranked": [run(1.0, ranked=served, feeds=served)]}}
    throttled = served < MIN_SERVED_SHARE * OFFERED
    if throttled:
        with pytest.raises(SystemExit):
            report(results, argparse.Namespace(**{**vars(ARGS), "no_record": False}), "cmd", 1.0)
        assert not recorded
    report(results, ARGS, "cmd", 1.0)  # --no-record: goes on, with a warning when throttled
    assert ("fresh ranked seed 1: " in " ".join(capsys.readouterr().out.split())) is throttled


@pytest.mark.parametrize(
    "argv",
    [
        ["--first-seed", "101"],
        ["--set", "ranker_min_rows=200"],
        ["--rows", "ranked"],
        ["--worlds", "stable"],
        ["--seeds", "2"],
        ["--seconds", "20"],
        ["--feeds-per-s", "20"],
        ["--world-set", "n_categories=40"],
    ],
    ids=" ".join,
)
def test_runs_other_than_the_full_one_at_the_defaults_must_say_they_record_nothing(argv, capsys, monkeypatch):
    """Validation seeds, a candidate's settings or part of the rows, worlds, seeds or seconds, recorded under the
    reported keys, would replace some figures of the full run at the defaults and leave the others: such a run is
    refused at its options unless it says --no-record."""

    def services() -> None:
        raise AssertionError("the run was not refused at its options: it started its services")

    monkeypatch.setattr(blends, "services", services)
    with pytest.raises(SystemExit) as refused:
        blends.main(argv)
    assert refused.value.code == 2 and "add --no-record" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [[], ["--sequential"], ["--worlds", "stable,fresh,sparse"], ["--rows", "ranked,fixed,popular_only,personal_only"]],
    ids=" ".join,
)
def test_the_full_run_at_the_defaults_departs_from_nothing(argv):
    """Running the worlds one after the other, adding a world (its keys are its own) or naming the rows in another
    order still measures every recorded figure at the defaults."""
    parser = blends.options()
    assert blends.departures(parser.parse_args(argv), parser.parse_args([])) == []


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("n_categories=0", "makes the fresh world invalid"),
        ("seed=3", "NAME=VALUE with NAME one of n_users"),  # every run sets its seed
        ("n_categories", "NAME=VALUE"),
        ("browse_popular=0.9", "makes the fresh world invalid"),  # with browse_recent 0.3: shares above 1
        ("base_ctr=0.5", "base_ctr 0.5 is unreachable"),  # its items fade within minutes
    ],
)
def test_a_world_setting_that_is_no_valid_world_is_refused_before_anything_starts(setting, error, capsys, monkeypatch):
    def services() -> None:
        raise AssertionError("the run was not refused at its options: it started its services")

    monkeypatch.setattr(blends, "services", services)
    with pytest.raises(SystemExit) as refused:
        blends.main(["--worlds", "fresh", "--world-set", setting, "--no-record"])
    assert refused.value.code == 2 and error in capsys.readouterr().err


def test_a_world_setting_changes_every_world_of_the_run_and_names_it():
    args = blends.options().parse_args(["--world-set", "appeal_half_life_h=null", "--world-set", "n_categories=40"])
    config = world_config(argparse.Namespace(world="fresh", items_per_s=None, world_set=args.world_set))
    assert (config.appeal_half_life_h, config.n_categories, config.n_items) == (None, 40, WORLDS["fresh"].n_items)
    assert blends.world_name("fresh", args) == "fresh (appeal_half_life_h=null, n_categories=40)"


def test_a_world_that_fails_ends_the_run_at_once_and_the_others_after_their_current_run(monkeypatch):
    """The worlds run side by side: one failing left the other running all its seeds (~20 minutes) before the
    failure showed, and the services up until then; a `kill` of the benchmark waited as long."""
    started: list[str] = []

    def run(base: object, row: str, seed: int, args: argparse.Namespace, models: dict) -> SimResult:
        started.append(args.world)
        if args.world == "stable":
            raise RuntimeError("the stable world failed")
        time.sleep(0.5)  # the fresh world's run, still going when stable fails
        return SimResult(feeds=1)

    monkeypatch.setattr(blends, "services", lambda: contextlib.nullcontext(None))
    monkeypatch.setattr(blends, "run_with_retries", run)
    with pytest.raises(RuntimeError, match="the stable world failed"):
        blends.main(["--no-record", "--seeds", "5", "--rows", "fixed,ranked"])
    assert started.count("stable") == 1 and started.count("fresh") == 1  # of 10 runs each


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"MovieLens 100K is not at {MOVIELENS} (set MOVIELENS_DIR)")
def test_movielens_tastes_make_every_world_of_the_run_one_of_its_users_and_films():
    """The users and genres are MovieLens' (943 users, 19 genres), the world's catalogue at start and clock its own."""
    args = blends.options().parse_args(["--movielens-tastes", str(MOVIELENS), "--no-record"])
    for name in ("fresh", "stable"):
        config = world_config(argparse.Namespace(world=name, items_per_s=None))
        world = make_world(config.model_copy(update={"seed": 201}), args)
        assert (world.config.n_users, world.config.n_categories) == (943, 19)
        assert (world.config.n_items, world.config.appeal_half_life_h) == (config.n_items, config.appeal_half_life_h)
    assert blends.world_name("stable", args) == "stable (MovieLens tastes)"
