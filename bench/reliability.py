"""Reliability: every fault scenario of bench/faults.py against private services, one table.

    .venv/bin/python -m bench.reliability [--records 10000] [--only worker-kill redis-kill ...] [--no-record]
    .venv/bin/python -m bench.reliability --clusters [--records 10000]

For each scenario a fresh run (own topics, consumer group, Redis prefix, the same trained model)
applies the synthetic world's users and items, then its events are offered at a steady rate while
the fault is injected again and again at random instants. Offered = events the producer was handed
(all acknowledged); applied = events in Redis's totals; lost / double-applied from the per-item view
and click counters against the events offered (bench/faults.py); recovery = from the fault's end
(process restarted, broker or Redis answering) until Redis holds every event offered by then. Last,
the reader (`recstream serve`, on the first run's state) gets 40 feeds/s while its Redis is
SIGKILLed for 2 s and restarted, twice: failed = anything but a 200, recovery = Redis answering →
the first normal (not degraded) feed. Workers run with a 6 s consumer session (see bench/faults.py).

Stalled = partitions of events, items and users whose watermark is not at the log's end once the run is over.

Writes `reliability_lost_events`, `reliability_double_applied_events` (sums over the scenarios),
`reliability_<scenario>_recovery_max_s`, `reliability_<scenario>_stalled_partitions` (e.g.
`reliability_poison_stalled_partitions`, which must be 0), `reliability_reader_failed_requests`,
`reliability_reader_recovery_max_s`; ``--only`` a subset of the scenarios records nothing, and a reader that did not
recover from every outage fails the run (exit 1) after its table.

``--clusters`` runs the cluster scenarios instead (bench/faults.py ``CLUSTER_SCENARIOS``), on a 3-broker KRaft
Kafka (replication factor 3, min.insync.replicas 2) and a Redis Cluster of 3 masters + 3 replicas, two workers
each: a broker SIGKILLed mid-stream, and the Redis master of the shared slot SIGKILLed (its replica takes
over, without the writes it had not received). Writes `reliability_broker_kill_lost_events` and
`reliability_redis_failover_lost_events` (lost + double-applied would both show; double-applied is in the table).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from rich.table import Table

from bench.common import ROOT, client_of, fail, figure, machine, record, services, show
from bench.faults import (
    CLUSTER_SCENARIOS,
    SCENARIOS,
    FaultRun,
    ReaderLoad,
    Workload,
    model_keys,
    reader_redis_outage,
    run_scenario,
    score,
)
from recstream.contracts.settings import Settings
from recstream.shell import infra
from recstream.shell.infra import Child

COMMAND = ".venv/bin/python -m bench.reliability"
LOGS = ROOT / ".run" / "bench-logs" / "reliability"


def seconds(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}" if values else "—"


async def scenario_run(
    base: Settings, name: str, model: dict[str, bytes], workload: Workload, clusters: infra.Clusters | None = None
) -> tuple[FaultRun, int]:
    """The run and its stalled partitions (counted before its workers stop); a cluster scenario on ``clusters``."""
    run = await FaultRun.open(base, name, model, LOGS, clusters=clusters)
    try:
        await run_scenario(run, workload, (CLUSTER_SCENARIOS if clusters else SCENARIOS)[name])
        stalled = await run.stalled_partitions()
    finally:
        run.stop()
    return run, stalled


async def reader_outage(settings: Settings, users: list[str]) -> tuple[ReaderLoad, list[float | None]]:
    reader = Child("serve", settings, LOGS / "reader.log")
    try:
        await asyncio.to_thread(reader.wait_ready)
        return await reader_redis_outage(reader.url, settings, users)
    finally:
        reader.stop()


def measure(names: list[str], records: int) -> tuple[list[tuple[str, ...]], dict[str, dict[str, object]]]:
    workload = Workload.synthetic(records)
    rows: list[tuple[str, ...]] = []
    figures: dict[str, dict[str, object]] = {}
    lost = double = 0
    with services() as base:
        model = asyncio.run(model_keys(base, workload))
        for name in names:
            run, stalled = asyncio.run(scenario_run(base, name, model, workload))
            tally = score(run.redis, run.keys, workload.events, run.settings.worker.seen_cap)
            run.redis.close()
            lost, double = lost + tally.lost, double + tally.double
            rows.append((SCENARIOS[name].name, str(run.injections), f"{run.offered:,}", f"{tally.applied:,}",
                         str(tally.lost), str(tally.double), str(stalled), seconds(run.recoveries_s)))  # fmt: skip
            key = f"reliability_{name.replace('-', '_')}"
            figures[f"{key}_recovery_max_s"] = figure(max(run.recoveries_s), "s", COMMAND)
            figures[f"{key}_stalled_partitions"] = figure(stalled, "partitions", COMMAND)
            rounded = [round(r, 2) for r in run.recoveries_s]
            print(f"{name}: recoveries {rounded} s, applied events rolled back {run.rolled_back}", flush=True)
        users = sorted({e.user_id for e in workload.events})
        load, recoveries = asyncio.run(reader_outage(base.replace(redis_prefix=names[0]), users))
    failed = sum(load.failed.values())
    back = [r for r in recoveries if r is not None]
    rows.append((
        "reader at 40 feeds/s: its Redis SIGKILLed for 2 s, restarted (feeds, not events)",
        str(len(recoveries)), f"{load.offered:,}", f"{load.ok:,} ({load.degraded:,} degraded)", str(failed), "—", "—",
        seconds(back) if len(back) == len(recoveries) else "never",
    ))  # fmt: skip
    figures["reliability_lost_events"] = figure(lost, "events", COMMAND)
    figures["reliability_double_applied_events"] = figure(double, "events", COMMAND)
    figures["reliability_reader_failed_requests"] = figure(failed, "requests", COMMAND)
    if back and len(back) == len(recoveries):  # a max over the outages it recovered from would claim too little
        figures["reliability_reader_recovery_max_s"] = figure(max(back), "s", COMMAND)
    return rows, figures


def measure_clusters(records: int) -> tuple[list[tuple[str, ...]], dict[str, dict[str, object]]]:
    """The cluster scenarios, each on its own topics and prefix of one pair of clusters."""
    workload = Workload.synthetic(records)
    rows: list[tuple[str, ...]] = []
    figures: dict[str, dict[str, object]] = {}
    run_dir = Path(tempfile.mkdtemp(prefix="bench-clusters-", dir=ROOT / ".run"))
    try:
        with infra.sigterm_interrupts(), infra.running_clusters(infra.private_settings(run_dir, ROOT / ".cache")) as c:
            model = asyncio.run(model_keys(c.settings, workload))
            for name, scenario in CLUSTER_SCENARIOS.items():
                run, stalled = asyncio.run(scenario_run(c.settings, name, model, workload, c))
                client = client_of(run.settings)  # the run's was closed with it (a closed cluster client stays so)
                tally = score(client, run.keys, workload.events, run.settings.worker.seen_cap)
                client.close()
                rows.append((scenario.name, str(run.injections), f"{run.offered:,}", f"{tally.applied:,}",
                             str(tally.lost), str(tally.double), str(stalled), seconds(run.recoveries_s)))  # fmt: skip
                lost = figure(tally.lost, "events", f"{COMMAND} --clusters")
                figures[f"reliability_{name.replace('-', '_')}_lost_events"] = lost
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000, help="synthetic world messages (users+items+events)")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--clusters", action="store_true", help="the cluster scenarios only (a replicated Kafka, "
                        "a Redis Cluster)")  # fmt: skip
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args()
    rows, figures = measure_clusters(args.records) if args.clusters else measure(args.only, args.records)
    load = os.getloadavg()[1]  # recovery times stretch with other processes' load on the shared cores
    table = Table(
        title=f"faults injected mid-stream, Kafka + Redis + workers co-located ({machine()}; load average {load:.0f})"
    )
    columns = ("fault", "injected", "offered", "applied", "lost", "double-applied", "stalled partitions",
               "recovery median / max (s)")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "fault" else "right")
    for row in rows:
        table.add_row(*row)
    show(table)
    if not args.clusters and "reliability_reader_recovery_max_s" not in figures:
        fail("the reader did not recover from every Redis outage (the table's 'never'); recording the other figures "
             "would leave the last run's recovery time beside them")  # fmt: skip
    if args.no_record or (not args.clusters and set(args.only) != set(SCENARIOS)):
        print("not recorded: --no-record, or --only a subset (the sums would claim every scenario)")
    else:
        record(figures)


if __name__ == "__main__":
    main()
