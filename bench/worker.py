"""One worker's throughput on a backlog, and freshness under a steady live load.

    .venv/bin/python -m bench.worker [--events 300000] [--rate 5000] [--seconds 20] [--repeats 3] [--no-record]
    .venv/bin/python -m bench.worker --cluster [--events 100000] [--rounds 2] [--no-record]

Only a run with every option at its default is written to bench/results.json (a profiled or shortened run once
replaced the record with one noisy run's figures).

Kafka, Redis and the worker share this machine's 2 cores. Throughput: a synthetic-world
backlog is produced first, then a worker starts and we time events applied per second
(Redis totals) from its first applied batch to the last; once with counters only, once
with a trained model (user steps, HNSW candidates), and once more on the same events each
carrying a served feature vector, so the worker also trains the online ranker per partition
(its baseline: the run before, whose events carry none), and that full path once more with pipelined batches
(``RECSTREAM_WORKER_PIPELINE=true``, streams/processor.py; its baseline: the full path, one batch at a time).
Baseline in the same run: a raw aiokafka consumer decoding the same messages (the ceiling Kafka + decoding leaves),
timed the same way, from its first fetched batch to the last.
Freshness: events stamped "now" are offered at a fixed rate to the caught-up personalized
worker; p50/p99 of event ts → state applied and of click → refreshed candidate list come
from the worker's own histograms (deltas over the live phase). Its baseline in the same run: the personalized
worker once more with every batch rescoring the per-segment rankings of its items (``RECSTREAM_SEGMENT_RANK_S=0``,
what every batch did before 2026-12-04; apply_batch.lua step 4b), its own backlog and live phase.

Each backlog runs ``--repeats`` times (3; the five paths rotated, each run with a fresh consumer group and key
prefix) and the live phase after each personal run and each of its baseline's: a backlog lands in 12 to 45
batches (over the recorded runs) depending on what the consumer fetched while the worker waited on Redis, and
that alone moves a run's rate by up to 2×, so one run is not a measurement. The table shows every run with its
batches, user steps and Redis' busy time per event.

Writes `worker_events_per_s`, `worker_events_per_s_ranker`, `worker_events_per_s_ranker_pipelined`,
`freshness_p99_ms`, `candidates_refresh_p99_ms` (+ p50s): the medians of the runs; the freshness figures carry
the baseline's median.

``--cluster`` measures only what a Redis Cluster costs: the same backlog on the same Kafka broker, applied by
the worker with a trained model (counters + user steps + candidates) on one Redis and on a Redis Cluster of 3
masters + 3 replicas on this machine, alternating single, cluster, cluster, single, … (``--rounds`` pairs, each
with a fresh consumer group and key prefix), so load drift hits both alike. Writes
`worker_events_per_s_single` and `worker_events_per_s_cluster` (the mean of each one's runs; the cluster's
baseline is the single figure).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from statistics import median

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer
from recstream.models.als import ALSConfig
from rich.table import Table

from bench.common import (
    ROOT,
    changed_options,
    client_of,
    fail,
    figure,
    histogram_quantile,
    machine,
    record,
    scrape_histogram,
    services,
    show,
)
from recstream.contracts.events import Event, decode
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import CONTEXT_KEY, FEATURES, encode_features
from recstream.contracts.settings import Settings
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.jobs.sources import Record
from recstream.shell.infra import Child, ensure_topics, running_clusters
from recstream.sim.world import synthetic

COMMAND = ".venv/bin/python -m bench.worker"
LIVE = {
    "personal": "counters + user steps + candidates",
    "every": "counters + user steps + candidates, segments ranked in every batch "
    "(RECSTREAM_SEGMENT_RANK_S=0, baseline)",
}
"""The paths that get a live phase after their backlog: the personalized worker, and its freshness baseline."""
LOGS = ROOT / ".run" / "bench-logs"
MODELS = ROOT / ".run" / "bench" / "models"


async def produce_backlog(settings: Settings, records: list[Record]) -> int:
    async with EventProducer(settings) as producer:
        events = []
        for record in records:
            if record.kind == "event":
                events.append(record.value)
            elif record.kind == "item":
                await producer.send_item(record.value)
            else:
                await producer.send_user(record.value)
        await producer.send_events(events)
        return await producer.flush()


def with_served_vectors(records: list[Record], seed: int = 12) -> list[Record]:
    """The records with every event carrying a feature vector as the reader stamps it (random values, one
    generator flag): the worker trains the ranker on each."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        if r.kind == "event":
            x = rng.random(len(FEATURES))
            x[1:5] = np.eye(4)[rng.integers(4)]  # personal, popular, fresh, explore: one of them proposed it
            context = {**(r.value.context or {}), CONTEXT_KEY: encode_features(x)}  # type: ignore[union-attr]
            r = Record("event", r.value.model_copy(update={"context": context}))
        out.append(r)
    return out


async def raw_consume_rate(settings: Settings, total: int) -> float:
    """Events/s a bare consumer decodes, timed as :func:`time_backlog` times a worker: from its first fetched batch
    to its last, the first batch's events not counted (they arrived before the clock started), so connecting and
    joining the broker is outside both windows."""
    consumer = AIOKafkaConsumer(settings.kafka.events_topic, bootstrap_servers=settings.kafka.bootstrap,
                                auto_offset_reset="earliest", group_id=None)  # fmt: skip
    await consumer.start()
    seen, first, started, ended = 0, 0, 0.0, 0.0
    try:
        while seen < total:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                for message in messages:
                    seen += len(decode(message.value, "event", 2**53)[0])
            ended = time.perf_counter()
            if seen and not first:
                first, started = seen, ended
    finally:
        await consumer.stop()
    if seen == first:
        fail(f"the raw consumer fetched all {seen:,} events in one batch: nothing to time (a larger --events)")
    return (seen - first) / (ended - started)


def applied(client: redis.Redis | redis.RedisCluster, key: str) -> int:
    totals = client.hgetall(key)
    return int(totals.get(b"views", 0)) + int(totals.get(b"clicks", 0))


def applied_when_answered(client: redis.Redis | redis.RedisCluster, key: str) -> int | None:
    """:func:`applied`, or None while Redis is running a batch script (BUSY past its 5 s script limit, or a read
    timeout): a backlog batch is up to batch_max messages, one script, and can block Redis that long."""
    try:
        return applied(client, key)
    except redis.exceptions.TimeoutError:
        return None
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith("BUSY"):
            return None
        raise


def time_backlog(settings: Settings, prefix: str, total: int, already: int = 0) -> tuple[float, Child]:
    """Events/s from the first applied batch to the last, for a worker started on a full backlog (``total``
    applied events at the end, ``already`` of them in Redis before it starts)."""
    client = client_of(settings, socket_timeout=30)
    key = Keys.of(settings)("totals")
    worker = Child("worker", settings, LOGS / f"worker-{prefix}.log")
    try:
        while (first := applied_when_answered(client, key)) in (None, already):
            time.sleep(0.01)
            worker.check()
        started = time.perf_counter()
        while (done := applied_when_answered(client, key)) is None or done < total:
            time.sleep(0.05)
            worker.check()
    except BaseException:  # its own session: Ctrl-C or an error here would leave it running
        worker.kill()
        raise
    return (done - first) / (time.perf_counter() - started), worker


def cluster_cost(records: list[Record], rounds: int, recorded: bool) -> None:
    """The personalized worker on one Redis and on a Redis Cluster, same backlog and broker, alternating."""
    with services() as base:
        asyncio.run(ensure_topics(base))
        total = asyncio.run(produce_backlog(base, records))
        artifacts, _ = training.train(training.collect(records), ALSConfig(), holdout=0)
        with running_clusters(base.replace(run_dir=base.local.run_dir / "cluster"), kafka=False) as clusters:
            targets = {"single": base, "cluster": clusters.settings}
            version = asyncio.run(training.publish(base.replace(model_dir=MODELS), artifacts))
            rates: dict[str, list[float]] = {"single": [], "cluster": []}
            order = [
                name for k in range(rounds) for name in (("single", "cluster") if k % 2 == 0 else ("cluster", "single"))
            ]
            for k, name in enumerate(order):
                settings = targets[name].replace(
                    redis_prefix=f"{name}{k}", worker_group=f"bench-{name}{k}", model_dir=MODELS
                )
                asyncio.run(training.activate(settings, artifacts, version))
                rate, worker = time_backlog(settings, f"{name}{k}", total)
                worker.stop()
                rates[name].append(rate)
    single, cluster = (sum(rates[name]) / len(rates[name]) for name in ("single", "cluster"))
    table = Table(title=f"one worker (user steps + candidates), one Redis vs a Redis Cluster ({machine()})")
    for column in ("Redis", "runs (events/s)", "mean"):
        table.add_column(column, justify="right")
    table.add_row("one server", ", ".join(f"{r:,.0f}" for r in rates["single"]), f"{single:,.0f} events/s")
    table.add_row("cluster, 3 masters + 3 replicas", ", ".join(f"{r:,.0f}" for r in rates["cluster"]),
                  f"{cluster:,.0f} events/s ({cluster / single:.2f}×)")  # fmt: skip
    show(table)
    command = f"{COMMAND} --cluster"
    if recorded:
        record({
            "worker_events_per_s_single": figure(single, "events/s", command),
            "worker_events_per_s_cluster": figure(cluster, "events/s", command, single),
        })  # fmt: skip


async def live_load(settings: Settings, users: list[str], items: list[str], rate: int, seconds: float) -> int:
    """Offer `rate` events/s stamped with the send time (10 ms ticks; ~8% clicks)."""
    rng = random.Random(0)
    sent, tick = 0, 0.01
    async with EventProducer(settings) as producer:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) - sent
            now = int(time.time() * 1000)
            batch = [
                Event(type="click" if rng.random() < 0.08 else "view", user_id=rng.choice(users),
                      item_id=rng.choice(items), ts=now)
                for _ in range(due)
            ]  # fmt: skip
            await producer.send_events(batch)
            await producer.flush()
            sent += len(batch)
            await asyncio.sleep(max(0.0, tick - (time.perf_counter() - started - elapsed)))
    return sent


def quantiles_ms(before: str, after: str, name: str) -> tuple[float, float]:
    b0, b1 = scrape_histogram(before, name), scrape_histogram(after, name)
    delta = [(le, c1 - c0) for (le, c1), (_, c0) in zip(b1, b0, strict=True)]
    return histogram_quantile(0.5, delta) * 1000, histogram_quantile(0.99, delta) * 1000


def sample(text: str, series: str) -> float:
    """One sample's value from Prometheus text exposition, e.g. ``name_sum{topic="events"}``."""
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


def live_batches(before: str, after: str, topic: str) -> tuple[float, float, float]:
    """Batches applied during the live phase: how many, their mean size (events) and mean time (ms)."""
    delta = {
        what: sample(after, f'recstream_worker_{what}{{topic="{topic}"}}')
        - sample(before, f'recstream_worker_{what}{{topic="{topic}"}}')
        for what in ("batch_events_count", "batch_events_sum", "batch_seconds_sum")
    }
    n = max(delta["batch_events_count"], 1.0)
    return delta["batch_events_count"], delta["batch_events_sum"] / n, delta["batch_seconds_sum"] / n * 1000


@dataclass(frozen=True)
class BacklogRun:
    """One worker on one full backlog: its rate, how many batches the backlog landed in, the user steps those
    batches paid for (a user pays one in every batch holding one of their clicks, so fewer, larger batches pay
    fewer), and the CPU time Redis' main thread spent per event (:func:`redis_cpu_us`: the worker awaits each
    script, so that time adds to its own)."""

    rate: float
    batches: int
    user_steps: int
    redis_us_per_event: float


def redis_cpu_us(client: redis.Redis) -> float:
    """Microseconds of CPU Redis' main thread has used since its start, user and system (INFO cpu): everything it
    did for the worker, parsing and replies included, each script's commands once. INFO commandstats, summed,
    counted a script's commands twice (EVALSHA's time holds them, and each is counted on its own too)."""
    cpu = client.info("cpu")
    return (float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])) * 1e6


def run_backlog(settings: Settings, prefix: str, total: int) -> tuple[BacklogRun, Child]:
    """:func:`time_backlog`, with the batch count and user steps from the worker's metrics at its end."""
    with redis.Redis.from_url(settings.redis.url) as client:  # one Redis: INFO of a cluster is per node
        busy = redis_cpu_us(client)
        rate, worker = time_backlog(settings, prefix, total)
        busy = redis_cpu_us(client) - busy
    text = worker.metrics()
    batches = sample(text, f'recstream_worker_batch_events_count{{topic="{settings.kafka.events_topic}"}}')
    steps = sample(text, "recstream_worker_user_steps_total")
    return BacklogRun(rate, int(batches), int(steps), busy / total), worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=None, help="backlog size (default 300,000; --cluster 100,000)")
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each backlog (and of the live phase)")
    parser.add_argument("--cluster", action="store_true", help="only one Redis vs a Redis Cluster, same run")
    parser.add_argument("--rounds", type=int, default=2, help="--cluster: pairs of runs (one of each)")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def full_run(args: argparse.Namespace) -> bool:
    """Whether the run measured what the recorded figures promise: every measuring option at its default
    (``--cluster`` picks which figures), so that results.json never holds a smaller or other run's figures.

    >>> full_run(parse_args([])), full_run(parse_args(["--cluster"])), full_run(parse_args(["--repeats", "1"]))
    (True, True, False)
    """
    return not args.no_record and not changed_options(args, parse_args([]), ("cluster", "no_record"))


def main() -> None:
    args = parse_args()
    recorded = full_run(args)
    if args.cluster:
        cluster_cost(list(synthetic(args.events or 100_000, seed=11)), args.rounds, recorded)
    else:
        backlogs(args, recorded)
    if not recorded:
        print("not written to bench/results.json: --no-record, or not a full run at the defaults")


def backlogs(args: argparse.Namespace, recorded: bool) -> None:
    """The backlog runs of every path and the live phases; their medians recorded when ``recorded``."""
    records = [r for r in synthetic(args.events or 300_000, seed=11)]
    users = [r.value.user_id for r in records if r.kind == "user"]
    items = [r.value.item_id for r in records if r.kind == "item"]
    runs: dict[str, list[BacklogRun]] = {"counters": [], "personal": [], "ranker": [], "pipelined": [], "every": []}
    live: dict[str, list[tuple[float, float, float, float, float, float, float]]] = {name: [] for name in LIVE}
    offered = 0
    with services() as base:
        ranked = base.on_topics("ranker", model_dir=MODELS)
        for settings, backlog in ((base, records), (ranked, with_served_vectors(records))):
            asyncio.run(ensure_topics(settings))
            total = asyncio.run(produce_backlog(settings, backlog))
        raw = asyncio.run(raw_consume_rate(base, total))
        artifacts, _ = training.train(training.collect(records), ALSConfig(), holdout=0)
        version = asyncio.run(training.publish(base.replace(model_dir=MODELS), artifacts))
        targets = {
            "counters": base,
            "personal": base.replace(model_dir=MODELS),
            "ranker": ranked,
            "pipelined": ranked.replace(worker_pipeline=True),
            "every": base.replace(model_dir=MODELS, segment_rank_s=0),
        }
        for k in range(args.repeats):  # rotated, so drifting load hits every path alike
            for name in list(runs)[k % len(runs) :] + list(runs)[: k % len(runs)]:
                settings = targets[name].replace(redis_prefix=f"{name}{k}", worker_group=f"bench-{name}{k}")
                if name in LIVE:  # topics of its own: the live phase adds events no later run may read
                    settings = settings.on_topics(f"{name}{k}")
                    asyncio.run(ensure_topics(settings))
                    asyncio.run(produce_backlog(settings, records))
                if name != "counters":
                    asyncio.run(training.activate(settings, artifacts, version))
                run, worker = run_backlog(settings, f"{name}{k}", total)
                runs[name].append(run)
                if name in LIVE:
                    time.sleep(1.0)  # the last backlog batch's observations land after its Redis effect
                    before = worker.metrics()
                    offered = asyncio.run(live_load(settings, users, items, args.rate, args.seconds))
                    time.sleep(2.0)
                    after = worker.metrics()
                    live[name].append((
                        *quantiles_ms(before, after, "recstream_worker_freshness_seconds"),
                        *quantiles_ms(before, after, "recstream_worker_candidate_refresh_seconds"),
                        *live_batches(before, after, settings.kafka.events_topic),
                    ))  # fmt: skip
                worker.stop()
    rate = {name: median(r.rate for r in each) for name, each in runs.items()}
    medians = {name: [median(row[i] for row in rows) for i in range(4)] for name, rows in live.items()}
    fresh50, fresh99, cand50, cand99 = medians["personal"]

    table = Table(title=f"one worker on a backlog, Kafka + Redis co-located ({machine()})")
    for column in ("path", "events/s, each run", "median", "batches", "user steps", "Redis CPU µs/event"):
        table.add_column(column, justify="right")
    table.add_row(f"raw consume + decode, baseline ({total:,} events)", f"{raw:,.0f}", f"{raw:,.0f}", "", "", "")
    for name, label in (
        ("counters", "counters only"),
        ("personal", "counters + user steps + candidates"),
        ("ranker", "full path: + ranker training (events carry vectors)"),
        ("pipelined", "full path, pipelined batches (RECSTREAM_WORKER_PIPELINE)"),
        ("every", LIVE["every"]),
    ):
        table.add_row(
            label,
            ", ".join(f"{r.rate:,.0f}" for r in runs[name]),
            f"{rate[name]:,.0f}",
            ", ".join(f"{r.batches}" for r in runs[name]),
            ", ".join(f"{r.user_steps:,}" for r in runs[name]),
            ", ".join(f"{r.redis_us_per_event:.1f}" for r in runs[name]),
        )
    show(table)
    table = Table(
        title=f"live load after each personal run: {offered / args.seconds:,.0f} events/s for {args.seconds:.0f} s"
    )
    for column in (
        "worker",
        "run",
        "batches",
        "mean events",
        "mean batch ms",
        "freshness p50 / p99 ms",
        "click → candidates p50 / p99 ms",
    ):
        table.add_column(column, justify="right")
    for name, label in LIVE.items():
        for k, (f50, f99, c50, c99, n, size, ms) in enumerate(live[name], 1):
            table.add_row(
                label,
                str(k),
                f"{n:.0f}",
                f"{size:.0f}",
                f"{ms:.0f}",
                f"{f50:.0f} / {f99:.0f}",
                f"{c50:.0f} / {c99:.0f}",
            )
        f50, f99, c50, c99 = medians[name]
        table.add_row(label, "median", "", "", "", f"{f50:.0f} / {f99:.0f}", f"{c50:.0f} / {c99:.0f}")
    show(table)
    if not recorded:
        return
    record({
        "worker_events_per_s": figure(rate["personal"], "events/s", COMMAND, raw),
        "worker_events_per_s_counters_only": figure(rate["counters"], "events/s", COMMAND, raw),
        "worker_events_per_s_ranker": figure(rate["ranker"], "events/s", COMMAND, rate["personal"]),
        "worker_events_per_s_ranker_pipelined": figure(rate["pipelined"], "events/s", COMMAND, rate["ranker"]),
        "freshness_p50_ms": figure(fresh50, "ms", COMMAND, medians["every"][0]),
        "freshness_p99_ms": figure(fresh99, "ms", COMMAND, medians["every"][1]),
        "candidates_refresh_p50_ms": figure(cand50, "ms", COMMAND),
        "candidates_refresh_p99_ms": figure(cand99, "ms", COMMAND),
    })  # fmt: skip


if __name__ == "__main__":
    main()
