"""bench/policies.py's closed-loop runs: every run of a seed starts its users at the same point of the world."""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from bench import policies
from recstream.contracts.settings import load_settings
from recstream.sim.simulator import SimResult

ARGS = argparse.Namespace(world="fresh", items_per_s=None, history_s=300.0, history_rate=40.0, feeds_per_s=30.0,
                          concurrency=16, seconds=60.0)  # fmt: skip


@pytest.mark.parametrize(("lead_s", "on_time"), [(0.05, False), (30.0, True)])
def test_a_run_whose_setup_outlasts_the_lead_is_invalid_before_its_users_start(
    lead_s, on_time, monkeypatch, tmp_path, capsys
):
    """Setup (here 0.2 s: topics, history, model, worker and reader) past SETUP_S would start the users later in the
    world than the seed's other runs: the run fails instead of running on another stretch of the timeline."""
    started: list[int] = []

    async def nothing(*_: object) -> None:
        return None

    async def history(*_: object) -> SimpleNamespace:
        return SimpleNamespace(items=0, users=set(), seen={}, events=0)

    @contextmanager
    def system(*_: object):
        time.sleep(0.2)  # the worker and reader starting
        yield SimpleNamespace(reader_url="http://127.0.0.1:9")

    class Simulator:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        async def run(self, seconds: float, start_ms: int) -> SimResult:
            started.append(start_ms)
            return SimResult()

    monkeypatch.setattr(policies, "SETUP_S", lead_s)
    monkeypatch.setattr(policies.infra, "ensure_topics", nothing)
    monkeypatch.setattr(policies.training, "publish", nothing)
    monkeypatch.setattr(policies, "publish_history", history)
    monkeypatch.setattr(policies, "system", system)
    monkeypatch.setattr(policies, "Simulator", Simulator)
    base = load_settings(run_dir=tmp_path)
    if on_time:
        policies.run_one(base, "fixed", 1, ARGS, {1: object()})
        assert len(started) == 1
    else:
        with pytest.raises(SystemExit) as exit_:
            policies.run_one(base, "fixed", 1, ARGS, {1: object()})
        assert exit_.value.code == 1 and not started
        said = " ".join(capsys.readouterr().err.split())
        assert "invalid run, nothing recorded" in said and "would start later in the world than the other runs" in said
