"""On a replicated Kafka and a Redis Cluster (``--clusters``), two workers apply a stream and two readers answer
feeds while one broker is SIGKILLed, or while the Redis master of the shared slot is SIGKILLed and its replica
takes over: nothing is lost or applied twice (per-item counters and seen sets against the events offered,
counted independently), and every feed request is answered, degraded at most during the failover."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.faults import (
    CLUSTER_SCENARIOS,
    FaultRun,
    ReaderLoad,
    Workload,
    load_reader,
    model_keys,
    run_scenario,
    score,
)
from recstream.shell import infra
from recstream.shell.infra import Child

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEEDS_PER_S = 10  # per reader
QUIET_S = 3.0  # after the last recovery: every feed in this window must be a normal one


@pytest.fixture(scope="module")
def cluster_model(cluster_nodes: infra.Clusters, workload: Workload) -> dict[str, bytes]:
    return asyncio.run(model_keys(cluster_nodes.settings, workload))


@pytest.mark.parametrize("name", list(CLUSTER_SCENARIOS))
async def test_two_workers_and_two_readers_lose_nothing_through_cluster_faults(
    name: str, clusters: infra.Clusters, cluster_model: dict[str, bytes], workload: Workload, tmp_path: Path
):
    run = await FaultRun.open(clusters.settings, name.replace("-", ""), cluster_model, tmp_path, clusters=clusters)
    # a 1 s Redis deadline: on this loaded machine 50 ms runs out without any fault, and the test is about faults
    reading = run.settings.replace(reader_redis_timeout_s=1.0)
    readers = [Child("serve", reading, tmp_path / f"reader-{k}.log") for k in range(2)]
    loads, stop = [ReaderLoad() for _ in readers], asyncio.Event()
    users = sorted({e.user_id for e in workload.events})
    try:
        for reader in readers:
            await asyncio.to_thread(reader.wait_ready)
        loading = [asyncio.ensure_future(load_reader(r.url, users, FEEDS_PER_S, stop, load))
                   for r, load in zip(readers, loads, strict=True)]  # fmt: skip
        await run_scenario(run, workload, CLUSTER_SCENARIOS[name])
        quiet = time.monotonic()
        await asyncio.sleep(QUIET_S)
        stop.set()
        await asyncio.gather(*loading)
        # before the tally: run_scenario waited for the shared slot's totals, and a batch is one call per slot (the
        # seen sets in the users' slots), sent together, the failed ones retried: every slot's watermarks first
        stalled = await run.stalled_partitions()
        tally = score(run.redis, run.keys, workload.events, run.settings.worker.seen_cap)
        assert run.injections == CLUSTER_SCENARIOS[name].times
        assert (run.offered, run.acked, tally.applied) == (len(workload.events),) * 3
        assert (tally.lost, tally.double, tally.seen_missing, tally.seen_extra) == (0, 0, 0, 0)
        assert stalled == 0
    finally:
        stop.set()
        for reader in readers:
            reader.stop()
        run.stop()
    for load in loads:
        assert load.ok > 0 and sum(load.failed.values()) == 0, load.failed
        assert not any(degraded for t, degraded in load.answers if t > quiet), "degraded after the recovery"
        if name == "broker-kill":  # feeds read Redis only: a broker down is nothing to them
            assert load.degraded == 0
