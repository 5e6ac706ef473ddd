"""The experiment report's counts and checks: a user's event id counted once, a sample-ratio mismatch said first."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from recstream.contracts.events import Event
from recstream.jobs.experiment_report import count_variants, sample_ratio
from recstream.shell.cli import app
from recstream.shell.infra import free_port

TS = 1_700_000_000_000


def event(kind: str, user: str, event_id: str | None, variant: str = "ab:a") -> Event:
    return Event(type=kind, user_id=user, item_id="i1", ts=TS, event_id=event_id, variant=variant)


def test_a_resent_event_is_counted_once_as_the_workers_and_training_count_it():
    """A client retrying after a 503 sends the same events again: each copy was counted, so a retried arm's views
    and clicks (and its CTR's significance) grew with its errors."""
    sent = [event("view", "u1", "e1"), event("click", "u1", "e2"), event("view", "u2", "e1")]
    retried = sent + sent + [event("view", "u1", "e1", variant="ab:b")]  # the same id: the same event, once
    no_ids = [event("view", "u3", None)] * 2  # nothing to tell copies apart by: both counted, as the workers do
    counts = count_variants([*retried, *no_ids], "ab")
    assert counts.totals == {"a": (4, 1)}
    assert sorted(counts.users["a"]) == [(1, 0), (1, 1), (2, 0)]
    assert counts.repeated == 4


def test_users_counted_in_more_than_one_arm_are_counted():
    counts = count_variants([event("view", "u1", "e1"), event("view", "u1", "e2", variant="ab:b"),
                             event("view", "u2", "e3"), event("view", "u3", "e4", variant="ab:b")], "ab")  # fmt: skip
    assert counts.in_several_arms == 1


def test_the_sample_ratio_test_matches_a_hand_computed_chi_square():
    # 1,100 / 900 under 50/50: χ² = 2·100²/1000 = 20, 1 df: p = P(|Z| > √20) = erfc(√10) = 7.744e-6
    ratio = sample_ratio({"a": 1_100, "b": 900}, {"a": 0.5, "b": 0.5})
    assert ratio.p_value == pytest.approx(7.7442e-6, rel=1e-4) and ratio.mismatch
    # 700 / 300 under 70/30 fits exactly; an arm without users counts as 0
    assert sample_ratio({"a": 700, "b": 300}, {"a": 0.7, "b": 0.3}).p_value == pytest.approx(1.0)
    assert sample_ratio({"a": 30}, {"a": 0.5, "b": 0.5}).mismatch


def report(tmp_path: Path, split: tuple[int, int], *extra: str) -> str:
    """``recstream experiment report ab --file …`` of arms of ``split`` users (10 views and 0–2 clicks each in a, 2–4
    in b) with the experiment configured 50/50; its output."""
    lines = []
    ids = itertools.count()
    for arm, users, clicks in (("a", split[0], 0), ("b", split[1], 2)):
        for u in range(users):
            for k in range(10):
                kind = "click" if k < clicks + u % 3 else "view"
                lines.append(orjson.dumps(event(kind, f"{arm}{u}", f"e{next(ids)}", f"ab:{arm}").model_dump()))
                if kind == "click":
                    lines.append(orjson.dumps(event("view", f"{arm}{u}", f"e{next(ids)}", f"ab:{arm}").model_dump()))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    experiment = {"name": "ab", "salt": "s", "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}]}
    env = {"COLUMNS": "250", "RECSTREAM_EXPERIMENT": json.dumps(experiment),
           "RECSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}  # fmt: skip
    done = CliRunner().invoke(app, ["experiment", "report", "ab", "--file", str(path), *extra], env=env)
    assert done.exit_code == 0, done.output
    return " ".join(done.output.split())


def test_a_sample_ratio_mismatch_is_said_first_and_no_winner_is_declared(tmp_path: Path):
    """1,800 / 200 users under 50/50 weights: the arms were not randomized as configured, and the report still
    named b the better one."""
    said = report(tmp_path, (1_800, 200))
    assert said.startswith("experiment ab (control a): SAMPLE RATIO MISMATCH, no winner declared: users 1,800 / 200")
    assert "is better" not in said


def test_a_split_that_fits_the_weights_is_compared_as_before(tmp_path: Path):
    said = report(tmp_path, (1_010, 990))
    assert said.startswith("experiment ab (control a): b is better"), said
    assert "sample ratio: users 1,010 / 990 against weights 0.5 / 0.5 (a, b), p = 0.65" in said
