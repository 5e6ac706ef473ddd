"""Faults injected mid-stream against the real services; afterwards every piece of state is what a clean run
leaves: counters, rankings, bandit pool, seen sets exactly, user vectors to 1e-6, the same candidate lists.

Each test runs one of the benchmark's scenarios (bench/faults.py SCENARIOS): the workload's events are
offered at a steady rate while the fault is injected several times at random instants, at most
``MAX_INJECTIONS`` times (the benchmark kills its worker 8 times for its recovery statistics; each kill waits
out the 6 s consumer session, and four random kills take the same recovery path). Then the harness's tally
(nothing lost, nothing double-applied, seen sets exact) and the whole state against ``clean_state``.
Recovery times are the benchmark's business (bench/reliability.py), not asserted here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.faults import SCENARIOS, reader_redis_outage, run_scenario, score
from recstream.shell.infra import Child
from recstream.store.state_dump import differing_keys
from tests.reliability.conftest import run_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_INJECTIONS = 4


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_state_after_faults_equals_a_clean_run(scenario, fault_run, workload, clean_state):
    run, faults = await fault_run(scenario), SCENARIOS[scenario]
    faults = replace(faults, times=min(faults.times, MAX_INJECTIONS))
    await run_scenario(run, workload, faults)
    tally = score(run.redis, run.keys, workload.events, run.settings.worker.seen_cap)
    assert run.injections == faults.times
    assert (run.rolled_back > 0) == (scenario == "redis-rollback"), "the rollback lost applied events"
    assert (run.offered, run.acked, tally.applied) == (len(workload.events),) * 3
    assert (tally.lost, tally.double, tally.seen_missing, tally.seen_extra) == (0, 0, 0, 0)
    assert differing_keys(run_state(run), clean_state) == []
    assert await run.stalled_partitions() == 0


async def test_reader_under_load_answers_every_feed_while_redis_is_down_and_recovers(
    fault_services, workload, clean_state, tmp_path
):
    """40 feeds/s while the reader's Redis is SIGKILLed and restarted twice: only 200s, degraded while
    Redis is dead, normal again by themselves once it answers."""
    reader = Child("serve", fault_services.replace(redis_prefix="clean"), tmp_path / "reader.log")
    try:
        reader.wait_ready()
        users = sorted({e.user_id for e in workload.events})
        load, recoveries = await reader_redis_outage(reader.url, fault_services, users)
    finally:
        reader.stop()
    assert load.failed == {} and load.ok == load.offered
    assert 0 < load.degraded < load.ok
    assert None not in recoveries
