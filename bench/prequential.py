"""Prequential HR@10, nDCG@10, coverage, novelty and ILD on MovieLens 100K: baselines in memory, then the real pipeline.

    .venv/bin/python -m bench.prequential            # the project defaults → the plain results.json keys
    .venv/bin/python -m bench.prequential --tuned    # the proposed defaults → the *_tuned keys
    .venv/bin/python -m bench.prequential --sweep regularization=10,20,40 --sweep history_cap=5,10,20

Protocol (ARCHITECTURE.md, evaluation protocol; details in bench/prequential_protocol.py): the
stream of recstream.jobs.sources.movielens, the first 80% of events as history (the batch model is
trained on it and it is replayed through the pipeline), then every click of the tail is scored
on the user's top 10 fetched *before* that rating's view and click are published (the view is the
click's own impression; published first it would put the item in the seen set and make a hit
impossible). Rows, all in one run and on the same schedule:

1. popularity — top 10 by clicks so far, minus what the user has seen;
2. frozen batch iALS — the batch model's own user vectors, never updated; users it does not know
   (86% of the tail's clicks: ML-100K users arrive over time) get the popularity list (counted);
3. in-memory streaming reference — the worker's own online logic (streams.personalize.Personalizer:
   capped history, exact user step with fixed item factors, HNSW candidates minus the history)
   driven in process by the same events; top 10 of its candidate list minus what the user has seen;
4. pipeline candidates — Kafka + Redis + a real ``recstream worker``; the list read from
   ``user:<u>:cand``, minus what the user has seen; the table says how many of its lists equal the
   reference's (all of them, so far: the reference *is* the worker's logic);
5. pipeline served feed — ``recstream serve``'s GET /v1/feed/{u}?limit=10&seed=… with the default blend
   (shares 0.6/0.2/0.1/0.1 → 6 personal, 2 popular, 1 fresh, 1 explore slots), as served, with the
   slots and hits per source. A page the reader marks degraded (its Redis timeout, 50 ms, hit by this
   machine's load) is asked again up to three times; the counts are shown;
6. its baseline, the previous default blend — a second reader on the same Redis, with popular slots
   by the segment's smoothed CTR alone (``RECSTREAM_POPULAR_PERSONAL_HEAD=0``, serving/blend.personal_first).

Every row reports HR@10, nDCG@10, catalogue coverage, novelty (mean −log2 of an item's add-one
smoothed share of the history's ratings) and intra-list diversity (mean pairwise genre-Jaccard
distance), models/ranking_metrics.py; results.json gets ``prequential_<metric>_<row>`` for each.

Approximations, all measured or bounded in the table:

* Rounds (prequential_protocol.rounds): the pipeline catches up once per round (274 rounds) instead
  of once per click (11,234). Per user the published prefix before each fetch is exactly the
  strict-order one, so candidate lists are exact; global state (click counts, the reader's smoothed-CTR
  rankings and pool, which items are announced) sees other users' events in round order. Every row
  uses the rounds schedule; popularity and the reference are also run strictly in order in memory to
  measure the difference (reference: identical; popularity: ±0.001). The served row's popular and
  explore slots carry the same kind of error, on the 0.016 of HR they contribute.
* Items and users are announced (and applied by the worker) right before the first published
  event that uses them; the 64 items first used in the tail enter the index as content vectors then.
* The reader runs with its snapshot reloads at 0.1 s (defaults 0.5 s / 1 s) and each round waits
  ``--reader-wait-s`` (0.25 s) after the worker caught up, so the feed sees the caught-up state as
  every other row does; the blend itself is the default.

Seconds: in-memory rows, their own work over the tail; pipeline rows, publishing + waiting for the
worker + reading their lists (the served row adds the reader-reload waits and its HTTP requests).

Tuning (``--sweep``, reference row, on a validation split: trained on the first 60% of events,
scored on 60–80%, never on the reported tail). One at a time from the defaults (HR@10 0.151):
history cap 10 → 0.175 (cap 20: 0.171, 50: 0.157, 200: 0.147), λ 20 → 0.159 (100: 0.135), α, k, the
view/click weights and iterations within ±0.005 or worse. Grid λ ∈ {10, 20, 40} × cap ∈ {5, 10, 15,
20} × α ∈ {1, 2}, then λ ∈ {30, 40, 60, 80} × α ∈ {2, 3, 4}, k ∈ {32, 64, 96}, view ∈ {0.5, 1, 2} ×
click ∈ {2, 4, 8}: best λ = 40, cap = 10 (α 2, k 64, weights 1/4 unchanged): 0.202 (HR@6 0.144),
neighbours within 0.01. On the reported tail: 0.161 → 0.210. ``--tuned`` applies it; as defaults it
means ALSConfig.regularization = 40 and Settings.history_cap = 10 (and `recstream train`'s λ).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from recstream.models.als import ALSConfig, event_weights, interaction_matrix, train_als
from recstream.models.artifacts import ModelArtifacts, read_model, write_model
from recstream.models.history import History
from recstream.streams.personalize import Personalizer
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, figure, machine, record, services, show
from bench.prequential_protocol import (
    K,
    Popularity,
    Rating,
    Round,
    Stream,
    Tally,
    events_of,
    first_uses,
    group_ratings,
    in_order,
    rounds,
    seen_sets,
    split,
    top_k,
)
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings, load_settings
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.jobs.sources import Record, movielens
from recstream.shell import infra
from recstream.shell.infra import Child

COMMAND = ".venv/bin/python -m bench.prequential"
DEFAULT_MOVIELENS = ROOT.parent / "shared" / "data" / "ml-100k"
LOGS = ROOT / ".run" / "bench-logs"
DEGRADED_RETRIES = 3
READER_CONCURRENCY = 4
console = Console(width=max(Console().width, 150))


# --- the batch model ---------------------------------------------------------------------


@dataclass
class Batch:
    """The model trained on the history: the artifacts the workers load, and the batch user vectors."""

    artifacts: ModelArtifacts
    user_rows: dict[str, int]
    user_factors: np.ndarray
    seconds: float


def train_history(stream: Stream, history: Sequence[Rating], cfg: ALSConfig) -> Batch:
    """``recstream.jobs.training`` on the history (as ``recstream train`` would), plus the batch user vectors.

    ``training.train`` keeps only item-side artifacts, so the frozen baseline's user vectors come
    from a second fit of the same matrix with the same seed; it must give the same item factors,
    which is checked, so the frozen row and the streaming rows share one model.
    """
    started = time.perf_counter()
    records = [Record("item", stream.items[i]) for i in first_uses(history, set(), "item")]
    records += [Record("event", e) for e in events_of(history)]
    log = training.collect(records)
    artifacts, _ = training.train(log, cfg, holdout=0)
    users, items, clicks = (np.asarray(a) for a in (log.users, log.items, log.clicks))
    r = interaction_matrix(users, items, event_weights(clicks, cfg), len(log.user_ids), len(log.item_ids))
    fit = train_als(r, cfg)
    drift = float(np.max(np.abs(fit.item_factors - artifacts.item_factors)))
    if drift > 1e-4:
        raise RuntimeError(f"the second fit differs from the first by {drift:.2g}: implicit is not deterministic here")
    return Batch(artifacts, dict(log.user_ids), fit.user_factors, time.perf_counter() - started)


# --- in-memory rows ----------------------------------------------------------------------


class Row:
    """One in-memory recommender: sees published ratings (and announced items), answers a top-k."""

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        raise NotImplementedError

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        raise NotImplementedError


class PopularityRow(Row):
    def __init__(self) -> None:
        self.counts = Popularity()

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        self.counts.add(events_of(ratings))

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        return self.counts.top(seen)


class FrozenRow(Row):
    """Batch user vectors · item factors over the trained items; unknown users get popularity."""

    def __init__(self, batch: Batch, tally: Tally) -> None:
        self.popular = Popularity()
        self.tally = tally
        self.items = np.array(batch.artifacts.item_ids, dtype=object)
        self.factors = batch.artifacts.item_factors
        self.user_rows = batch.user_rows
        self.users = batch.user_factors

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        self.popular.add(events_of(ratings))

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        row = self.user_rows.get(user)
        if row is None:
            self.tally.fallbacks += 1
            return self.popular.top(seen)
        scores = self.factors @ self.users[row]
        order = np.argsort(-scores, kind="stable")[: K + len(seen)]
        return top_k(self.items[order].tolist(), seen)


class ReferenceRow(Row):
    """The worker's Personalizer in process: same history merge, user step, HNSW query and exclusions."""

    def __init__(self, version: str, artifacts: ModelArtifacts, stream: Stream, history_cap: int, m: int) -> None:
        self.personalizer = Personalizer(version, artifacts, history_cap, m)
        self.stream = stream
        self.histories: dict[str, History] = {}
        self.candidates: dict[str, list[str]] = {}

    def observe(self, ratings: Sequence[Rating], new_items: Sequence[str]) -> None:
        for item in new_items:
            self.personalizer.apply_item(self.stream.items[item])
        update = self.personalizer.update_users(events_of(ratings), self.histories)
        self.histories.update(update.histories)
        for suffix, value in update.blobs:
            if suffix.startswith("user:") and suffix.endswith(":cand"):  # ids may hold ":" themselves
                self.candidates[suffix[len("user:") : -len(":cand")]] = [row[0] for row in orjson.loads(value)]

    def recommend(self, user: str, seen: set[str]) -> list[str]:
        return top_k(self.candidates.get(user, ()), seen)


def replay_in_memory(
    rows: dict[str, Row], tallies: dict[str, Tally], history: Sequence[Rating], schedule: Sequence[Round]
) -> None:
    """Feed the history, then each round: publish, then score every click of the round on every row."""
    known: set[str] = set()
    seen: dict[str, set[str]] = {}

    def publish(ratings: Sequence[Rating]) -> None:
        new_items = list(first_uses(ratings, known, "item"))
        known.update(new_items)
        seen_sets(ratings, seen)
        for name, row in rows.items():
            started = time.perf_counter()
            row.observe(ratings, new_items)
            tallies[name].seconds += time.perf_counter() - started

    publish(history)
    for tally in tallies.values():
        tally.seconds = 0.0  # the tail replay is what the column reports
    empty: set[str] = set()
    for step in schedule:
        publish(step.publish)
        for rating in step.score:
            for name, row in rows.items():
                started = time.perf_counter()
                tallies[name].add(row.recommend(rating.user_id, seen.get(rating.user_id, empty)), rating.item_id)
                tallies[name].seconds += time.perf_counter() - started


# --- the pipeline ------------------------------------------------------------------------


BLENDS: dict[str, dict[str, object]] = {"served": {}, "served_by_ctr": {"popular_personal_head": 0}}
"""The served rows: one reader each, with the default blend and, as the baseline, the previous default
(popular slots by smoothed CTR alone, serving/blend.personal_first off)."""


@dataclass
class ServedRow:
    """One reader's pages: the tally, with the slots and hits per source and its degraded answers."""

    tally: Tally = field(default_factory=Tally)
    degraded: int = 0  # pages still degraded after the retries (scored as served)
    retried: int = 0  # degraded answers asked again
    slots: dict[str, int] = field(default_factory=dict)  # served items per source
    hits: dict[str, int] = field(default_factory=dict)  # hits per source of the served item

    def add(self, page: list[tuple[str, str]], clicked: str) -> None:
        self.tally.add([item for item, _ in page], clicked)
        for item, source in page:
            self.slots[source] = self.slots.get(source, 0) + 1
            self.hits[source] = self.hits.get(source, 0) + (item == clicked)


@dataclass
class PipelineResult:
    candidates: Tally = field(default_factory=Tally)
    served: dict[str, ServedRow] = field(default_factory=dict)  # by BLENDS name
    served_missing: str | None = None  # why the served rows are missing, when they are
    history_seconds: float = 0.0
    catch_up_seconds: float = 0.0  # publishing and waiting for the worker, over the tail
    reader_wait_seconds: float = 0.0
    rounds: int = 0


class PipelineReplay:
    """Drives Kafka + a real worker (+ the readers) through the schedule and reads what they serve.

    "Caught up" is read from the worker's own effectively-once state: the Redis watermark of every
    partition reaches the last offset the producer wrote. Announcements are waited for before the
    events that use them (the items and users agents are separate consumers, so otherwise an event
    could be applied before its item is in the index or its user's segment is known).
    """

    def __init__(self, settings: Settings, stream: Stream, producer: EventProducer, http: httpx.AsyncClient,
                 worker: Child, readers: dict[str, Child]) -> None:  # fmt: skip
        self.settings = settings
        self.stream = stream
        self.producer = producer
        self.http = http
        self.worker = worker
        self.readers = readers
        self.keys = Keys(settings.redis.prefix)
        self.redis = Redis.from_url(settings.redis.url)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
        self.partitions = {
            settings.kafka.events_topic: settings.kafka.events_partitions,
            settings.kafka.items_topic: settings.kafka.items_partitions,
            settings.kafka.users_topic: settings.kafka.users_partitions,
        }
        self.known_items: set[str] = set()
        self.known_users: set[str] = set()
        self.limit = asyncio.Semaphore(READER_CONCURRENCY)
        self.result = PipelineResult(served={name: ServedRow() for name in readers})

    async def __aenter__(self) -> PipelineReplay:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.redis.aclose()

    async def caught_up(self, topics: Sequence[str]) -> None:
        """Until the worker's watermark reaches the end of every partition of ``topics``."""
        tps = [TopicPartition(t, p) for t in topics for p in range(self.partitions[t])]
        ends = await self.consumer.end_offsets(tps)
        want = {f"{tp.topic}:{tp.partition}": end - 1 for tp, end in ends.items() if end > 0}
        while True:
            marks = {k.decode(): int(v) for k, v in (await self.redis.hgetall(self.keys("wm"))).items()}
            if all(marks.get(tp, -1) >= end for tp, end in want.items()):
                return
            self.worker.check()
            await asyncio.sleep(0.005)

    async def publish(self, ratings: Sequence[Rating]) -> None:
        """Announce new users and items (and wait until applied), then the events (and wait)."""
        users = list(first_uses(ratings, self.known_users, "user"))
        items = list(first_uses(ratings, self.known_items, "item"))
        for user in users:
            await self.producer.send_user(self.stream.users[user])
        for item in items:
            await self.producer.send_item(self.stream.items[item])
        self.known_users.update(users)
        self.known_items.update(items)
        if users or items:
            await self.producer.flush()
            await self.caught_up([self.settings.kafka.users_topic, self.settings.kafka.items_topic])
        await self.producer.send_events(events_of(ratings))
        await self.producer.flush()
        await self.caught_up([self.settings.kafka.events_topic])

    async def candidates(self, users: Sequence[str]) -> list[list[str]]:
        """Each user's stored candidate list (items only, best first); [] when there is none yet."""
        raw = await self.redis.mget([self.keys.user(u, "cand") for u in users])
        return [[row[0] for row in orjson.loads(value)] if value else [] for value in raw]

    async def feed(self, name: str, user: str, seed: int) -> list[tuple[str, str]]:
        """(item, source) of the user's first page from reader ``name``. A degraded page (Redis timed out under
        this machine's load and the reader answered its fallback list) is asked again, up to DEGRADED_RETRIES times."""
        row = self.result.served[name]
        url = f"{self.readers[name].url}/v1/feed/{user}"
        for attempt in range(DEGRADED_RETRIES + 1):
            async with self.limit:
                response = await self.http.get(url, params={"limit": K, "seed": seed})
            response.raise_for_status()
            body = response.json()
            if not body["degraded"]:
                break
            row.retried += 1
            await asyncio.sleep(0.05 * (attempt + 1))
        else:
            row.degraded += 1
        return [(item["item_id"], item["source"]) for item in body["items"]]

    async def run(self, history: Sequence[Rating], schedule: Sequence[Round], reader_wait_s: float) -> PipelineResult:
        result = self.result
        try:
            for reader in self.readers.values():
                await asyncio.to_thread(reader.wait_ready)
        except infra.InfraError as exc:  # the rows are reported missing; the rest of the run goes on
            result.served, result.served_missing = {}, f"reader unusable: {exc}"
            for reader in self.readers.values():
                reader.stop()
            self.readers = {}
        started = time.perf_counter()
        await self.publish(history)
        result.history_seconds = time.perf_counter() - started
        seen = seen_sets(history)
        empty: set[str] = set()
        for step, current in enumerate(schedule):
            started = time.perf_counter()
            await self.publish(current.publish)
            seen_sets(current.publish, seen)
            result.catch_up_seconds += time.perf_counter() - started
            users = [r.user_id for r in current.score]
            started = time.perf_counter()
            for rating, listed in zip(current.score, await self.candidates(users), strict=True):
                result.candidates.add(top_k(listed, seen.get(rating.user_id, empty)), rating.item_id)
            result.candidates.seconds += time.perf_counter() - started
            if self.readers:
                started = time.perf_counter()
                await asyncio.sleep(reader_wait_s)  # a snapshot reload that began after the catch-up
                result.reader_wait_seconds += time.perf_counter() - started
            for name, row in result.served.items():
                started = time.perf_counter()
                pages = await asyncio.gather(*(self.feed(name, u, page_seed(u, step)) for u in users))
                for rating, page in zip(current.score, pages, strict=True):
                    row.add(page, rating.item_id)
                row.tally.seconds += time.perf_counter() - started
            result.rounds += 1
        result.candidates.seconds += result.catch_up_seconds
        for row in result.served.values():
            row.tally.seconds += result.catch_up_seconds + result.reader_wait_seconds
        return result


def page_seed(user: str, step: int) -> int:
    """The explore draws' seed of a user's page in a round: the same run serves the same pages."""
    return int.from_bytes(hashlib.blake2b(f"{user}|{step}".encode(), digest_size=4).digest(), "little")


async def run_pipeline(settings: Settings, stream: Stream, history: Sequence[Rating], schedule: Sequence[Round],
                       batch: Batch, with_reader: bool, reader_wait_s: float) -> PipelineResult:  # fmt: skip
    """Publish the model, start a worker (and a reader per blend), replay history and tail; stop them by pid."""
    await infra.ensure_topics(settings)
    await training.publish(settings, batch.artifacts)
    worker = Child("worker", settings, LOGS / "prequential-worker.log")
    readers = {
        name: Child("serve", settings.replace(**blend), LOGS / f"prequential-reader-{name}.log")
        for name, blend in (BLENDS.items() if with_reader else ())
    }
    try:
        async with (
            EventProducer(settings) as producer,
            httpx.AsyncClient(timeout=10.0) as http,
            PipelineReplay(settings, stream, producer, http, worker, readers) as replay,
        ):
            return await replay.run(history, schedule, reader_wait_s)
    finally:
        worker.stop()
        for reader in readers.values():
            reader.stop()


# --- the run -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ALSConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--history-share", type=float, default=0.8)
    parser.add_argument("--no-pipeline", action="store_true", help="in-memory rows only (for sweeps)")
    parser.add_argument("--no-reader", action="store_true", help="skip the served-feed rows")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--reader-wait-s", type=float, default=0.25, help="sleep after each catch-up (reader reload)")
    parser.add_argument("--factors", type=int, default=defaults.factors)
    parser.add_argument("--regularization", type=float, default=defaults.regularization)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--view-weight", type=float, default=defaults.view_weight)
    parser.add_argument("--click-weight", type=float, default=defaults.click_weight)
    parser.add_argument("--history-cap", type=int, default=None, help="default: the settings' history_cap")
    parser.add_argument("--candidates", type=int, default=None, help="default: the settings' candidates_m")
    parser.add_argument(
        "--tuned",
        action="store_true",
        help=f"the values the sweep chose ({', '.join(f'{k}={v}' for k, v in TUNED.items())}), over the options above",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2,...",
        help=f"only the in-memory reference over a grid of these values (repeatable; names: {', '.join(SWEEPABLE)})",
    )
    parser.add_argument(
        "--sweep-on",
        choices=("validation", "test"),
        default="validation",
        help="validation: train on the first 75%% of the history, score its last 25%% (60-80%% of events); "
        "test: the reported tail",
    )
    return parser.parse_args(argv)


VALIDATION_SHARE = 0.75
TUNED = {"regularization": 40.0, "history_cap": 10}
"""Chosen on the validation split (module docstring); proposed as the project defaults."""
SWEEPABLE = ("factors", "regularization", "alpha", "iterations", "view_weight", "click_weight", "history_cap",
             "candidates")  # fmt: skip


def sweep(args: argparse.Namespace, stream: Stream, history: Sequence[Rating], schedule: Sequence[Round]) -> None:
    """The in-memory reference (rounds schedule) over the grid of ``--sweep`` values, other options fixed.

    The reference *is* the worker's logic, and the pipeline's candidate lists equal it list for list
    (checked by every full run), so this is how defaults are tuned: fast, and on this benchmark.
    HR@6 is shown because the default blend gives personal candidates 6 of 10 slots.
    """
    grid: dict[str, list[float]] = {}
    for spec in args.sweep:
        name, _, values = spec.partition("=")
        name = name.replace("-", "_")
        if name not in SWEEPABLE or not values:
            raise SystemExit(f"--sweep {spec!r}: expected NAME=V1,V2,... with NAME in {', '.join(SWEEPABLE)}")
        grid[name] = [float(v) for v in values.split(",")]
    title = f"sweep on the {args.sweep_on} tail: in-memory streaming reference, rounds schedule ({machine()})"
    table = Table(title=title)
    for column in (*grid, "HR@10", "nDCG@10", "HR@6", "coverage", "train s", "replay s"):
        table.add_column(column, justify="right")
    base = vars(args)
    for combo in itertools.product(*grid.values()):
        options = {**base, **dict(zip(grid, combo, strict=True))}
        cfg, history_cap, m = configure(argparse.Namespace(**options))
        batch = train_history(stream, history, cfg)
        tally = {"reference": Tally()}
        with tempfile.TemporaryDirectory() as tmp:
            version = write_model(tmp, batch.artifacts)
            row = ReferenceRow(version, read_model(tmp, version), stream, history_cap, m)
            replay_in_memory({"reference": row}, tally, history, schedule)
        t = tally["reference"]
        table.add_row(
            *(f"{v:g}" for v in combo), f"{t.hr():.4f}", f"{t.ndcg():.4f}", f"{t.hr(6):.4f}",
            f"{t.coverage(len(stream.items)):.3f}", f"{batch.seconds:.1f}", f"{t.seconds:.1f}",
        )  # fmt: skip
        console.print(f"  {dict(zip(grid, combo, strict=True))}: HR@10 {t.hr():.4f}, HR@6 {t.hr(6):.4f}")
    console.print(table)


def configure(args: argparse.Namespace) -> tuple[ALSConfig, int, int]:
    """The ALS hyper-parameters, history cap and candidate count these options ask for."""
    settings = load_settings()
    if getattr(args, "tuned", False):
        args = argparse.Namespace(**{**vars(args), **TUNED})
    cfg = ALSConfig(
        factors=int(args.factors),
        regularization=args.regularization,
        alpha=args.alpha,
        iterations=int(args.iterations),
        view_weight=args.view_weight,
        click_weight=args.click_weight,
    )
    return cfg, int(args.history_cap or settings.model.history_cap), int(args.candidates or settings.model.candidates_m)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, history_cap, m = configure(args)
    stream = group_ratings(movielens(args.movielens))
    history, tail = split(stream.ratings, args.history_share)
    schedule, strict = rounds(tail), in_order(tail)
    if args.sweep:
        if args.sweep_on == "validation":  # tune on the history's own last quarter, never on the reported tail
            history, tail = split(history, VALIDATION_SHARE)
            schedule = rounds(tail)
        sweep(args, stream, history, schedule)
        return
    batch = train_history(stream, history, cfg)
    console.print(
        f"{len(history):,} history ratings, {len(tail):,} tail ratings, {sum(r.click for r in tail):,} tail clicks, "
        f"{len(schedule)} rounds; iALS {cfg.factors} factors trained in {batch.seconds:.1f} s"
    )

    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory() as tmp:
        version = write_model(tmp, batch.artifacts)
        for name, sched in (("rounds", schedule), ("in order", strict)):
            t = {"popularity": Tally(), "frozen": Tally(), "reference": Tally()}
            rows: dict[str, Row] = {
                "popularity": PopularityRow(),
                "frozen": FrozenRow(batch, t["frozen"]),
                "reference": ReferenceRow(version, read_model(tmp, version), stream, history_cap, m),
            }
            if name == "in order":
                del rows["frozen"], t["frozen"]  # depends on the user's own events only: identical
            replay_in_memory(rows, t, history, sched)
            tallies.update({f"{row} ({name})": tally for row, tally in t.items()})

    pipeline: PipelineResult | None = None
    if not args.no_pipeline:
        with services(history_cap=history_cap, candidates_m=m, pool_cache_s=0.1, popular_refresh_s=0.1) as settings:
            pipeline = asyncio.run(
                run_pipeline(settings, stream, history, schedule, batch, not args.no_reader, args.reader_wait_s)
            )
    scoring = Scoring.of(stream, history)
    cmd = command(sys.argv[1:] if argv is None else argv)
    report(args, cfg, history_cap, m, tallies, pipeline, scoring, cmd)
    suffix = results_suffix(args, (cfg, history_cap, m))
    if args.no_record or pipeline is None:
        return
    if suffix is None:
        console.print("not written to bench/results.json: neither the defaults nor --tuned")
        return
    record_figures(tallies, pipeline, scoring, cmd, suffix)


def command(argv: Sequence[str]) -> str:
    """How to reproduce these figures: the command with the options that change them."""
    kept = [a for a in argv if a not in ("--no-record",)]
    return " ".join([COMMAND, *kept])


def results_suffix(args: argparse.Namespace, chosen: tuple[ALSConfig, int, int]) -> str | None:
    """Which keys a run may write: the plain ones for the project defaults, ``*_tuned`` for ``--tuned``
    (the proposed defaults, until they are the defaults), none for any other configuration."""
    if args.history_share != 0.8:
        return None
    defaults = parse_args([])
    if chosen == configure(defaults):
        return ""
    if chosen == configure(argparse.Namespace(**{**vars(defaults), "tuned": True})):
        return "_tuned"
    return None


METRICS = {  # results.json key part → (column, unit, format)
    "hr10": ("HR@10", "HR@10", "{:.4f}"),
    "ndcg10": ("nDCG@10", "nDCG@10", "{:.4f}"),
    "coverage": ("coverage", "share of catalogue", "{:.3f}"),
    "novelty": ("novelty", "bits", "{:.2f}"),
    "ild": ("ILD", "mean pairwise genre-Jaccard distance", "{:.3f}"),
}
BASELINE_OF = {"candidates": "reference", "served": "candidates", "served_by_ctr": "candidates"}
"""Each recorded row's ``baseline`` in results.json."""


@dataclass
class Scoring:
    """What the list metrics refer to: the catalogue (coverage), the history's ratings per item (novelty:
    −log2 of an item's smoothed share of them) and the items' genres (intra-list diversity)."""

    catalogue: int
    ratings: dict[str, int]
    genres: dict[str, tuple[str, ...]]
    _scores: dict[int, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, stream: Stream, history: Sequence[Rating]) -> Scoring:
        ratings = Counter(r.item_id for r in history)
        return cls(len(stream.items), dict(ratings), {i: tuple(e.categories) for i, e in stream.items.items()})

    def __call__(self, tally: Tally) -> dict[str, float]:
        """Every METRICS figure of the tally (computed once: ILD compares 45 pairs per list)."""
        if id(tally) not in self._scores:
            self._scores[id(tally)] = {
                "hr10": tally.hr(),
                "ndcg10": tally.ndcg(),
                "coverage": tally.coverage(self.catalogue),
                "novelty": tally.novelty(self.ratings, self.catalogue),
                "ild": tally.diversity(self.genres),
            }
        return self._scores[id(tally)]


def scored_rows(tallies: dict[str, Tally], pipeline: PipelineResult | None) -> dict[str, Tally]:
    """The rows results.json records, by key: baselines, candidates and every served blend that ran."""
    rows = {name: tallies[f"{name} (rounds)"] for name in ("popularity", "frozen", "reference")}
    if pipeline is not None:
        rows["candidates"] = pipeline.candidates
        rows.update((name, row.tally) for name, row in pipeline.served.items() if row.tally.clicks)
    return rows


def report(args, cfg: ALSConfig, history_cap: int, m: int, tallies: dict[str, Tally],
           pipeline: PipelineResult | None, scoring: Scoring, cmd: str) -> None:  # fmt: skip
    title = (
        f"prequential, MovieLens 100K, last {1 - args.history_share:.0%} of events: "
        f"iALS k={cfg.factors} λ={cfg.regularization} α={cfg.alpha} it={cfg.iterations} "
        f"view={cfg.view_weight} click={cfg.click_weight}; history cap {history_cap}, candidates {m}"
    )
    table = Table(title=title)
    columns = ("row", *(label for label, _, _ in METRICS.values()), "clicks scored", "seconds", "note")
    for column in columns:
        table.add_column(column, justify="left" if column in ("row", "note") else "right")

    def add(name: str, tally: Tally | None, note: str = "", missing: str | None = None) -> None:
        if tally is None or not tally.clicks:
            table.add_row(name, *("—" for _ in columns[1:-1]), missing or note)
            return
        scores = scoring(tally)
        table.add_row(
            name, *(fmt.format(scores[key]) for key, (_, _, fmt) in METRICS.items()),
            f"{tally.clicks:,}", f"{tally.seconds:.1f}", note,
        )  # fmt: skip

    frozen = tallies["frozen (rounds)"]
    add("baseline: popularity", tallies["popularity (rounds)"])
    add("baseline: frozen batch iALS", frozen, f"{frozen.fallbacks:,} clicks by users unknown to it → popularity")
    ref = tallies["reference (rounds)"]
    add("baseline: in-memory streaming reference", ref, f"{ref.empty:,} clicks with no list yet")
    served_labels = {
        "served_by_ctr": "baseline: pipeline served feed, popular slots by smoothed CTR alone (previous default)",
        "served": "pipeline served feed (default blend)",
    }
    if pipeline is None:
        add("pipeline candidates", None, missing="not run (--no-pipeline)")
        for label in served_labels.values():
            add(label, None, missing="not run (--no-pipeline)")
    else:
        same = sum(a == b for a, b in zip(pipeline.candidates.ranked, ref.ranked, strict=False))
        add("pipeline candidates", pipeline.candidates,
            f"{same / max(ref.clicks, 1):.1%} of lists identical to the reference's; "
            f"HR@6 (the blend's personal slots) {pipeline.candidates.hr(6):.4f}")  # fmt: skip
        for name, label in served_labels.items():
            row = pipeline.served.get(name)
            if row is None:
                add(label, None, missing=pipeline.served_missing or "not run (--no-reader)")
                continue
            n = row.tally.clicks
            mix = ", ".join(
                f"{s} {slots / n:.1f} ({row.hits.get(s, 0) / n:.4f})" for s, slots in sorted(row.slots.items())
            )
            share = row.tally.hr() / max(pipeline.candidates.hr(), 1e-9)
            add(
                label,
                row.tally,
                f"{share:.1%} of the candidates' HR@10; slots per feed (HR from them): {mix}; "
                f"{row.retried} degraded answers asked again, {row.degraded} left degraded",
            )
    add("popularity, strictly in order", tallies["popularity (in order)"], "schedule check")
    add("reference, strictly in order", tallies["reference (in order)"], "schedule check")
    show(table, console)
    if pipeline is not None:
        console.print(
            f"pipeline: history replay {pipeline.history_seconds:.1f} s; {pipeline.rounds} rounds; publish + worker "
            f"catch-up {pipeline.catch_up_seconds:.1f} s (in every pipeline row), reader reload waits "
            f"{pipeline.reader_wait_seconds:.1f} s (served rows)"
        )
    console.print(f"machine: {machine()}; {date.today().isoformat()}; {cmd}")


def record_figures(
    tallies: dict[str, Tally], pipeline: PipelineResult, scoring: Scoring, cmd: str, suffix: str
) -> None:
    """bench/results.json: prequential_<metric>_<row> for every METRICS figure of every row (BASELINE_OF)."""
    rows = scored_rows(tallies, pipeline)
    figures = {}
    for name, tally in rows.items():
        baseline = rows.get(BASELINE_OF.get(name, ""))
        for key, (_, unit, _) in METRICS.items():
            base = scoring(baseline)[key] if baseline is not None else None
            figures[f"prequential_{key}_{name}{suffix}"] = figure(scoring(tally)[key], unit, cmd, base)
    record(figures)


if __name__ == "__main__":
    main()
