"""Cost curve: what each part costs at ×1, ×10 and ×100 users and items, how it grows, what 100M users need.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.scale [--scales 1,10,100] [--backlog 100000]

Scale ×s is the stable synthetic world (recstream.sim.simulator.STABLE_WORLD) with 10,000·s users and
1,000·s items at start (×100: 1,000,000 users, 100,000 items). Sizes grow with s; event counts grow only
with the users: the history is ``--events-per-user`` events per user (browsing is activity-weighted: at 1, about
two users in three act), the timed backlog is the same ``--backlog`` events at every
scale. Each scale runs on its own fresh private Kafka + Redis (bench/common.services) and measures:

1. **train s**: ``recstream.jobs.training.train`` on the history (iALS fit, content map, HNSW build), in
   this process, holdout 0; the version is then written to disk (not timed).
2. **state build**: ``recstream.jobs.rebuild.rebuild`` over the history produced to Kafka: the workers'
   own batch code and state writer, in process, from the topics (the rebuild also writes every item's
   neighbours). This is how 1M users get the state a worker would have written without a live replay
   through a worker; its events/s is a figure of its own.
3. **Redis bytes per user / per item** after the build (before the backlog): ``MEMORY USAGE key SAMPLES 0``
   of every key of 2,000 sampled users (hist, vec, cand, seen, prefs) plus their share of ``user:seg``,
   over the users with state; of every item-keyed structure (counters, segment counters, rankings, trend,
   pool) plus 2,000 sampled items' own keys (metadata, neighbours, fold-in users), over the items. What
   neither accounts for (dedup event ids, ranker state, bookkeeping) is the "other" column.
4. **worker events/s** (full path: counters, user steps, HNSW candidates, ranker training, as
   bench/worker.py's last row): the next ``--backlog`` events of the same stream, each carrying a served
   feature vector, produced after the build; one ``recstream worker`` started on them is timed from its
   first applied batch to the last (bench.worker.time_backlog). **worker RSS**: its VmHWM (peak resident
   set) at the end: the model, the HNSW index of every item, the history cache. The index's size on disk
   is its own column. **user steps per event**: its ``recstream_worker_user_steps_total`` over the backlog's
   events, the share that paid an exact user step and a candidate query (a click, or a user's first event).
5. **rescore ms**: one full rescore of every ranking (what ``apply_batch.lua`` runs in a batch whose
   quantized global prior moved): ``prior`` set to a value the totals do not give, then one empty batch
   through ``StateStore.apply``, timed around the call (Redis is blocked for that long). **rescores**:
   how many batches of the timed backlog did one (the worker's ``recstream_worker_full_rescores_total``).
6. **reader p99 at 1,000 feeds/s**: ``recstream serve`` (one process) on the built state, warmed up in 3-s
   closed loops until its category cache has caught up (at most 1% of a chunk's feature rows without their
   item's categories: pages read with a cold cache lack features and cost otherwise; it fills ~2,000 items a
   reload), then ``--reader-seconds`` of an open loop at ``--rate`` feeds/s (bench.feeds.load: latency from each
   request's scheduled time) for users with state, with no worker running.
7. **peak RSS**: the sum of the resident sets of this process, its children (worker, reader, load
   generator), Redis and Kafka, sampled every 0.5 s over the scale's whole run.

Every growth is a least-squares power law y ≈ a·n^b over the scales (n = users; items grow in step), printed
with its nearest O(·) (:func:`growth`); the capacity table extrapolates the ×max row to ``--target-users``
with those fits and the stated traffic assumptions (:func:`capacity`). The 2 cores are shared with Kafka,
Redis and other work, so each scale's figure is compared with the ×1 row of the same run.

Writes ``scale_*`` keys (bench/common.RESULT_KEYS["scale"]) when the run includes ×100.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import orjson
import redis
from recstream.models.als import ALSConfig
from recstream.models.artifacts import write_model
from redis.asyncio import Redis as AsyncRedis
from rich.console import Console
from rich.table import Table

from bench.common import check_answers, fail, figure, machine, record, services, show
from bench.feeds import FEED_PATH, load
from bench.worker import LOGS, produce_backlog, time_backlog, with_served_vectors
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.jobs import training
from recstream.jobs.rebuild import rebuild
from recstream.jobs.sources import Record
from recstream.shell import infra
from recstream.shell.infra import Child
from recstream.sim.simulator import STABLE_WORLD
from recstream.sim.world import synthetic
from recstream.store.state import Effect, StateStore

COMMAND = "OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.scale"
BASE_USERS, BASE_ITEMS = 10_000, 1_000
PRODUCE_CHUNK = 50_000  # records held at once while the history is produced
SAMPLE = 2_000  # users and items whose own keys are measured one by one
USER_KEYS = ("hist", "vec", "cand", "seen", "prefs")
ITEM_KEYS = ("", ":similar")  # item:<i>, item:<i>:similar (foldin:users:<i> only for new items: counted whole)
GIB = 2**30
WARM_UP_CHUNK_S = 3.0
WARM_UP_MAX_S = 120.0
WARM_UNKNOWN_SHARE = 0.01
"""The reader is measured once at most 1% of a warm-up chunk's feature rows lacked their item's categories."""


@dataclass
class Row:
    scale: int
    users: int
    items: int
    history_events: int
    users_with_state: int = 0
    items_with_state: int = 0
    train_s: float = 0.0
    build_s: float = 0.0
    build_events_per_s: float = 0.0
    redis_bytes: int = 0
    bytes_per_user: float = 0.0
    bytes_per_item: float = 0.0
    other_bytes: int = 0
    kafka_bytes_per_event: float = 0.0
    worker_events_per_s: float = 0.0
    worker_rss: int = 0
    index_bytes: int = 0
    bytes_per_user_at_caps: float = 0.0
    rescore_ms: float = 0.0
    rescore_pass_max_ms: float = 0.0
    rescore_pass_calls: int = 0
    rescores: int = 0
    user_steps_per_event: float = 0.0
    reader_p50_ms: float = 0.0
    reader_p99_ms: float = 0.0
    reader_answers: int = 0
    reader_failed: int = 0
    reader_warm_up_s: float = 0.0
    reader_unknown_rows: float = 0.0
    peak_rss: int = 0


# --- growth and capacity: pure functions ---------------------------------------------------------------


def power_fit(sizes: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the least-squares fit log y = log a + b·log n: y ≈ a·n^b.

    >>> a, b = power_fit([1e4, 1e5, 1e6], [3.0, 30.0, 300.0])
    >>> round(a, 6), round(b, 6)
    (0.0003, 1.0)
    >>> round(power_fit([1e4, 1e5], [5.0, 5.0])[1], 6)
    0.0
    """
    if len(sizes) < 2 or len(sizes) != len(values) or min(*sizes, *values) <= 0:
        raise ValueError("a power fit needs two or more positive (size, value) pairs")
    xs, ys = [math.log(n) for n in sizes], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - b * mx), b


def growth(b: float) -> str:
    """The nearest of O(1), O(log n), O(√n), O(n), O(n log n), O(n²) to a fitted exponent b (n^b). Over the two
    decades of the scales log n fits as n^0.09 and n log n as n^1.09, so: O(1) below 0.05, O(log n) below 0.25,
    O(√n) below 0.75, O(n) below 1.15 (n log n is not told apart from n here), O(n log n) below 1.5.

    >>> [growth(b) for b in (-0.2, 0.03, 0.09, 0.5, 0.98, 1.09, 1.3, 2.0)]
    ['O(1)', 'O(1)', 'O(log n)', 'O(√n)', 'O(n)', 'O(n)', 'O(n log n)', 'O(n²)']
    """
    for bound, label in ((0.05, "O(1)"), (0.25, "O(log n)"), (0.75, "O(√n)"), (1.15, "O(n)"), (1.5, "O(n log n)")):
        if b < bound:
            return label
    return "O(n²)"


def extrapolate(size: float, value: float, b: float, target: float) -> float:
    """``value`` measured at ``size``, carried to ``target`` along n^b.

    >>> extrapolate(1e6, 2.0, 1.0, 1e8)
    200.0
    >>> extrapolate(1e6, 2.0, 0.0, 1e8)
    2.0
    """
    return value * (target / size) ** b


@dataclass(frozen=True)
class Traffic:
    """What a deployment's users do: the capacity table's assumptions (all stated beside it)."""

    users: int = 100_000_000
    items_per_user: float = 0.1  # the scales' ratio: 10 users per item
    events_per_user_day: float = 20.0
    feeds_per_user_day: float = 10.0
    peak_factor: float = 3.0  # busiest second over the day's mean
    redis_node_bytes: int = 25 * GIB  # usable memory of one Redis Cluster master
    worker_node_bytes: int = 16 * GIB
    kafka_retention_days: float = 30.0

    @property
    def peak_events_per_s(self) -> float:
        return self.users * self.events_per_user_day / 86_400 * self.peak_factor

    @property
    def peak_feeds_per_s(self) -> float:
        return self.users * self.feeds_per_user_day / 86_400 * self.peak_factor


def capacity(
    traffic: Traffic,
    bytes_per_user: float,
    bytes_per_item: float,
    worker_events_per_s: float,
    worker_rss: float,
    reader_feeds_per_s: float,
    kafka_bytes_per_event: float,
) -> list[tuple[str, str, str]]:
    """(part, need, how) rows for ``traffic``, from per-unit costs already carried to its size.

    >>> rows = capacity(Traffic(), 2_000.0, 5_000.0, 10_000.0, 2 * GIB, 1_000.0, 150.0)
    >>> [part for part, _, _ in rows][:4]
    ['events at peak', 'Redis memory', 'Redis Cluster masters', 'worker processes']
    >>> [need for _, need, _ in rows]
    ['69,444/s', '232.8 GiB', '10', '7', '2.0 GiB each', '35', '8.2 TiB']
    """
    items = traffic.users * traffic.items_per_user
    redis_bytes = traffic.users * bytes_per_user + items * bytes_per_item
    masters = max(1, math.ceil(redis_bytes / traffic.redis_node_bytes))
    workers = max(1, math.ceil(traffic.peak_events_per_s / worker_events_per_s))
    readers = max(1, math.ceil(traffic.peak_feeds_per_s / reader_feeds_per_s))
    kafka = traffic.users * traffic.events_per_user_day * traffic.kafka_retention_days * kafka_bytes_per_event
    return [
        ("events at peak", f"{traffic.peak_events_per_s:,.0f}/s",
         f"{traffic.events_per_user_day:g} events/user/day × {traffic.peak_factor:g} peak"),
        ("Redis memory", f"{redis_bytes / GIB:,.1f} GiB",
         f"{traffic.users:,} users × {bytes_per_user:,.0f} B + {items:,.0f} items × {bytes_per_item:,.0f} B"),
        ("Redis Cluster masters", f"{masters:,}", f"{traffic.redis_node_bytes / GIB:g} GiB each, a replica each"),
        ("worker processes", f"{workers:,}",
         f"peak / {worker_events_per_s:,.0f} events/s each; events partitions ≥ workers"),
        ("worker memory", f"{worker_rss / GIB:,.1f} GiB each",
         f"every worker holds the whole index ({items:,.0f} items); node {traffic.worker_node_bytes / GIB:g} GiB"),
        ("reader processes", f"{readers:,}",
         f"{traffic.peak_feeds_per_s:,.0f} feeds/s at peak / {reader_feeds_per_s:,.0f} each at the measured p99"),
        ("Kafka storage", f"{kafka / 2**40:,.1f} TiB",
         f"{traffic.kafka_retention_days:g} days × {kafka_bytes_per_event:,.0f} B/event, before replication"),
    ]  # fmt: skip


# --- measuring ------------------------------------------------------------------------------------------


def rss(pid: int, field: str = "VmRSS") -> int:
    """A process's resident set (or ``VmHWM``, its peak) in bytes; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """A process and everything it started, still running."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


class PeakMemory:
    """The largest sum of resident sets of this process tree and ``others`` (Redis, Kafka), sampled every 0.5 s."""

    def __init__(self, others: Sequence[int]) -> None:
        self.others, self.peak = list(others), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, sum(rss(p) for p in {*descendants(os.getpid()), *self.others}))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def world_records(scale: int, history: int, backlog: int) -> Iterator[tuple[bool, Record]]:
    """The scale's stream: (in history, record) until ``history`` events, then the next ``backlog`` events."""
    config = STABLE_WORLD.model_copy(update={"n_users": BASE_USERS * scale, "n_items": BASE_ITEMS * scale})
    events = 0
    for r in synthetic(10**15, seed=5, config=config, rate_per_s=history / 3600):  # the history is 1 world hour
        if r.kind == "event":
            events += 1
            if events > history + backlog:
                return
        yield (events <= history if r.kind == "event" else events < history), r


def memory_usage(client: redis.Redis, keys: Sequence[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(n or 0 for n in pipe.execute())


def redis_bytes(client: redis.Redis, k: Keys, users: Sequence[str], items: Sequence[str]) -> tuple[int, float, float]:
    """(used_memory_dataset, bytes per user, bytes per item): see the module docstring, point 3."""
    rng = random.Random(3)
    sample_users, sample_items = rng.sample(users, min(SAMPLE, len(users))), rng.sample(items, min(SAMPLE, len(items)))
    seg = memory_usage(client, [k("user:seg")]) / max(client.hlen(k("user:seg")), 1)
    per_user = memory_usage(client, [k.user(u, s) for u in sample_users for s in USER_KEYS]) / len(sample_users) + seg
    segments = [s.decode() for s in client.smembers(k("segments"))]
    shared = ["views", "clicks", "rank", "pool", "graduated", "unavailable", "foldin:pending"]
    shared += [f"seg:{s}:{c}" for s in segments for c in ("views", "clicks")] + [f"rank:{s}" for s in segments]
    scanned = [key.decode() for pattern in ("trend:*", "foldin:users:*") for key in client.scan_iter(match=k(pattern))]
    shared_keys = [k(name) for name in shared] + scanned
    own = memory_usage(client, [k(f"item:{i}{s}") for i in sample_items for s in ITEM_KEYS]) / len(sample_items)
    per_item = memory_usage(client, shared_keys) / len(items) + own
    return int(client.info("memory")["used_memory_dataset"]), per_user, per_item


def rescore_costs(settings: Settings) -> tuple[float, float, int]:
    """(ms of one whole rescore in one script, ms of the longest batch of a bounded pass, that pass's batches): the
    prior set to what the totals never give, then empty batches through ``StateStore.apply`` until no pass is
    pending (point 5). The whole rescore is the pass with no bound (what every moved prior cost before the bound)."""

    async def pass_ms(store: StateStore) -> list[float]:
        await store.redis.set(store.keys("prior"), "-1")
        took, pending = [], True
        while pending:
            started = time.perf_counter()
            applied = await store.apply(Effect())
            pending = applied.rescore_pending or applied.segments_pending > 0
            took.append((time.perf_counter() - started) * 1000)
        return took

    async def run() -> tuple[list[float], list[float]]:
        client = AsyncRedis.from_url(settings.redis.url, socket_timeout=300)  # a whole rescore can take minutes
        try:
            return await pass_ms(StateStore(client, settings, rescore_items=2**31 - 1)), await pass_ms(
                StateStore(client, settings)
            )
        finally:
            await client.aclose()

    whole, bounded = asyncio.run(run())
    if len(whole) != 1:
        fail(f"a rescore without a bound took {len(whole)} batches")
    return whole[0], max(bounded), len(bounded)


def at_caps(client: redis.Redis, settings: Settings, k: Keys, template: str, items: Sequence[str]) -> float:
    """Bytes of one user's own keys with history and seen set full (settings.model.history_cap, worker.seen_cap):
    ``template``'s vector and candidates, and rows in the workers' encodings (what a long-lived user costs)."""
    user = "scale-at-caps"
    history = [[item, 1.0, 1_700_000_000_000 - j] for j, item in enumerate(items[: settings.model.history_cap])]
    pipe = client.pipeline(transaction=False)
    pipe.set(k.user(user, "hist"), orjson.dumps(history))
    pipe.zadd(k.user(user, "seen"), {i: 1_700_000_000_000 - j for j, i in enumerate(items[: settings.worker.seen_cap])})
    for suffix in ("vec", "cand", "prefs"):
        value = client.get(k.user(template, suffix))
        if value is not None:
            pipe.set(k.user(user, suffix), value)
    pipe.execute()
    size = memory_usage(client, [k.user(user, s) for s in USER_KEYS])
    client.delete(*(k.user(user, s) for s in USER_KEYS))
    return size


def counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def kafka_bytes(settings: Settings, topic: str) -> int:
    """Bytes of a topic's log segments on disk, every partition (not the preallocated offset and time indexes)."""
    return sum(f.stat().st_size for f in infra.kafka_service(settings).data_dir.glob(f"{topic}-*/*.log"))


def reader_latency(settings: Settings, users: list[str], rate: float, seconds: float, log: Path) -> dict:
    """The open loop's answers (bench.feeds.load), measured once the reader's category cache has caught up with
    what its pages ask for: warmed up in closed-loop chunks until a chunk's feature rows lack an item's categories
    at most WARM_UNKNOWN_SHARE of the time (with a cold cache a page lacks affinity and the fresh flag, and costs
    otherwise), at most WARM_UP_MAX_S; with the seconds that took and the share of unknown rows while measured."""
    with Child("serve", settings, log) as reader, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        reader.wait_ready(120)
        started, rows = time.perf_counter(), feature_rows(reader)
        while time.perf_counter() - started < WARM_UP_MAX_S:
            pool.submit(load, "closed", reader.port, FEED_PATH, users, 16, rate, WARM_UP_CHUNK_S).result()
            rows, (known, unknown) = feature_rows(reader), unknown_since(rows, feature_rows(reader))
            if known + unknown and unknown / (known + unknown) <= WARM_UNKNOWN_SHARE:
                break
        warm_up_s = time.perf_counter() - started
        result = pool.submit(load, "open", reader.port, FEED_PATH, users, 16, rate, seconds).result()
        known, unknown = unknown_since(rows, feature_rows(reader))
        return result | {"warm_up_s": warm_up_s, "unknown_rows": unknown / max(known + unknown, 1)}


def feature_rows(reader: Child) -> tuple[float, float]:
    """(known, unknown) of the reader's ``recstream_reader_feature_rows_total`` so far."""
    text = reader.metrics()
    return tuple(  # type: ignore[return-value]
        sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(f'recstream_reader_feature_rows_total{{categories="{label}"}}'))
        for label in ("known", "unknown")
    )  # fmt: skip


def unknown_since(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def run_scale(scale: int, args: argparse.Namespace, console: Console) -> Row:
    users, items = BASE_USERS * scale, BASE_ITEMS * scale
    row = Row(scale, users, items, round(args.events_per_user * users))
    with services() as settings:
        others = [pid for s in (infra.redis_service(settings), infra.kafka_service(settings)) if (pid := s.pid())]
        with PeakMemory(others) as peak:
            measure(row, settings, args, console)
        row.peak_rss = peak.peak
    return row


def measure(row: Row, settings: Settings, args: argparse.Namespace, console: Console) -> None:
    k = Keys(settings.redis.prefix)
    log, chunk, backlog = training.TrainingLog(), [], []
    for in_history, r in world_records(row.scale, row.history_events, args.backlog):
        if not in_history:
            backlog.append(r)
            continue
        log.add(r)
        chunk.append(r)
        if len(chunk) >= PRODUCE_CHUNK:
            asyncio.run(produce_backlog(settings, chunk))
            chunk = []
    asyncio.run(produce_backlog(settings, chunk))
    row.kafka_bytes_per_event = kafka_bytes(settings, settings.kafka.events_topic) / len(log)
    console.print(f"×{row.scale}: history produced ({len(log):,} events)")
    started = time.perf_counter()
    artifacts, _ = training.train(log, ALSConfig(), holdout=0)
    row.train_s = time.perf_counter() - started
    version = write_model(settings.model.dir, artifacts)
    row.index_bytes = sum(f.stat().st_size for f in (settings.model.dir / version / "index").iterdir())
    user_ids, item_ids = list(log.user_ids), list(log.item_ids)
    del log, artifacts, chunk
    console.print(f"×{row.scale}: trained in {row.train_s:.1f} s")
    report = asyncio.run(rebuild(settings))
    row.build_s, row.build_events_per_s = report.seconds, report.events / report.seconds
    console.print(f"×{row.scale}: state built in {row.build_s:.1f} s")
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=120)
    row.users_with_state, row.items_with_state = len(user_ids), client.hlen(k("views"))
    row.redis_bytes, row.bytes_per_user, row.bytes_per_item = redis_bytes(client, k, user_ids, item_ids)
    row.other_bytes = int(row.redis_bytes - row.bytes_per_user * len(user_ids) - row.bytes_per_item * len(item_ids))
    template = next(u for u in user_ids if client.exists(k.user(u, "cand")))
    seg_share = memory_usage(client, [k("user:seg")]) / max(client.hlen(k("user:seg")), 1)
    row.bytes_per_user_at_caps = at_caps(client, settings, k, template, item_ids) + seg_share
    served = with_served_vectors(backlog)
    events = sum(r.kind == "event" for r in served)
    asyncio.run(produce_backlog(settings, served))
    del backlog, served
    already = report.events
    row.worker_events_per_s, worker = time_backlog(settings, k.prefix, already + events, already)
    row.worker_rss = rss(worker.proc.pid, "VmHWM")
    worker_metrics = worker.metrics()
    row.rescores = int(counter(worker_metrics, "recstream_worker_full_rescores_total"))
    row.user_steps_per_event = counter(worker_metrics, "recstream_worker_user_steps_total") / events
    worker.stop()
    console.print(f"×{row.scale}: worker {row.worker_events_per_s:,.0f} events/s")
    row.rescore_ms, row.rescore_pass_max_ms, row.rescore_pass_calls = rescore_costs(settings)
    warm = random.Random(4).sample(user_ids, min(50_000, len(user_ids)))
    result = reader_latency(settings, warm, args.rate, args.reader_seconds, LOGS / f"reader-scale-{row.scale}.log")
    row.reader_p50_ms, row.reader_p99_ms = result["p50"], result["p99"]
    row.reader_answers, row.reader_failed = result["requests"], result["errors"] + result["degraded"]
    row.reader_warm_up_s, row.reader_unknown_rows = result["warm_up_s"], result["unknown_rows"]
    client.close()


# --- reporting ------------------------------------------------------------------------------------------

MEASURES: tuple[tuple[str, str, str], ...] = (
    # (Row field, label, unit) of each figure whose growth is fitted
    ("train_s", "train", "s"),
    ("build_events_per_s", "state build (rebuild)", "events/s"),
    ("bytes_per_user", "Redis per user", "B"),
    ("bytes_per_user_at_caps", "Redis per user at the caps", "B"),
    ("bytes_per_item", "Redis per item", "B"),
    ("redis_bytes", "Redis dataset", "B"),
    ("worker_events_per_s", "worker, full path", "events/s"),
    ("worker_rss", "worker peak RSS", "B"),
    ("index_bytes", "HNSW index on disk", "B"),
    ("rescore_ms", "one whole rescore (one script)", "ms"),
    ("rescore_pass_max_ms", "longest batch of a bounded rescore pass", "ms"),
    ("reader_p99_ms", "reader p99 at the offered rate", "ms"),
    ("peak_rss", "peak RSS, all processes", "B"),
)


def fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 2**20:,.1f} MiB" if value >= 2**20 else f"{value:,.0f} B"
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def tables(rows: list[Row], args: argparse.Namespace, traffic: Traffic) -> list[Table]:
    base = rows[0]
    measured = Table(title=f"cost curve: the stable world at ×{', ×'.join(str(r.scale) for r in rows)} ({machine()})")
    measured.add_column("measure")
    for r in rows:
        measured.add_column(f"×{r.scale}: {r.users:,} users, {r.items:,} items", justify="right")
    measured.add_column("fitted growth (n = users)", justify="right")
    fits: dict[str, tuple[float, float]] = {}
    for field, label, unit in MEASURES:
        values = [float(getattr(r, field)) for r in rows]
        cells = [fmt(v, unit) + ("" if r is base else f" ({v / values[0]:.2f}×)")
                 for r, v in zip(rows, values, strict=True)]  # fmt: skip
        if len(rows) > 1 and min(values) > 0:
            fits[field] = power_fit([r.users for r in rows], values)
            cells.append(f"n^{fits[field][1]:.2f}: {growth(fits[field][1])}")
        else:
            cells.append("")
        measured.add_row(f"{label} ({unit})", *cells)
    for label, cell in (
        ("history events", lambda r: f"{r.history_events:,}"),
        ("users / items with state", lambda r: f"{r.users_with_state:,} / {r.items_with_state:,}"),
        ("Redis other (dedup ids, ranker, bookkeeping)", lambda r: fmt(r.other_bytes, "B")),
        ("Kafka bytes per history event", lambda r: f"{r.kafka_bytes_per_event:,.0f} B"),
        ("user steps per timed event (a click's, or a user's first event's)",
         lambda r: f"{r.user_steps_per_event:.2f}"),
        ("rescore passes started in the backlog", lambda r: f"{r.rescores:,}"),
        ("batches of a bounded rescore pass", lambda r: f"{r.rescore_pass_calls:,}"),
        ("reader p50 / answers / failed",
         lambda r: f"{r.reader_p50_ms:.1f} ms / {r.reader_answers:,} / {r.reader_failed}"),
        ("reader warm-up (category cache) / its feature rows without categories while measured",
         lambda r: f"{r.reader_warm_up_s:.0f} s / {r.reader_unknown_rows:.1%}"),
    ):  # fmt: skip
        measured.add_row(label, *(cell(r) for r in rows), "")
    top = rows[-1]
    out = [measured]
    if fits:
        items = traffic.users * traffic.items_per_user

        def at_target(field: str, by_items: bool = False) -> float:
            size, target = (top.items, items) if by_items else (top.users, traffic.users)
            return extrapolate(size, float(getattr(top, field)), fits[field][1], target)

        cap = Table(title=f"capacity for {traffic.users:,} users, {items:,.0f} items: ×{top.scale} and the fits")
        for column in ("part", "need", "how"):
            cap.add_column(column)
        # a per-unit cost whose fit rises with n is carried along it; a falling one is kept (no credit for economies)
        per_user = extrapolate(
            top.users, top.bytes_per_user_at_caps, max(fits["bytes_per_user"][1], 0.0), traffic.users
        )
        per_item = extrapolate(top.items, top.bytes_per_item, max(fits["bytes_per_item"][1], 0.0), items)
        worker_b = min(fits["worker_events_per_s"][1], 0.0)
        worker_rate = extrapolate(top.users, top.worker_events_per_s, worker_b, traffic.users)
        for row in capacity(traffic, per_user, per_item, worker_rate, at_target("worker_rss", by_items=True),
                            args.rate, top.kafka_bytes_per_event):  # fmt: skip
            cap.add_row(*row)
        cap.add_row("train (one machine)", f"{at_target('train_s') / 3600:,.1f} h",
                    f"along n^{fits['train_s'][1]:.2f}; past one machine: recstream train --engine spark")  # fmt: skip
        whole = at_target("rescore_ms", by_items=True) / 1000
        bounded = f"{top.rescore_pass_max_ms:,.0f} ms"
        cap.add_row("one whole rescore", f"{whole:,.1f} s of Redis blocked",
                    f"along n^{fits['rescore_ms'][1]:.2f}; bounded pass: {bounded} a batch")  # fmt: skip
        out.append(cap)
    return out


def figures(rows: list[Row]) -> dict[str, dict[str, object]]:
    """The results.json figures of the ×100 row (baseline: the same run's ×1 row)."""
    top, base = next(r for r in rows if r.scale == 100), rows[0]
    cmd = " ".join([COMMAND, *sys.argv[1:]])
    return {
        "scale_redis_bytes_per_user": figure(top.bytes_per_user, "B", cmd, base.bytes_per_user),
        "scale_redis_bytes_per_user_at_caps": figure(top.bytes_per_user_at_caps, "B", cmd, base.bytes_per_user_at_caps),
        "scale_redis_bytes_per_item": figure(top.bytes_per_item, "B", cmd, base.bytes_per_item),
        "scale_worker_events_per_s_x100": figure(top.worker_events_per_s, "events/s", cmd, base.worker_events_per_s),
        "scale_worker_rss_mib_x100": figure(top.worker_rss / 2**20, "MiB", cmd, base.worker_rss / 2**20),
        "scale_reader_p99_ms_x100": figure(top.reader_p99_ms, "ms", cmd, base.reader_p99_ms),
        "scale_train_s_x100": figure(top.train_s, "s", cmd, base.train_s),
        "scale_rescore_ms_x100": figure(top.rescore_ms, "ms", cmd, base.rescore_ms),
        "scale_rescore_pass_max_ms_x100": figure(top.rescore_pass_max_ms, "ms", cmd, top.rescore_ms),
        "scale_peak_rss_gib_x100": figure(top.peak_rss / GIB, "GiB", cmd, base.peak_rss / GIB),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1,10,100", help="comma-separated multiples of 10,000 users, 1,000 items")
    parser.add_argument("--events-per-user", type=float, default=1.0, help="history events per user, every scale")
    parser.add_argument("--backlog", type=int, default=100_000, help="events in the worker's timed backlog")
    parser.add_argument("--rate", type=float, default=1_000.0, help="feeds/s offered to the reader")
    parser.add_argument("--reader-seconds", type=float, default=10.0)
    parser.add_argument("--target-users", type=int, default=Traffic.users)
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args(argv)
    scales = sorted({int(s) for s in args.scales.split(",")})
    console = Console(width=200)
    console.print(f"1-min load average {os.getloadavg()[0]:.2f} at the start")
    rows: list[Row] = []
    LOGS.mkdir(parents=True, exist_ok=True)
    for scale in scales:
        rows.append(run_scale(scale, args, console))
        (LOGS / "scale-rows.json").write_bytes(orjson.dumps([asdict(r) for r in rows]))  # kept, also if a run fails
    console.print(f"1-min load average {os.getloadavg()[0]:.2f} at the end")
    for table in tables(rows, args, Traffic(users=args.target_users)):
        show(table, console)
    for row in rows:
        check_answers(f"reader at ×{row.scale}", row.reader_answers, row.reader_failed)
    if 100 in scales and not args.no_record:
        record(figures(rows))


if __name__ == "__main__":
    main()
