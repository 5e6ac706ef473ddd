"""bench/results.json holds only figures a benchmark writes, all in record's shape, and no benchmark's figures half
missing; an invalid run (failed answers, a pipeline that does not reproduce its check, no samples) records nothing.

The registry is bench/common.RESULT_KEYS. A declared key may be missing from results.json only while its
benchmark has recorded nothing at all (it has not run yet), or when it is declared ``optional`` (written
only by a non-default option, or when what it measures happened).
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import date

import pytest

from bench import common
from bench.common import RESULT_KEYS, RESULTS, check_answers, figure, record
from bench.faults import SCENARIOS
from bench.pipeline import Page
from bench.prequential import check_pipeline
from bench.prequential_protocol import Tally
from bench.prequential_report import Scoring, record_figures
from bench.prequential_rows import PipelineResult, ServedRow
from bench.run_all import BENCHES

FIELDS = {"value", "unit", "command", "date"}
COMMAND = re.compile(r"^(OPENBLAS_NUM_THREADS=1 )?\.venv/bin/python -m bench\.(?P<name>[a-z_]+)(\s|$)")


def results() -> dict[str, dict[str, object]]:
    return json.loads(RESULTS.read_text())


def owner(key: str) -> str | None:
    return next((name for name, keys in RESULT_KEYS.items() if key in keys.all), None)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_the_registry_names_every_benchmark_the_runner_knows_and_no_key_twice():
    assert set(RESULT_KEYS) == {b.module_name for b in BENCHES}
    declared = [key for keys in RESULT_KEYS.values() for key in keys.always + keys.optional]
    assert len(declared) == len(set(declared))


def test_every_recorded_key_is_declared_by_the_benchmark_its_command_runs():
    for key, entry in results().items():
        name = owner(key)
        assert name is not None, f"{key}: no benchmark declares it (bench/common.RESULT_KEYS)"
        match = COMMAND.match(str(entry["command"]))
        assert match and match["name"] == name, f"{key}: command {entry['command']!r} does not run bench.{name}"


def test_every_entry_has_the_shape_record_writes():
    for key, entry in results().items():
        assert FIELDS <= entry.keys() <= FIELDS | {"baseline"}, key
        assert is_number(entry["value"]), key
        assert isinstance(entry["unit"], str) and entry["unit"], key
        date.fromisoformat(str(entry["date"]))
        assert "baseline" not in entry or is_number(entry["baseline"]), key


def test_no_declared_key_is_missing_once_its_benchmark_has_recorded():
    recorded = results().keys()
    for name, keys in RESULT_KEYS.items():
        if keys.all & recorded:
            assert set(keys.always) <= recorded, f"{name}: declared, never recorded: {set(keys.always) - recorded}"


def test_every_fault_scenario_has_a_declared_recovery_key():
    """bench/reliability.py records one recovery figure per scenario of bench/faults.py."""
    for name in SCENARIOS:
        assert f"reliability_{name.replace('-', '_')}_recovery_max_s" in RESULT_KEYS["reliability"].all


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """record() into a scratch results.json, as if run by `python -m bench.produce`."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(sys, "argv", ["/repo/bench/produce.py"])
    return tmp_path / "results.json"


def test_record_writes_declared_keys_and_keeps_other_benchmarks_keys(scratch):
    scratch.write_text(json.dumps({"reader_p99_ms": figure(4.4, "ms", ".venv/bin/python -m bench.feeds")}))
    record({"producer_events_per_s": figure(1e5, "events/s", ".venv/bin/python -m bench.produce", 5e4)})
    assert set(json.loads(scratch.read_text())) == {"reader_p99_ms", "producer_events_per_s"}


@pytest.mark.parametrize(
    "figures",
    [
        {"producer_events_per_s_tuned": figure(1.0, "events/s", "x")},  # not declared
        {"producer_events_per_s": figure(float("nan"), "events/s", "x")},  # a quantile of no samples
        {"producer_events_per_s": figure(1.0, "events/s", "x", baseline=float("inf"))},
    ],
)
def test_record_refuses_undeclared_keys_and_figures_that_are_not_finite(scratch, figures):
    with pytest.raises(SystemExit) as exit_:
        record(figures)
    assert exit_.value.code == 1
    assert not scratch.exists()


def test_record_refuses_a_benchmark_without_declared_keys(scratch, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/repo/bench/newbench.py"])
    with pytest.raises(SystemExit):
        record({"producer_events_per_s": figure(1.0, "events/s", "x")})
    assert not scratch.exists()


@pytest.mark.parametrize(("failed", "valid"), [(9, True), (10, True), (11, False)])
def test_check_answers_fails_the_run_above_a_tenth_of_a_percent(failed, valid):
    if valid:
        check_answers("feeds", answered=10_000, failed=failed)
    else:
        with pytest.raises(SystemExit):
            check_answers("feeds", answered=10_000, failed=failed)


def test_check_answers_fails_a_run_with_no_answers():
    with pytest.raises(SystemExit):
        check_answers("feeds", answered=0, failed=0)


def test_histogram_quantile_of_no_samples_is_refused_by_record(scratch):
    empty = common.histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)])
    with pytest.raises(SystemExit):
        record({"producer_events_per_s": figure(empty, "ms", "x")})


def test_prequential_records_its_declared_keys_with_the_frozen_row_as_the_only_baseline(scratch, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/repo/bench/prequential.py"])
    monkeypatch.setattr("bench.prequential_report.record", common.record)

    def tally(*lists: list[str]) -> Tally:
        return Tally([list(x) for x in lists], ["a"] * len(lists))

    frozen, ours = tally(["b", "c"], ["a", "c"]), tally(["a", "b"], ["a", "b"])
    served = {name: ServedRow() for name in ("served", "served_fixed")}
    for row in served.values():
        row.add(Page([("a", "personal"), ("c", "popular")], retried=0, degraded=False), "a")
    tallies = {"popularity (rounds)": tally(["c", "b"], ["c", "b"]), "frozen (rounds)": frozen}
    scoring = Scoring(catalogue=3, ratings={"a": 1, "b": 1, "c": 1}, genres={i: ("x",) for i in "abc"})
    record_figures(tallies, PipelineResult(candidates=ours, served=served), scoring, "cmd")
    written = json.loads(scratch.read_text())
    assert written.keys() == RESULT_KEYS["prequential"].all
    assert written["prequential_hr10_candidates"]["baseline"] == written["prequential_hr10_frozen"]["value"] == 0.5
    assert all("baseline" not in written[f"prequential_hr10_{row}"] for row in ("popularity", "frozen"))


@pytest.mark.parametrize(("identical", "valid"), [(98, False), (99, True), (100, True)])
def test_prequential_fails_when_fewer_than_99_percent_of_candidate_lists_reproduce_the_consistency_check(
    identical, valid
):
    check = Tally([["a", "b"]] * 100, ["a"] * 100)
    candidates = Tally([["a", "b"]] * identical + [["b", "a"]] * (100 - identical), ["a"] * 100)
    tallies = {"consistency (rounds)": check}
    if valid:
        check_pipeline(PipelineResult(candidates=candidates), tallies)
    else:
        with pytest.raises(SystemExit):
            check_pipeline(PipelineResult(candidates=candidates), tallies)


def test_prequential_fails_when_a_reader_left_pages_degraded():
    served = ServedRow()
    for n in range(1000):
        served.add(Page([("a", "personal"), ("b", "popular")], retried=3, degraded=n < 2), "a")
    check = Tally([["a", "b"]] * 1000, ["a"] * 1000)
    with pytest.raises(SystemExit):
        check_pipeline(PipelineResult(candidates=check, served={"served": served}), {"consistency (rounds)": check})
