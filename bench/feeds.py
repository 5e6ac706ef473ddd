"""Feed throughput and latency of the reader (`recstream serve`), Redis co-located, a load generator beside them.

    .venv/bin/python -m bench.feeds [--seconds 10] [--concurrency 32] [--rate 1000] [--rounds 6] [--turn-seconds 5]
    .venv/bin/python -m bench.feeds --cluster    # also a reader on a Redis Cluster, in the same turns

What it does, all on 127.0.0.1 and stopping exactly what it started (by pid):

1. starts its own redis-server (recstream.shell.infra, a temporary run folder, a free port);
2. writes a synthetic state itself, in the workers' key layout (recstream/contracts/keys.py; no worker
   runs: the benchmark measures the reader), at a realistic size: 5,000 items in 21 segments'
   smoothed-CTR rankings, a 500-item new-item pool with counts, 5,000 warm users (segment, history and
   personal candidates as long as the workers keep them (settings.model.history_cap and candidates_m), a
   200-item seen set, a batch list as long as the workers keep it, batch_candidates_m: users the batch fit knew),
   5,000 cold users (segment only) and a warm ranker per events partition (see :func:`warm_rankers`), so that the
   reader ranks its pages as it does once the workers trained it;
3. starts three readers as uvicorn subprocesses (uvloop + httptools, access log off): the main one (one
   process, the default settings: ranked pages), the contenders ``--workers 2`` and the same reader with
   the ranker switched off (``RECSTREAM_RANKER=false``: the fixed-quota blend);
4. runs the load generator in a separate process (raw HTTP/1.1 keep-alive, an asyncio protocol on uvloop; its
   CPU per request is a column of the tables: ~30 µs for the empty route and ~40–55 µs for a feed's ~4 kB
   answer here on 2026-12-03, ~10% less than over asyncio's streams in the same minutes, against ~700–900 µs
   of the reader's and ~150 µs of Redis's per feed):
   closed loop at fixed concurrency (throughput, p50, p99), then an open loop at a fixed offered rate
   below saturation, where latency is measured from each request's *scheduled* send time (no
   coordinated omission). Baseline in the same run, both ways: the same reader's empty route
   (``/healthz``: HTTP, uvicorn and the app's middleware, no Redis, no feed);
5. then ``--rounds`` rounds of turns, A B C, C B A, A B C …: warm users, closed loop, on the main reader and each
   contender, and at the fixed rate on the main reader, the 2 processes and the fixed blend. The ratio to the
   main reader is taken within each round (the other work on the machine drifts, a round is short) and its
   median over rounds is the figure: issue 18 wants 2 processes ≥ 1.6× one, issue 16 ranked pages ≥ 85% of the
   fixed blend's feeds/s (that ratio is the main reader's over the fixed blend's; the others a contender's over
   the main reader's);
6. prints the tables, with the CPU the readers (every process), the load generator and Redis spent per
   phase (cores = CPU seconds per second: they share the machine), and fails the run (exit 1, nothing
   recorded) when a phase has more than 0.1% of non-200 or degraded answers (bench/common.check_answers)
   or when any feed request, in any process, took more than 2 Redis round trips (each process's own
   histogram); otherwise writes ``reader_feeds_per_s`` (warm users, closed loop) and ``reader_p99_ms``
   (warm users, fixed rate), each with the empty route's figure as its baseline, and the medians of
   the turns: ``reader_feeds_per_s_1proc`` and ``reader_feeds_per_s_ranked`` (both the main reader),
   ``reader_feeds_per_s_2proc`` and ``reader_feeds_per_s_fixed``, and ``reader_p99_ms_2proc``: the p99 at the
   fixed rate of ``recstream serve --workers 2``, how a deployment serves that rate with one process per core
   (issue 16's p99 target names a rate, not a process count); and the targets' figures, the medians over rounds
   of the ratios within each round (not the ratios of the medians above, which differ):
   ``reader_two_processes_speedup`` and ``reader_ranked_to_fixed``. Only a run at the defaults records (``--cluster``
   may be added), so the keys never mix runs. With ``--cluster`` the same state is also
   written to a Redis Cluster of 3 masters + 3 replicas on this machine (the workers' hash-tagged layout,
   recstream/contracts/keys.py) and one more contender, a reader on it, takes its turns closed and open loop
   (its Redis CPU is every node's): ``reader_feeds_per_s_cluster``, ``reader_feeds_per_s_single`` (the main
   reader in the same rounds) and ``reader_p99_ms_cluster`` (issue 18: p99 ≤ 20 ms at 1,000 feeds/s on a
   Redis Cluster) and ``reader_cluster_to_single`` (the median of the ratios). The run also fails when the main
   reader served a page that was not ranked, or the fixed-blend reader one that was (their
   ``recstream_reader_feeds_by_mode_total``).

feeds/s counts only good answers (200, not degraded), over the time until the phase's last answer arrived (at the
fixed rate a saturated reader answers after the schedule ends); latencies are over every answer, since a
degraded one is the slow kind (its Redis call timed out). The machine's 2 cores are shared by the
readers, Redis and the load generator, as in production's worst case of co-location; the figures are
a floor for a reader with a core of its own. Two processes can only beat one where a core is idle:
on a machine busy with other work, the scheduler's share of the reader (one session, one autogroup)
is what both get, and the turns table shows it in its "reader cores" column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import orjson
from recstream.models.ranker import FTRLRanker
from recstream.streams.ranker_training import ftrl_config
from rich.console import Console
from rich.table import Table

from bench.common import (
    RESULTS,
    ROOT,
    changed_options,
    check_answers,
    client_of,
    fail,
    figure,
    modes,
    record,
    show,
)
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import Settings, load_settings
from recstream.shell import infra
from recstream.shell.infra import free_port
from recstream.shell.reader import PID_HEADER

COMMAND = ".venv/bin/python -m bench.feeds"
CATEGORIES = ["action", "comedy", "drama", "horror", "news", "music", "sport", "film", "kids", "docs"]
SEGMENTS = [f"age{a}.{g}" for a in ("0-17", "18-24", "25-34", "35-44", "45-55", "56+") for g in "MF"]
SEGMENTS += [f"age{a}" for a in ("0-17", "18-24", "25-34", "35-44", "45-55", "56+")] + ["M", "F", "default"]
N_ITEMS, N_POOL, N_WARM, N_COLD = 5_000, 500, 5_000, 5_000
FEED_PATH = "/v1/feed/%s?limit=20"
EMPTY_PATH = "/healthz?user=%s"  # the baseline: same request shape, the route answers without Redis
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)
READY_S = 240.0
"""How long the readers may take to start: spawned processes import everything, slowly on a busy machine."""
RANKER_MARGIN = 100
"""Rows each partition's ranker learned past its share of ``ranker_min_rows``."""


def populate(settings: Settings, seed: int = 7) -> None:
    """Write a realistic state in the workers' layout (the bench measures the reader, not the workers)."""
    rng = random.Random(seed)
    k = Keys.of(settings)  # hash-tagged on a Redis Cluster, as the workers write it there
    client = client_of(settings)
    pipe = client.pipeline(transaction=False)
    items = [f"i{n}" for n in range(N_ITEMS)]
    pool = [f"n{n}" for n in range(N_POOL)]
    for item in items + pool:
        pipe.hset(
            k.item(item), mapping={"categories": ",".join(rng.sample(CATEGORIES, 2)), "created_ts": 1, "available": 1}
        )
    ctr = {item: rng.betavariate(2, 40) for item in items}
    pipe.zadd(k.rank(), ctr)
    for segment in SEGMENTS:
        pipe.zadd(k.rank(segment), {i: c * rng.uniform(0.5, 1.5) for i, c in ctr.items() if rng.random() < 0.4})
    pipe.sadd(k("segments"), *SEGMENTS)
    pipe.zadd(k("pool"), {item: 1_700_000_000_000 + n for n, item in enumerate(pool)})
    pipe.hset(k("views"), mapping={item: rng.randrange(0, 200) for item in pool})
    pipe.hset(k("clicks"), mapping={item: rng.randrange(0, 8) for item in pool})
    pipe.set(k("prior"), 0.05)
    pipe.set(k("model:current"), "bench")
    for key, state in warm_rankers(settings, np.random.default_rng(seed)).items():  # one slot each on a cluster
        pipe.set(key, state)
    pipe.execute()
    for n in range(N_WARM + N_COLD):
        user = f"w{n}" if n < N_WARM else f"c{n}"
        pipe.hset(k.user_segments(user), user, rng.choice(SEGMENTS))
        if n < N_WARM:
            history = rng.sample(items, settings.model.history_cap)
            pipe.set(
                k.user(user, "hist"), orjson.dumps([[i, 1.0, 1_700_000_000_000 - j] for j, i in enumerate(history)])
            )
            pipe.zadd(k.user(user, "seen"), {i: 1_700_000_000_000 - j for j, i in enumerate(rng.sample(items, 200))})
            lengths = {"cand": settings.model.candidates_m, "bcand": settings.model.batch_candidates_m}
            for suffix, length in lengths.items():  # the step's list and the batch fit's: every warm user is the fit's
                ranked = rng.sample(items, length)
                cand = [[i, round(1 - j / len(ranked), 5), rng.choice(history)] for j, i in enumerate(ranked)]
                pipe.set(k.user(user, suffix), orjson.dumps(cand))
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    client.close()


def warm_rankers(settings: Settings, rng: np.random.Generator) -> dict[str, bytes]:
    """A warm ranker per events partition, stored as the workers store it: ``Keys.ranker(topic, p)`` holding
    ``FTRLRanker.to_bytes()``, trained with the workers' FTRL settings. Each learned its share of
    ``ranker_min_rows`` (and RANKER_MARGIN more), so the reader ranks: rows of random feature values, labels
    drawn from a logistic model with planted weights, so that every weight is learned (not 0) and scoring
    costs what it costs in production (the cost does not depend on what the weights are)."""
    k, config = Keys.of(settings), ftrl_config(settings.ranker)
    partitions = settings.kafka.events_partitions
    per_partition = -(-settings.blend.ranker_min_rows // partitions) + RANKER_MARGIN
    planted = rng.normal(0.0, 1.0, len(FEATURES) + 1)
    states = {}
    for partition in range(partitions):
        rows = rng.uniform(0.0, 1.0, (per_partition, len(FEATURES)))
        clicked = rng.random(per_partition) < 1.0 / (1.0 + np.exp(-(planted[0] + rows @ planted[1:])))
        ranker = FTRLRanker(len(FEATURES), config)
        ranker.update(rows, clicked.astype(np.int64))
        states[k.ranker(settings.kafka.events_topic, partition)] = ranker.to_bytes()
    return states


# --- the load generator (runs in its own process) -------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load generator: a request written, its answer parsed from the
    bytes as they arrive (the status, and whether the body says degraded). A protocol rather than asyncio's
    streams: a request then costs one future and one write, not a ``readuntil`` and a ``readexactly``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the reader closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(self.buffer, 0, end)
        size = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) < size:
            return
        status, degraded = int(self.buffer[9:12]), self.buffer.find(b'"degraded":true', end, size) >= 0
        del self.buffer[:size]
        self.answer.set_result((status, degraded))  # type: ignore[union-attr]

    def request(self, path: bytes) -> asyncio.Future[tuple[int, bool]]:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path)  # type: ignore[union-attr]
        return self.answer


async def _connect(port: int) -> _Connection:
    _, connection = await asyncio.get_running_loop().create_connection(_Connection, "127.0.0.1", port)
    return connection


async def _closed(
    port: int, path: str, users: list[str], concurrency: int, seconds: float
) -> tuple[list[float], int, int, float]:
    """Each connection sends its next request when the last is answered, until ``seconds`` have passed; latencies,
    non-200 and degraded counts, and the seconds until the last answer arrived."""
    latencies: list[float] = []
    errors = degraded = 0
    start = time.perf_counter()
    stop = start + seconds

    async def client(seed: int) -> None:
        nonlocal errors, degraded
        rng = random.Random(seed)
        connection = await _connect(port)
        while (started := time.perf_counter()) < stop:
            status, was_degraded = await connection.request((path % rng.choice(users)).encode())
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            degraded += was_degraded
        connection.transport.close()  # type: ignore[union-attr]

    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return latencies, errors, degraded, time.perf_counter() - start


async def _open(
    port: int, path: str, users: list[str], rate: float, seconds: float
) -> tuple[list[float], int, int, float]:
    """Requests scheduled every 1/rate s for ``seconds`` on a pool of keep-alive connections; latency from the
    scheduled time. Returns what :func:`_closed` does: a saturated reader answers after the schedule ends."""
    connections: asyncio.Queue = asyncio.Queue()
    for _ in range(64):
        connections.put_nowait(await _connect(port))
    latencies: list[float] = []
    errors = degraded = 0
    rng = random.Random(1)

    async def one(scheduled: float, path: bytes) -> None:
        nonlocal errors, degraded
        conn = await connections.get()
        status, was_degraded = await conn.request(path)
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200
        degraded += was_degraded
        connections.put_nowait(conn)

    start = time.perf_counter()
    tasks = []
    for n in range(int(rate * seconds)):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, (path % rng.choice(users)).encode())))
    await asyncio.gather(*tasks)
    return latencies, errors, degraded, time.perf_counter() - start


def load(mode: str, port: int, path: str, users: list[str], concurrency: int, rate: float, seconds: float) -> dict:
    """One phase in this (child) process: good answers per second (over the time until the last answer arrived, not
    the phase's nominal length: at a fixed offered rate, a saturated reader answers late, and dividing by the
    schedule's length would give the offered rate), latencies of every answer in ms, non-200 and degraded counts,
    and the CPU seconds this process spent generating the load."""
    import uvloop

    cpu = time.process_time()
    closed = mode == "closed"
    run = _closed(port, path, users, concurrency, seconds) if closed else _open(port, path, users, rate, seconds)
    latencies, errors, degraded, elapsed = uvloop.run(run)
    ms = np.asarray(latencies) * 1000
    good = len(ms) - errors - degraded  # a degraded answer is a 200 too
    quantile = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: float("nan"))
    return {
        "requests": len(ms),
        "per_s": good / elapsed,
        "p50": quantile(50),
        "p99": quantile(99),
        "p999": quantile(99.9),
        "errors": errors,
        "degraded": degraded,
        "cpu_s": time.process_time() - cpu,
    }


# --- orchestration --------------------------------------------------------------------------

MAIN = "1 process"
"""The reader every phase of the first table runs on: the default settings, one process."""


@dataclass(frozen=True)
class Contender:
    """A reader set up otherwise than the main one, measured in turns with it (A, B, A, B …): same state,
    same load, same machine, so the drift of other work on the cores falls on both."""

    name: str
    key: str  # results.json key of its warm feeds/s
    ratio_key: str  # results.json key of the median over rounds of the warm feeds/s ratio within each round
    processes: int = 1
    mode: str = "ranked"  # how its pages must be made (serving/ranking.MODES)
    settings: tuple[tuple[str, object], ...] = ()  # flat settings it has otherwise than the main reader
    open_loop: bool = False  # also measured at the fixed offered rate (p99)
    p99_key: str | None = None  # results.json key of its p99 at that rate (the median over rounds)
    main_first: bool = False  # the ratio is the main reader's over this one's (its target names it so), not the reverse


CONTENDERS = [
    Contender("2 processes", "reader_feeds_per_s_2proc", "reader_two_processes_speedup", processes=2,
              open_loop=True, p99_key="reader_p99_ms_2proc"),
    Contender("fixed blend", "reader_feeds_per_s_fixed", "reader_ranked_to_fixed", mode="fixed-off",
              settings=(("ranker", False),), open_loop=True, main_first=True),
]  # fmt: skip
CLUSTER = "Redis Cluster"
MAIN_KEYS = {
    "2 processes": "reader_feeds_per_s_1proc",
    "fixed blend": "reader_feeds_per_s_ranked",
    CLUSTER: "reader_feeds_per_s_single",
}
"""The main reader's key in each comparison (its median over the same rounds)."""


@dataclass(frozen=True)
class Phase:
    name: str
    mode: str  # "closed" (fixed concurrency) or "open" (fixed offered rate)
    path: str
    users: list[str]
    seconds: float
    reader: str = MAIN


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a reader's uvicorn parent and its worker processes)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children)


def round_trips(metrics: str) -> tuple[int, int]:
    """(feed requests, those with more than 2 Redis round trips), from the reader's own histogram."""
    route = 'route="/v1/feed/{user_id}"'
    count = re.search(rf"recstream_reader_redis_round_trips_count\{{{route}\}} (\S+)", metrics)
    within = re.search(rf'recstream_reader_redis_round_trips_bucket\{{le="2.0",{route}\}} (\S+)', metrics)
    if count is None or within is None:
        return 0, 0
    return int(float(count.group(1))), int(float(count.group(1)) - float(within.group(1)))


def every_process_metrics(reader: infra.Child, processes: int, seconds: float = 60.0, parallel: int = 16) -> list[str]:
    """The /metrics text of each of a reader's processes (each answers with its own): fresh connections, ``parallel``
    at a time, until ``X-Reader-Pid`` has named them all. One at a time may always reach the same process: an idle
    one accepts every connection waiting."""

    def one(_: int) -> tuple[str, str]:
        with urlopen(f"{reader.url}/metrics", timeout=5) as response:
            return response.headers[PID_HEADER.decode()], response.read().decode()

    texts: dict[str, str] = {}
    until = time.monotonic() + seconds
    with ThreadPoolExecutor(parallel) as pool:
        while time.monotonic() < until:
            for pid, text in pool.map(one, range(parallel)):
                texts.setdefault(pid, text)
            if len(texts) == processes:
                return list(texts.values())
    fail(f"{len(texts)} of the reader's {processes} processes answered /metrics in {seconds:.0f} s")


def measure(
    phases: list[Phase], readers: dict[str, infra.Child], redis_pids: dict[str, list[int]], args: argparse.Namespace
) -> dict[str, dict]:
    """Every phase through the load generator's process, with the CPU time the reader, the generator and Redis
    (every node the phase's reader reads) spent in it (cores = CPU seconds per second: the 2 cores are shared)."""
    results = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        for phase in phases:
            reader, nodes = readers[phase.reader], redis_pids[phase.reader]
            cpu, redis_cpu = tree_cpu_seconds(reader.proc.pid), sum(map(cpu_seconds, nodes))
            job = pool.submit(load, phase.mode, reader.port, phase.path, phase.users, args.concurrency, args.rate,
                              phase.seconds)  # fmt: skip
            results[phase.name] = r = job.result()
            r["reader_cpu_s"] = tree_cpu_seconds(reader.proc.pid) - cpu
            r["redis_cpu_s"] = sum(map(cpu_seconds, nodes)) - redis_cpu
    return results


def phase_table(title: str, phases: list[Phase], results: dict[str, dict]) -> Table:
    table = Table(title=title)
    columns = ("phase", "feeds/s", "p50 ms", "p99 ms", "p99.9 ms", "reader CPU µs/feed", "reader cores",
               "load generator µs/request", "load generator cores", "Redis cores", "non-200", "degraded")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        r = results[phase.name]
        micros, generator = (r[k] / max(r["requests"], 1) * 1e6 for k in ("reader_cpu_s", "cpu_s"))
        table.add_row(
            phase.name, f"{r['per_s']:,.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['p999']:.1f}",
            f"{micros:,.0f}", f"{r['reader_cpu_s'] / phase.seconds:.2f}", f"{generator:,.0f}",
            *(f"{r[k] / phase.seconds:.2f}" for k in ("cpu_s", "redis_cpu_s")), str(r["errors"]), str(r["degraded"]),
        )  # fmt: skip
    return table


def loads(args: argparse.Namespace) -> tuple[str, str]:
    """The closed and the open loop as phase names and the figures' commands call them."""
    return f"{args.concurrency} connections", f"{args.rate:,.0f} feeds/s offered"


def turns(contenders: list[Contender], args: argparse.Namespace, warm: list[str]) -> list[list[Phase]]:
    """Each round's phases: the main reader and every contender, closed loop, then those measured open loop; every
    other round in the reverse order (A B C, C B A, …). Why: a reader's turn right after the 2-process reader's costs
    more CPU per feed for the same work (2026-12-06, three runs: ranked / fixed 0.87 on average over the 9 rounds where
    the fixed blend took that turn, 0.67 over the 8 where the ranked reader did), and in the order A B C of every round
    before, the fixed blend always took it, which likely overstated ranked / fixed. With the default, even, number of
    rounds each reader takes it equally often."""
    closed, offered = loads(args)
    rounds = []
    for n in range(1, args.rounds + 1):
        step = 1 if n % 2 else -1  # every other round reversed
        names = [MAIN, *(c.name for c in contenders)][::step]
        opens = [c.name for c in contenders if c.open_loop]
        opens = ([MAIN, *opens] if opens else [])[::step]
        rounds.append(
            [Phase(f"{n}: {name}, {closed}", "closed", args.path, warm, args.turn_seconds, name) for name in names]
            + [Phase(f"{n}: {name}, {offered}", "open", args.path, warm, args.turn_seconds, name) for name in opens]
        )
    return rounds


@dataclass
class Comparison:
    """What the turns showed: the table of ratios and, by results.json key, the medians over rounds of every reader's
    warm feeds/s, of the p99s the contenders with a ``p99_key`` had, and of the warm feeds/s ratios."""

    table: Table
    feeds_per_s: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def compared(contenders: list[Contender], rounds: list[list[Phase]], results: dict[str, dict]) -> Comparison:
    """Per contender, its warm feeds/s (and p99) over the main reader's in each round (the main reader's over its
    own when ``main_first``) and the median of those ratios, the figure of its target: the machine's other work
    drifts between rounds, and a ratio within one round cancels it, which the medians' ratio does not."""

    def of(phases: list[Phase], reader: str, mode: str) -> dict:
        return next(results[p.name] for p in phases if p.reader == reader and p.mode == mode)

    out = Comparison(Table(title="in turns: each contender against the main reader, the ratio within each round"))
    for column in ("ratio", "per round", "median"):
        out.table.add_column(column, justify="left" if column != "median" else "right")
    for c in contenders:
        top, bottom = (MAIN, c.name) if c.main_first else (c.name, MAIN)
        rows = [("feeds/s", "closed", "per_s")] + ([("p99", "open", "p99")] if c.open_loop else [])
        for label, mode, key in rows:
            ratios = [of(phases, top, mode)[key] / of(phases, bottom, mode)[key] for phases in rounds]
            out.table.add_row(f"{top} / {bottom}: {label}", "  ".join(f"{x:.2f}" for x in ratios),
                              f"{np.median(ratios):.2f}")  # fmt: skip
            if mode == "closed":
                out.ratios[c.ratio_key] = float(np.median(ratios))
        for reader, key in ((c.name, c.key), (MAIN, MAIN_KEYS[c.name])):
            out.feeds_per_s[key] = float(np.median([of(phases, reader, "closed")["per_s"] for phases in rounds]))
        if c.p99_key is not None:
            out.p99_ms[c.p99_key] = float(np.median([of(phases, c.name, "open")["p99"] for phases in rounds]))
    return out


def full_run(args: argparse.Namespace) -> bool:
    """Whether the run measured what the recorded figures promise: every measuring option at its default
    (``--cluster`` only adds a contender), so that results.json never mixes keys of different runs."""
    return not changed_options(args, parse_args([]), ("cluster", "no_record"))


def figures(args: argparse.Namespace, cmd: str, phases: list[Phase], results: dict[str, dict],
            comparison: Comparison) -> dict[str, dict[str, object]]:  # fmt: skip
    """bench/results.json's figures of a valid run: the first table's warm feeds/s and p99 against the empty route,
    and the turns' medians."""
    empty_closed, warm_closed, _, empty_open, warm_open = (results[p.name] for p in phases)
    closed, offered = loads(args)
    turned = f"{cmd}  # warm users, {closed}, median of {args.rounds} turns"
    return {
        "reader_feeds_per_s": figure(warm_closed["per_s"], "feeds/s", f"{cmd}  # warm users, {closed}",
                                     baseline=empty_closed["per_s"]),
        "reader_p99_ms": figure(warm_open["p99"], "ms", f"{cmd}  # warm users at {offered}",
                                baseline=empty_open["p99"]),
        **{key: figure(value, "feeds/s", turned) for key, value in comparison.feeds_per_s.items()},
        **{key: figure(value, "ms", f"{cmd}  # warm users at {offered}, median of {args.rounds} turns")
           for key, value in comparison.p99_ms.items()},
        **{key: figure(value, "ratio", f"{cmd}  # warm users, {closed}, median of the {args.rounds} rounds' ratios")
           for key, value in comparison.ratios.items()},
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase of the main reader")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the closed-loop phases")
    parser.add_argument("--rate", type=float, default=1_000.0, help="offered feeds/s of the open-loop phases")
    parser.add_argument("--path", default=FEED_PATH, help="feed request path, %%s is the user id")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of turns between the readers compared (even: each order as often)")  # fmt: skip
    parser.add_argument("--turn-seconds", type=float, default=5.0, help="duration of each reader's turn")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also a reader on a Redis Cluster (3 masters + 3 replicas) holding the same state, in turns",
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console(width=170)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-feeds-"))
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        run_dir=run_dir,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )
    console.print(infra.redis_up(settings))
    readers: dict[str, infra.Child] = {}
    contenders = list(CONTENDERS)
    stack = contextlib.ExitStack()  # with --cluster: the Redis Cluster's nodes, stopped by pid
    try:
        single, cluster_pids = [infra.redis_service(settings).pid() or 0], []
        started = time.perf_counter()
        populate(settings)
        if args.cluster:
            clusters = stack.enter_context(infra.running_clusters(settings.replace(run_dir=run_dir / "cluster"), False))
            populate(clusters.settings)
            cluster = clusters.settings.redis
            contenders.append(Contender(CLUSTER, "reader_feeds_per_s_cluster", "reader_cluster_to_single",
                                        open_loop=True, p99_key="reader_p99_ms_cluster",
                                        settings=(("redis_url", cluster.url), ("redis_cluster", True))))  # fmt: skip
            cluster_pids = [infra.redis_service(node).pid() or 0 for node in clusters.redis_nodes]
        console.print(f"state written in {time.perf_counter() - started:.1f} s")
        processes = {MAIN: 1} | {c.name: c.processes for c in contenders}
        readers[MAIN] = infra.Child("serve", settings, run_dir / "reader.log")
        for c in contenders:
            readers[c.name] = infra.Child("serve", settings.replace(reader_workers=c.processes, **dict(c.settings)),
                                          run_dir / f"reader-{c.name}.log")  # fmt: skip
        for reader in readers.values():
            reader.wait_ready(READY_S)
        warm = [f"w{n}" for n in range(N_WARM)]
        cold = [f"c{n}" for n in range(N_WARM, N_WARM + N_COLD)]
        closed, offered = loads(args)
        warm_ups = [Phase(f"warm-up {name}", "closed", args.path, warm, 3.0, name) for name in readers]  # unchecked
        phases = [
            Phase(f"baseline: empty route, {closed}", "closed", EMPTY_PATH, warm, args.seconds),
            Phase(f"warm users, {closed}", "closed", args.path, warm, args.seconds),
            Phase(f"cold users, {closed}", "closed", args.path, cold, args.seconds),
            Phase(f"baseline: empty route, {offered}", "open", EMPTY_PATH, warm, args.seconds),
            Phase(f"warm users, {offered}", "open", args.path, warm, args.seconds),
        ]
        rounds = turns(contenders, args, warm)
        load_before = os.getloadavg()[0]
        redis_pids = {name: cluster_pids if name == CLUSTER else single for name in readers}
        results = measure(warm_ups + phases + [p for r in rounds for p in r], readers, redis_pids, args)
        texts = {name: every_process_metrics(reader, processes[name]) for name, reader in readers.items()}
    finally:
        for reader in readers.values():
            reader.stop()
        stack.close()
        console.print(infra.stop(infra.redis_service(settings)))
        shutil.rmtree(run_dir, ignore_errors=True)
    show(phase_table(f"reader: GET {args.path % '{user}'} (one process; Redis and the load on the same cores)",
                     phases, results), console)  # fmt: skip
    show(phase_table(f"in turns, round by round: the main reader ({MAIN}) and each contender",
                     [p for r in rounds for p in r], results), console)  # fmt: skip
    comparison = compared(contenders, rounds, results)
    show(comparison.table, console)
    trips = [round_trips(text) for name in texts for text in texts[name]]
    feeds, over_two = (sum(t[i] for t in trips) for i in (0, 1))
    expected = {MAIN: "ranked"} | {c.name: c.mode for c in contenders}
    made = {name: sum((modes(text) for text in texts[name]), Counter()) for name in texts}
    console.print("pages by how they were made: " + "; ".join(f"{name}: {dict(made[name])}" for name in made))
    console.print(f"feed requests with more than 2 Redis round trips: {over_two:,} of {feeds:,} (every process)")
    console.print(
        f"{os.cpu_count()} cores; 1-min load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (other work on the machine skews every figure)"
    )
    for phase in phases + [p for r in rounds for p in r]:
        r = results[phase.name]
        check_answers(phase.name, r["requests"], r["errors"] + r["degraded"])
    if feeds == 0:
        fail(f"the readers counted no feed requests: is {args.path!r} the feed route?")
    if over_two:
        fail(f"{over_two:,} of {feeds:,} feed requests took more than 2 Redis round trips")
    for name, counts in made.items():
        other = {mode: n for mode, n in counts.items() if mode not in (expected[name], "degraded") and n}
        if other:
            fail(f"the {name} reader should serve {expected[name]} pages, it also served {other}")
    if args.no_record or not full_run(args):
        console.print("not written to bench/results.json: --no-record, or not a full run at the defaults")
        return
    written = figures(args, " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)]), phases, results, comparison)
    record(written)
    console.print(f"wrote {', '.join(written)} to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
