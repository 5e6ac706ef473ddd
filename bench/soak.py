"""Soak: steady events and feeds for half an hour; do memory, lag and freshness stay flat?

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 5000] [--feeds 500]

One worker (with a trained model: counters, user steps, candidates) and one reader on private
Kafka + Redis (bench/common.py). A synthetic-world history is produced and trained on first;
then, every interval, ``--rate`` events/s stamped "now" (bench/worker.py's live load) and
``--feeds`` feeds/s at a fixed offered rate (bench/feeds.py's open-loop load generator, its
own process) for the same users and items. After ``--warmup-minutes`` (seen sets reach their
cap, session lists reach rate × TTL) each interval reports worker and reader RSS, Redis
``used_memory`` and key count, events behind (offered − applied), freshness p50/p99 over the
interval (the worker's histogram) and feed latency. The figures of interest are the growth
from the first measured interval to the last: bounded state means it stays near 0.

Scroll sessions live ``session_ttl_s`` after their last page, so Redis holds about
feeds/s × TTL session lists at steady state; ``--session-ttl-s`` (300 by default, the
setting's default is 1800) keeps that steady state inside the warm-up.

No baseline: there is no other system to soak on the same machine; every figure is the system
against itself, growth from the first measured interval to the last. More than 0.1% of the feeds
answered non-200 or degraded over the run fails it (bench/common.check_answers), nothing recorded.

Writes ``soak_worker_rss_growth_pct``, ``soak_reader_rss_growth_pct``, ``soak_redis_memory_growth_pct``,
``soak_freshness_p99_ms`` (the last interval) and ``soak_lag_events_max``; ``--quick`` (a 3-minute smoke run, not
a soak) writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import redis
from recstream.models.als import ALSConfig
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, check_answers, fail, figure, machine, record, services, show
from bench.feeds import FEED_PATH, load
from bench.worker import applied, live_load, produce_backlog, quantiles_ms
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.jobs import training
from recstream.shell.infra import Child, ensure_topics
from recstream.sim.world import synthetic

COMMAND = ".venv/bin/python -m bench.soak"
LOGS = ROOT / ".run" / "bench-logs"
FEED_CONNECTIONS = 64
HISTORY_TIMEOUT_S = 600.0
"""The history must be applied within this (a worker that applies nothing fails the run instead of hanging it)."""


@dataclass(frozen=True)
class Sample:
    minute: float
    offered_per_s: float
    applied_per_s: float
    behind: int
    fresh_p50_ms: float
    fresh_p99_ms: float
    feeds_per_s: float
    feed_p99_ms: float
    feed_requests: int
    feed_errors: int
    feed_degraded: int
    worker_rss_mb: float
    reader_rss_mb: float
    redis_mb: float
    redis_keys: int


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS in /proc/<pid>/status)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def prepare(settings: Settings, history: int) -> tuple[list[str], list[str], int]:
    """Publish a synthetic world's history and train the model the worker will serve on it."""
    records = list(synthetic(history, seed=11))
    asyncio.run(ensure_topics(settings))
    total = asyncio.run(produce_backlog(settings, records))
    artifacts, _ = training.train(training.collect(records), ALSConfig(), holdout=0)
    asyncio.run(training.publish(settings, artifacts))
    users = [r.value.user_id for r in records if r.kind == "user"]
    items = [r.value.item_id for r in records if r.kind == "item"]
    return users, items, total


def soak(args: argparse.Namespace, console: Console) -> tuple[list[Sample], int]:
    with services(session_ttl_s=args.session_ttl_s) as settings:
        LOGS.mkdir(parents=True, exist_ok=True)
        users, items, backlog = prepare(settings, args.history)
        client, totals = redis.Redis.from_url(settings.redis.url), Keys.of(settings)("totals")
        worker = Child("worker", settings, LOGS / "soak-worker.log")
        reader = None
        try:
            waited = time.monotonic() + HISTORY_TIMEOUT_S
            while (done := applied(client, totals)) < backlog:
                worker.check()
                if time.monotonic() > waited:
                    fail(f"the worker applied {done:,} of {backlog:,} history events in {HISTORY_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
            console.print(f"history of {backlog:,} events applied; model trained; starting the load")
            reader = Child("serve", settings, LOGS / "soak-reader.log")
            reader.wait_ready()
            samples: list[Sample] = []
            offered = 0
            started = time.monotonic()
            deadline = started + (args.warmup_minutes + args.minutes) * 60  # wall clock: a slow interval runs long
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                while time.monotonic() < deadline:
                    before, done_before, t0 = worker.metrics(), applied(client, totals), time.monotonic()
                    feeds = pool.submit(
                        load, "open", reader.port, FEED_PATH, users, FEED_CONNECTIONS, args.feeds,
                        args.interval_s,
                    )  # fmt: skip
                    sent = asyncio.run(live_load(settings, users, items, args.rate, args.interval_s))
                    offered += sent
                    f = feeds.result()
                    elapsed = time.monotonic() - t0
                    done = applied(client, totals)
                    fresh50, fresh99 = quantiles_ms(before, worker.metrics(), "recstream_worker_freshness_seconds")
                    info = client.info("memory")
                    samples.append(Sample(
                        minute=(time.monotonic() - started) / 60,
                        offered_per_s=sent / elapsed,
                        applied_per_s=(done - done_before) / elapsed,
                        behind=backlog + offered - done,
                        fresh_p50_ms=fresh50,
                        fresh_p99_ms=fresh99,
                        feeds_per_s=f["per_s"],
                        feed_p99_ms=f["p99"],
                        feed_requests=f["requests"],
                        feed_errors=f["errors"],
                        feed_degraded=f["degraded"],
                        worker_rss_mb=rss_mb(worker.proc.pid),
                        reader_rss_mb=rss_mb(reader.proc.pid),
                        redis_mb=info["used_memory"] / 2**20,
                        redis_keys=client.dbsize(),
                    ))  # fmt: skip
                    s = samples[-1]
                    console.print(
                        f"minute {s.minute:.1f}: {s.applied_per_s:,.0f} events/s applied, {s.behind:,} behind, "
                        f"worker {s.worker_rss_mb:.0f} MB, Redis {s.redis_mb:.1f} MB"
                    )
                    worker.check()
                    reader.check()
        finally:
            if reader is not None:
                reader.stop()
            worker.stop()
    return samples, min(sum(1 for s in samples if s.minute <= args.warmup_minutes), len(samples) - 1)


def growth_pct(first: float, last: float) -> float:
    """(last − first) / first in %.

    >>> growth_pct(200.0, 210.0)
    5.0
    """
    return (last - first) / first * 100


def report(samples: list[Sample], warmup: int, args: argparse.Namespace, console: Console) -> None:
    table = Table(title=f"soak: {args.rate:,} events/s + {args.feeds:,} feeds/s, one worker, one reader ({machine()})")
    columns = (
        "minute", "events/s offered", "applied/s", "behind", "fresh p50/p99 ms", "feeds/s", "feed p99 ms",
        "non-200", "degraded", "worker RSS MB", "reader RSS MB", "Redis MB", "Redis keys",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for n, s in enumerate(samples):
        table.add_row(
            f"{s.minute:.1f}{' (warm-up)' if n < warmup else ''}", f"{s.offered_per_s:,.0f}",
            f"{s.applied_per_s:,.0f}", f"{s.behind:,}", f"{s.fresh_p50_ms:.0f} / {s.fresh_p99_ms:.0f}",
            f"{s.feeds_per_s:,.0f}", f"{s.feed_p99_ms:.1f}", str(s.feed_errors), str(s.feed_degraded),
            f"{s.worker_rss_mb:.0f}", f"{s.reader_rss_mb:.0f}", f"{s.redis_mb:.1f}", f"{s.redis_keys:,}",
        )  # fmt: skip
    show(table, console)
    measured = samples[warmup:]
    first, last = measured[0], measured[-1]
    summary = Table(title=f"after warm-up: minute {first.minute:.1f} → {last.minute:.1f} (target: memory growth < 10%)")
    for column in ("measure", "first", "last", "growth"):
        summary.add_column(column, justify="left" if column == "measure" else "right")
    growth = {}
    for name, unit, pick in (
        ("worker RSS", "MB", lambda s: s.worker_rss_mb),
        ("reader RSS", "MB", lambda s: s.reader_rss_mb),
        ("Redis used_memory", "MB", lambda s: s.redis_mb),
        ("Redis keys", "", lambda s: s.redis_keys),
        ("events behind", "", lambda s: s.behind),
        ("freshness p99", "ms", lambda s: s.fresh_p99_ms),
    ):
        a, b = pick(first), pick(last)
        growth[name] = growth_pct(a, b) if a else float("nan")
        spec = ",.0f" if isinstance(a, int) else ",.1f"
        summary.add_row(name, f"{a:{spec}} {unit}", f"{b:{spec}} {unit}", f"{growth[name]:+.1f}%")
    show(summary, console)
    worker_growth, reader_growth = growth["worker RSS"], growth["reader RSS"]
    redis_growth, lag_max = growth["Redis used_memory"], max(s.behind for s in measured)
    check_answers("feeds", sum(s.feed_requests for s in samples), sum(s.feed_errors + s.feed_degraded for s in samples))
    if args.no_record:
        return
    command = f"{COMMAND} --minutes {args.minutes:g} --rate {args.rate} --feeds {args.feeds}"
    record({
        "soak_worker_rss_growth_pct": figure(worker_growth, "%", command),
        "soak_reader_rss_growth_pct": figure(reader_growth, "%", command),
        "soak_redis_memory_growth_pct": figure(redis_growth, "%", command),
        "soak_freshness_p99_ms": figure(last.fresh_p99_ms, "ms", command),
        "soak_lag_events_max": figure(lag_max, "events", command),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="measured duration after the warm-up")
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=5_000, help="events/s offered")
    parser.add_argument("--feeds", type=float, default=500.0, help="feeds/s offered")
    parser.add_argument("--interval-s", type=float, default=60.0, help="one table row per interval")
    parser.add_argument("--session-ttl-s", type=int, default=300, help="scroll session TTL (see the docstring)")
    parser.add_argument("--history", type=int, default=100_000, help="synthetic-world records before the load")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--quick", action="store_true", help="a 3-minute smoke run (1 min warm-up, 20 s rows)")
    args = parser.parse_args(argv)
    if args.quick:  # a smoke run: its figures never replace the recorded ones
        args.minutes, args.warmup_minutes, args.interval_s, args.history, args.no_record = 2.0, 1.0, 20.0, 30_000, True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what this run started
    console = Console(width=200)
    samples, warmup = soak(args, console)
    report(samples, warmup, args, console)


if __name__ == "__main__":
    main()
