"""Prequential HR@10, nDCG@10, coverage, novelty and ILD on MovieLens 100K: baselines in memory, then the real pipeline.

    .venv/bin/python -m bench.prequential            # the project defaults → bench/results.json
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
3. consistency check, not a baseline — the worker's own online logic (streams.personalize.Personalizer:
   capped history, exact user step with fixed item factors, HNSW candidates minus the history)
   driven in process by the same events; top 10 of its candidate list minus what the user has seen;
4. pipeline candidates — Kafka + Redis + a real ``recstream worker`` (bench/pipeline.py); the list read
   from ``user:<u>:cand``, minus what the user has seen. At least CONSISTENCY_MIN of its lists must
   equal the consistency check's, or the run fails: the pipeline must reproduce the worker's logic;
5. pipeline served feed — ``recstream serve``'s GET /v1/feed/{u}?limit=10&seed=… with the default settings,
   as served: the fixed-quota blend (shares 0.4/0.4/0.1/0.1 → 4 personal, 4 popular, 1 fresh, 1 explore
   slots) while the online ranker is cold, the ranked page (serving/feed.py: the generators' candidates
   ordered by the ranker's score in the exploitation slots, the explore slot kept) once it has learned
   ``ranker_min_rows`` rows from this row's own pages (see "The ranker's rows"); with the share of
   pages ranked and the slots and hits per source. A page the reader marks degraded (its Redis
   timeout, 50 ms, hit by this machine's load) is asked again up to three times; the counts are
   shown, and more than 0.1% of pages left degraded (or any non-200 answer) fails the run;
6. the same with the ranker off (``RECSTREAM_RANKER=false``): a second reader on the same Redis serving
   the fixed-quota blend throughout, what row 5 was before the ranker.

The ranker's rows. MovieLens has no impressions: its events are ratings (a view: a rated film; a click:
a rating ≥ 4), which the harness publishes straight to Kafka, so none carries the feature vector a
reader served an item with, and the workers' ranker would never learn (row 5 would be the fixed blend
throughout). In production the client reports each item of the page it displayed as a view and the
item it clicked as a click, naming the page's session, and the reader stamps each with the vector it
served the item with (recstream/contracts/ranking.py). The harness does the same with row 5's pages:
every item of a scored user's page is a view (a negative row), and the rated item a click (a positive
row) when the page held it; these rows are learned with the workers' own code
(streams.ranker_training.batch_rows and train_batch: per events partition of the user, on top of its
state, in the order of the round's scored ratings; prequential_rows.ImpressionTrainer) and the states
stored where the workers keep theirs (``Keys.ranker``), from which the readers load them. A round's
rows are learned after its pages were fetched and before the next round's, so a page is ranked by
what every earlier round's pages taught, as a worker would have learned it from the reported events.

They are not published as events, on purpose: in this protocol a view is a rating, what every row is
scored on. Ten impressions per scored click (about 110,000, more than the data's 100,000 events) would
enter the users' histories (view weight) and seen sets and every item's view counts: the input of
every pipeline row. The candidate lists would no longer be the consistency check's (the run's
validity check), an item shown once and rated later could never be a hit, and no row would compare
with the in-memory baselines or earlier runs. So the impressions train the ranker and nothing else:
rows 1–4 and 6 are exactly what they were without the ranker, and row 5 differs from row 6 only by
the ranking. What differs from production: a shown but unclicked item leaves the user's state as it
was (in production its view enters the history and the seen set, so it is not shown again). So the
ranker learns a view once per user and item, as a worker would from a real client (ImpressionTrainer):
learned at every re-show, the same unrated items made 87% of the view rows.

Rows 1–3 are bench/prequential_rows.py; scores, table and results.json keys bench/prequential_report.py
(the pipeline rows' ``baseline`` there is the frozen batch model of the same run).

Approximations, all measured or bounded in the table:

* Rounds (prequential_protocol.rounds): the pipeline catches up once per round (274 rounds) instead
  of once per click (11,234). Per user the published prefix before each fetch is exactly the
  strict-order one, so candidate lists are exact; global state (click counts, the reader's smoothed-CTR
  rankings and pool, which items are announced) sees other users' events in round order. Every row
  uses the rounds schedule; popularity and the consistency check are also run strictly in order in
  memory to measure the difference (popularity: ±0.001; the consistency check in order runs without the
  worker's fold-ins, which are known per round only). The served row's popular and
  explore slots carry the same kind of error, on the 0.016 of HR they contribute.
* Items and users are announced (and applied by the worker) right before the first published
  event that uses them; the 64 items first used in the tail enter the index as content vectors then,
  and the worker folds each in once it graduates. The consistency check applies the worker's fold-ins
  (read from Redis after each catch-up) at the end of the publish they happened in; without them, 2% of
  the lists differed (a folded item's vector in the user's history, or the index re-linked around it).
* The reader runs with its snapshot reloads at 0.1 s (defaults 0.5 s / 1 s) and each round waits
  ``--reader-wait-s`` (0.25 s) after the worker caught up, so the feed sees the caught-up state as
  every other row does; the blend itself is the default.

Seconds: in-memory rows, their own work over the tail; pipeline rows, publishing + waiting for the
worker + reading their lists (the served row adds the reader-reload waits and its HTTP requests).

Tuning, never on the reported tail: ``--sweep`` (the consistency-check row alone, in memory, over a
grid) and ``--validation`` (a full run, every row, the pipeline's too; ``--set NAME=VALUE`` for the
worker's and readers' settings) both train on the first 60% of events and score 60–80%; neither is
recorded. The personal list's defaults, λ 40, α 1 and a history cap of 30 with recency-weighted
confidence γ = 0.95 (models/als.history_confidence) and the step's anchor μ = 10 (models/user_step.py), are no longer
tuned here: bench/validate.py chooses them on six sources, this benchmark's validation split among them, for the
worst case over the sources (BENCHMARKS.md, "Defaults that generalize"). On MovieLens alone they cost about 7% of the
personal list's validation HR@10 (0.190 against 0.204 for λ 40, α 2, hard cap 10, chosen here by
``--sweep`` and the default until issue 16), the price of holding on the other sources.

``--shuffle SEED`` runs the whole protocol on the same ratings in a random order on the same clock
(prequential_protocol.shuffled): a dataset with no useful time order, as issue 16's held-out one was; ``--no-clock``
puts every event at one instant (prequential_protocol.without_clock), as a dataset without timestamps arrives. Never
recorded; BENCHMARKS.md reports it beside the record, so a promise of the served row (served ≥ candidates) is
seen on data whose order the defaults could not learn from.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from recstream.models.als import ALSConfig
from recstream.models.artifacts import read_model, write_model
from recstream.streams.ranker_training import ftrl_config
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, check_answers, fail, machine, movielens_dir, services
from bench.pipeline import Page, Pipeline, pipeline
from bench.prequential_protocol import (
    K,
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
    shuffled,
    split,
    top_k,
    without_clock,
)
from bench.prequential_report import Scoring, identical_share, record_figures, report
from bench.prequential_rows import (
    Batch,
    ConsistencyRow,
    FrozenRow,
    ImpressionTrainer,
    PipelineResult,
    PopularityRow,
    Row,
    ServedRow,
    replay_in_memory,
    train_history,
)
from recstream.contracts.settings import Settings, load_settings
from recstream.jobs.sources import movielens

COMMAND = ".venv/bin/python -m bench.prequential"


DEFAULT_MOVIELENS = movielens_dir()
LOGS = ROOT / ".run" / "bench-logs"
CONSISTENCY_MIN = 0.99
"""Share of the pipeline's candidate lists that must equal the consistency check's for a valid run."""
BLENDS: dict[str, dict[str, object]] = {"served": {}, "served_fixed": {"ranker": False}}
"""The served rows: one reader each, with the default settings (ranked once the ranker is warm, trained from
this row's pages: TRAINED_BY) and with the ranker switched off (the fixed-quota blend throughout)."""
TRAINED_BY = "served"
console = Console(width=max(Console().width, 150))


# --- the pipeline rows -------------------------------------------------------------------


def page_seed(user: str, step: int) -> int:
    """The explore draws' seed of a user's page in a round: the same run serves the same pages."""
    return int.from_bytes(hashlib.blake2b(f"{user}|{step}".encode(), digest_size=4).digest(), "little")


async def run_pipeline(settings: Settings, stream: Stream, history: Sequence[Rating], schedule: Sequence[Round],
                       batch: Batch, with_reader: bool, reader_wait_s: float) -> PipelineResult:  # fmt: skip
    """The batch model, a worker (and a reader per blend) on the private services; history, then each round:
    publish, read every scored user's candidate list and served page."""
    blends = BLENDS if with_reader else {}
    result = PipelineResult(served={name: ServedRow() for name in blends})
    trainer = ImpressionTrainer(settings.kafka.events_partitions, ftrl_config(settings.ranker))
    result.trainer = trainer if blends else None
    known_users: set[str] = set()
    known_items: set[str] = set()
    async with pipeline(settings, LOGS, "prequential", batch.artifacts, blends) as driver:

        async def publish(ratings: Sequence[Rating]) -> None:
            """Announce the users and items first used here (applied before their events), then the events."""
            users = list(first_uses(ratings, known_users, "user"))
            items = list(first_uses(ratings, known_items, "item"))
            known_users.update(users)
            known_items.update(items)
            await driver.announce([stream.users[u] for u in users], [stream.items[i] for i in items])
            await driver.publish(events_of(ratings))

        async def fold_ins() -> None:
            """The fold-ins the worker stored since the last call, for the consistency check (ConsistencyRow)."""
            stored = await driver.fold_ins()
            before = set().union(*result.fold_ins)
            result.fold_ins.append({item: vector for item, vector in stored.items() if item not in before})

        started = time.perf_counter()
        await publish(history)
        await fold_ins()
        result.history_seconds = time.perf_counter() - started
        seen = seen_sets(history)
        empty: set[str] = set()
        for step, current in enumerate(schedule):
            started = time.perf_counter()
            await publish(current.publish)
            await fold_ins()
            seen_sets(current.publish, seen)
            result.catch_up_seconds += time.perf_counter() - started
            users = [r.user_id for r in current.score]
            started = time.perf_counter()
            for rating, listed in zip(current.score, await driver.candidates(users), strict=True):
                result.candidates.add(top_k(listed, seen.get(rating.user_id, empty)), rating.item_id)
            result.candidates.seconds += time.perf_counter() - started
            if blends:
                started = time.perf_counter()
                await asyncio.sleep(reader_wait_s)  # a snapshot reload that began after the catch-up
                result.reader_wait_seconds += time.perf_counter() - started
            for name, row in result.served.items():
                started = time.perf_counter()
                pages = await asyncio.gather(*(driver.feed(name, u, limit=K, seed=page_seed(u, step)) for u in users))
                for rating, page in zip(current.score, pages, strict=True):
                    row.add(page, rating.item_id)
                row.tally.seconds += time.perf_counter() - started
                if name == TRAINED_BY:
                    await learn(driver, trainer, current.score, pages)
            result.rounds += 1
            if result.rounds % 25 == 0 and blends:
                console.print(f"  round {result.rounds}/{len(schedule)}: the ranker learned {trainer.rows:,} rows, "
                              f"{result.served[TRAINED_BY].ranked:,} pages ranked")  # fmt: skip
    result.candidates.seconds += result.catch_up_seconds
    for row in result.served.values():
        row.tally.seconds += result.catch_up_seconds + result.reader_wait_seconds
    return result


async def learn(driver: Pipeline, trainer: ImpressionTrainer, scored: Sequence[Rating], pages: Sequence[Page]) -> None:
    """The round's pages as training rows (ImpressionTrainer), the new states stored for the readers to load."""
    served = [(rating, page) for rating, page in zip(scored, pages, strict=True) if page.session is not None]
    vectors = await driver.served_vectors([(r.user_id, p.session) for r, p in served])  # type: ignore[misc]
    pairs = [(r, [item for item, _ in p.items], v) for (r, p), v in zip(served, vectors, strict=True)]
    await driver.write_rankers(trainer.learn(pairs))


def check_pipeline(rows: PipelineResult, tallies: dict[str, Tally]) -> None:
    """Fail the run when the pipeline does not reproduce the worker's logic or its readers answered degraded."""
    check = tallies["consistency (rounds)"]
    share = identical_share(rows.candidates, check)
    if share < CONSISTENCY_MIN:
        pairs = list(zip(rows.candidates.ranked, check.ranked, strict=True))
        reordered = sum(a != b and set(a) == set(b) for a, b in pairs)
        fail(f"{share:.1%} of the pipeline's candidate lists equal the consistency check's (at least "
             f"{CONSISTENCY_MIN:.0%} required); of the {sum(a != b for a, b in pairs):,} that differ, "
             f"{reordered:,} hold the same items in another order")  # fmt: skip
    for name, row in rows.served.items():
        check_answers(f"served feed {name!r} (left degraded after retries)", row.tally.clicks, row.degraded)


# --- the run -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ALSConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--history-share", type=float, default=0.8)
    parser.add_argument(
        "--shuffle",
        type=int,
        default=None,
        metavar="SEED",
        help="the ratings in a random order (this seed) on the same clock: data with no useful time order "
        "(bench/prequential_protocol.shuffled); never recorded",
    )
    parser.add_argument(
        "--no-clock",
        action="store_true",
        help="every event at one instant, as data without timestamps is filled in (after --shuffle); never recorded",
    )
    parser.add_argument("--no-pipeline", action="store_true", help="in-memory rows only (for sweeps)")
    parser.add_argument("--no-reader", action="store_true", help="skip the served-feed rows")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--reader-wait-s", type=float, default=0.25, help="sleep after each catch-up (reader reload)")
    parser.add_argument("--factors", type=int, default=defaults.factors)
    parser.add_argument("--regularization", type=float, default=defaults.regularization)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--history-cap", type=int, default=None, help="default: the settings' history_cap")
    parser.add_argument("--candidates", type=int, default=None, help="default: the settings' candidates_m")
    parser.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2,...",
        help=f"only the in-memory consistency check over a grid of these values (repeatable; names: "
        f"{', '.join(SWEEPABLE)})",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="a full run on the validation split (history: the first 60%% of events, scored: 60-80%%), never recorded",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a settings variable for the worker and readers (e.g. ranker_min_rows=2000; repeatable), never recorded",
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
SWEEPABLE = ("factors", "regularization", "alpha", "iterations", "history_cap", "candidates")
"""Event weights are settings (RECSTREAM_FEEDBACK_TYPES): set the variable to run another weighting."""


def sweep(args: argparse.Namespace, stream: Stream, history: Sequence[Rating], schedule: Sequence[Round]) -> None:
    """The in-memory consistency-check row (rounds schedule) over the grid of ``--sweep`` values, other options fixed.

    That row *is* the worker's logic, and every full run checks that the pipeline's candidate lists
    equal it (CONSISTENCY_MIN), so this is how defaults are tuned: fast, and on this benchmark.
    HR@6 is shown because the default blend gives personal candidates 6 of 10 slots.
    """
    grid: dict[str, list[float]] = {}
    for spec in args.sweep:
        name, _, values = spec.partition("=")
        name = name.replace("-", "_")
        if name not in SWEEPABLE or not values:
            raise SystemExit(f"--sweep {spec!r}: expected NAME=V1,V2,... with NAME in {', '.join(SWEEPABLE)}")
        grid[name] = [float(v) for v in values.split(",")]
    title = f"sweep on the {args.sweep_on} tail: the worker's logic in process, rounds schedule ({machine()})"
    table = Table(title=title)
    for column in (*grid, "HR@10", "nDCG@10", "HR@6", "coverage", "train s", "replay s"):
        table.add_column(column, justify="right")
    base = vars(args)
    feedback = load_settings().model.feedback_types
    for combo in itertools.product(*grid.values()):
        options = {**base, **dict(zip(grid, combo, strict=True))}
        cfg, history_cap, m = configure(argparse.Namespace(**options))
        batch = train_history(stream, history, cfg, feedback)
        tally = {"consistency": Tally()}
        with tempfile.TemporaryDirectory() as tmp:
            version = write_model(tmp, batch.artifacts)
            row = ConsistencyRow(version, read_model(tmp, version), stream, history_cap, m, feedback)
            replay_in_memory({"consistency": row}, tally, history, schedule)
        t = tally["consistency"]
        table.add_row(
            *(f"{v:g}" for v in combo), f"{t.hr():.4f}", f"{t.ndcg():.4f}", f"{t.hr(6):.4f}",
            f"{t.coverage(len(stream.items)):.3f}", f"{batch.seconds:.1f}", f"{t.seconds:.1f}",
        )  # fmt: skip
        console.print(f"  {dict(zip(grid, combo, strict=True))}: HR@10 {t.hr():.4f}, HR@6 {t.hr(6):.4f}")
    console.print(table)


def configure(args: argparse.Namespace) -> tuple[ALSConfig, int, int]:
    """The ALS hyper-parameters, history cap and candidate count these options ask for."""
    settings = load_settings()
    cfg = ALSConfig(
        factors=int(args.factors),
        regularization=args.regularization,
        alpha=args.alpha,
        iterations=int(args.iterations),
    )
    return cfg, int(args.history_cap or settings.model.history_cap), int(args.candidates or settings.model.candidates_m)


def in_memory(stream: Stream, history: Sequence[Rating], batch: Batch, history_cap: int, m: int,
              schedules: dict[str, Sequence[Round]],
              fold_ins: Sequence[Mapping[str, np.ndarray]] = ()) -> dict[str, Tally]:  # fmt: skip
    """The in-memory rows on each schedule, as ``"<row> (<schedule>)"`` → tally; the consistency check of the
    ``"rounds"`` schedule applies the pipeline worker's ``fold_ins`` (one mapping per publish)."""
    tallies: dict[str, Tally] = {}
    feedback = load_settings().model.feedback_types  # the weights the pipeline's worker uses
    with tempfile.TemporaryDirectory() as tmp:
        version = write_model(tmp, batch.artifacts)
        for name, schedule in schedules.items():
            t = {"popularity": Tally(), "frozen": Tally(), "consistency": Tally()}
            rows: dict[str, Row] = {
                "popularity": PopularityRow(),
                "frozen": FrozenRow(batch, t["frozen"]),
                "consistency": ConsistencyRow(
                    version,
                    read_model(tmp, version),
                    stream,
                    history_cap,
                    m,
                    feedback,
                    fold_ins if name == "rounds" else (),
                ),
            }
            if name == "in order":
                del rows["frozen"], t["frozen"]  # depends on the user's own events only: identical
            replay_in_memory(rows, t, history, schedule)
            tallies.update({f"{row} ({name})": tally for row, tally in t.items()})
    return tallies


def records(args: argparse.Namespace, chosen: tuple[ALSConfig, int, int]) -> bool:
    """Whether this run writes bench/results.json: only a full run (every row) with the project defaults, the
    reader's wait after each catch-up included (the served rows depend on what the reader had reloaded)."""
    partial = args.no_record or args.no_pipeline or args.no_reader or args.validation or args.set
    full = not partial and args.shuffle is None and not args.no_clock  # other data than the record's protocol
    defaults = parse_args([])
    protocol = (args.history_share, args.reader_wait_s) == (defaults.history_share, defaults.reader_wait_s)
    return full and protocol and chosen == configure(defaults)


def command(argv: Sequence[str]) -> str:
    """How to reproduce these figures: the command with the options that change them."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:  # where the data lives does not change the figures
        if arg == "--movielens":
            next(args, None)
        elif arg != "--no-record" and not arg.startswith("--movielens="):
            kept.append(arg)
    return " ".join([COMMAND, *kept])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg, history_cap, m = configure(args)
    feedback = load_settings().model.feedback_types
    stream = group_ratings(movielens(args.movielens))
    if args.shuffle is not None:
        stream = shuffled(stream, args.shuffle)
    if args.no_clock:
        stream = without_clock(stream)
    history, tail = split(stream.ratings, args.history_share)
    schedule = rounds(tail)
    if args.validation or (args.sweep and args.sweep_on == "validation"):
        history, tail = split(history, VALIDATION_SHARE)  # the history's own last quarter, never the reported tail
        schedule = rounds(tail)
    if args.sweep:
        sweep(args, stream, history, schedule)
        return
    batch = train_history(stream, history, cfg, feedback)
    console.print(
        f"{len(history):,} history ratings, {len(tail):,} tail ratings, {sum(r.click for r in tail):,} tail clicks, "
        f"{len(schedule)} rounds; iALS {cfg.factors} factors trained in {batch.seconds:.1f} s"
    )
    pipeline_rows: PipelineResult | None = None
    if not args.no_pipeline:
        overrides = dict(spec.partition("=")[::2] for spec in args.set)
        with services(history_cap=history_cap, candidates_m=m, pool_cache_s=0.1, popular_refresh_s=0.1,
                      **overrides) as settings:  # fmt: skip
            pipeline_rows = asyncio.run(
                run_pipeline(settings, stream, history, schedule, batch, not args.no_reader, args.reader_wait_s)
            )
    fold_ins = pipeline_rows.fold_ins if pipeline_rows is not None else ()
    schedules = {"rounds": schedule, "in order": in_order(tail)}
    tallies = in_memory(stream, history, batch, history_cap, m, schedules, fold_ins)
    scoring = Scoring.of(stream, history)
    cmd = command(sys.argv[1:] if argv is None else argv)
    report(args, cfg, history_cap, m, tallies, pipeline_rows, scoring, cmd, console)
    if pipeline_rows is not None:
        check_pipeline(pipeline_rows, tallies)
    if pipeline_rows is None or not records(args, (cfg, history_cap, m)):
        console.print("not written to bench/results.json: --no-record, a partial run or not the project defaults")
        return
    record_figures(tallies, pipeline_rows, scoring, cmd)


if __name__ == "__main__":
    main()
