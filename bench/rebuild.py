"""How long ``recstream rebuild`` takes to recompute a worker's state from the log, and whether the two agree.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.rebuild [--events 300000]

A synthetic world's users and items are applied first (so every event counts in its user's
segment, the order the rebuild replays; a live run that met events before their user's segment
would differ there), then its event backlog with a trained model is applied by one worker (timed
from its first applied batch to the last, as bench/worker.py does), the worker stops, its state
is dumped; then
the rebuild deletes it and replays the topics in process, timed end to end (deleting the keys,
writing the model's item neighbours, the replay, committing the offsets). The two dumps are
compared key by key (recstream.store.state_dump.differing_keys: exact, user vectors to 1e-6).

Writes ``rebuild_events_per_s`` (baseline: the live worker's rate on the same backlog) only when the
two states are equal; a single differing key fails the run (exit 1, nothing recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis
from recstream.models.als import ALSConfig
from rich.table import Table

from bench.common import fail, figure, machine, record, services, show
from bench.worker import LOGS, produce_backlog, time_backlog
from recstream.contracts.keys import Keys
from recstream.jobs import training
from recstream.jobs.rebuild import rebuild
from recstream.shell.infra import Child, ensure_topics
from recstream.sim.world import synthetic
from recstream.store.state_dump import differing_keys, dump_state, settled

COMMAND = "OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.rebuild"
DEFAULT_EVENTS = 300_000
SETTLE_S = 120.0
"""How long the idle worker may take to finish its segment scores after the backlog: far more than it needs (a
bounded pass is a few short batches), so that a worker that stopped applying fails the run instead of hanging it."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args()
    records = list(synthetic(args.events, seed=11))
    with services() as settings:
        asyncio.run(ensure_topics(settings))
        client = redis.Redis.from_url(settings.redis.url)
        artifacts, _ = training.train(training.collect(records), ALSConfig(), holdout=0)
        asyncio.run(training.publish(settings, artifacts))
        users = [r for r in records if r.kind == "user"]
        asyncio.run(produce_backlog(settings, [r for r in records if r.kind != "event"]))
        worker = Child("worker", settings, LOGS / "worker-rebuild-catalogue.log")
        while client.hlen(f"{settings.redis.prefix}:user:seg") < len(users):
            time.sleep(0.1)
        worker.stop()
        total = asyncio.run(produce_backlog(settings, [r for r in records if r.kind == "event"]))
        live_rate, worker = time_backlog(settings, settings.redis.prefix, total)
        deadline = time.monotonic() + SETTLE_S
        while not settled(client, Keys.of(settings)):  # the idle worker's last segment scores
            if time.monotonic() > deadline:
                fail(f"the worker left segment scores pending {SETTLE_S:.0f} s after the backlog (see its log)")
            time.sleep(0.1)
        worker.stop()
        live = dump_state(client, settings.redis.prefix)
        report = asyncio.run(rebuild(settings))
        rebuilt = dump_state(client, settings.redis.prefix)
    differing = differing_keys(rebuilt, live)
    rate = report.events / report.seconds

    table = Table(title=f"recstream rebuild vs the live worker, Kafka + Redis co-located ({machine()})")
    for column in ("measure", "value"):
        table.add_column(column, justify="right")
    table.add_row("events in the log", f"{total:,}")
    table.add_row("messages replayed", ", ".join(f"{t.split('-')[0]} {n:,}" for t, n in report.messages.items()))
    table.add_row("live worker, counters + user steps + candidates", f"{live_rate:,.0f} events/s")
    table.add_row("rebuild, end to end", f"{report.seconds:.1f} s, {rate:,.0f} events/s")
    table.add_row("derived keys deleted and recomputed", f"{report.deleted_keys:,}")
    table.add_row("keys differing from the live state", f"{len(differing):,} of {len(live):,}")
    show(table)
    if differing:
        fail(f"{len(differing):,} keys differ between the rebuilt and the live state (first 10: {differing[:10]}); "
             f"worker logs in {LOGS}")  # fmt: skip
    if args.no_record:
        return
    command = COMMAND if args.events == DEFAULT_EVENTS else f"{COMMAND} --events {args.events}"
    record({"rebuild_events_per_s": figure(rate, "events/s", command, live_rate)})


if __name__ == "__main__":
    main()
