"""The online ranker offline: prequential AUC and logloss on closed-loop impressions, against one-feature scorers.

    .venv/bin/python -m bench.ranker                  # the fresh and the stable world, 2 seeds each, one table

Impressions: per world and seed, one closed-loop run made exactly as bench/policies.py makes a row
(``policies.run_with_retries``: private Kafka + Redis, the world's history, a first model, a real
worker and reader, simulated users for ``--seconds``) with the reader of ``--policy`` (default
``fixed``: bench/policies.py's fixed row, the fixed-quota blend with the ranker off, so that the rows are not chosen
by the model being evaluated; ``ranked`` is the reader's default settings, the fixed blend while the ranker is cold,
ranked once it learned ``ranker_min_rows``). Simulated users view everything shown and click with their true
probability; the reader stamps every view and click with the vector it served the item with
(recstream/contracts/ranking.py, ``rf``). After the run its events topic is read back whole, and
the rows are what the workers learned from: events with a valid vector (view 0, click 1), per
partition in offset order (streams.ranker_training.batch_rows). The history published before the
run carries no vectors and makes no rows.

Replay, per partition, each row predicted before it is learned (progressive validation):

* **ranker** — FTRL-Proximal on every feature with the settings' ranker config, one model per
  partition, as the workers train it (streams.ranker_training.train);
* **one feature alone** (``ctr_logit``: logit of the item's smoothed CTR; ``segment_ctr_logit``;
  ``als_rank``: the position on the ALS candidate list):
  AUC by the raw feature's rank (no learning; ties count 1/2), and logloss
  of a one-feature online LR calibration (FTRL on that feature and a bias, same config, same rows in
  the same order), which is the best a scorer that sees only this feature could do in this protocol;
* **base rate** — the bias alone (the running CTR): the logloss every scorer must beat (AUC 1/2).

AUC and logloss are over every row of a run, the seeds' figures averaged. Keys: ``ranker_<figure>``
with ``_ctr_only``, ``_segment_ctr_only``, ``_als_only`` and ``_base_rate`` for the other scorers, and
``_stable`` after them for the stable world.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from recstream.models.ranker import FTRLConfig, FTRLRanker, auc, logloss
from recstream.streams.ranker_training import Rows, batch_rows, ftrl_config
from rich.console import Console
from rich.table import Table

from bench import policies
from bench.common import ROOT, figure, machine, record, services, show
from recstream.contracts.events import Event, decode
from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import Settings
from recstream.eventlog.log import open_log, read, whole_topic

COMMAND = ".venv/bin/python -m bench.ranker"
ROWS = ROOT / ".run" / "bench-ranker-rows"
WORLDS = ("fresh", "stable")
SINGLE = {"ctr_only": "ctr_logit", "segment_ctr_only": "segment_ctr_logit", "als_only": "als_rank"}
"""The one-feature scorers: key suffix → the feature."""
SCORERS = ("ranker", *SINGLE, "base_rate")
console = Console(width=160)


@dataclass(frozen=True)
class Scores:
    """One scorer on one run: AUC (nan for the base rate) and progressive-validation logloss, over every row and
    over the second half of each partition's rows (``late_``: after the learners' warm-up)."""

    auc: float
    logloss: float
    late_auc: float
    late_logloss: float

    @classmethod
    def of(cls, scores: np.ndarray | None, probs: np.ndarray, labels: np.ndarray, late: np.ndarray) -> Scores:
        """AUC of ``scores`` (nan when None) and logloss of ``probs``, over all rows and the ``late`` ones."""
        nan = float("nan")
        return cls(
            nan if scores is None else auc(scores, labels),
            logloss(probs, labels),
            nan if scores is None else auc(scores[late], labels[late]),
            logloss(probs[late], labels[late]),
        )


async def topic_names(settings: Settings) -> set[str]:
    async with open_log(settings) as consumer:
        return set((await consumer._client.fetch_all_metadata()).topics())


async def read_rows(settings: Settings, topic: str) -> dict[int, Rows]:
    """The training rows of an events topic, per partition in offset order, as the workers build them."""
    events: dict[int, list[Event]] = {}
    async with open_log(settings) as consumer:
        ranges = await whole_topic(consumer, topic)
        async for chunk in read(consumer, ranges, 10_000):
            for message in chunk:
                valid, _ = decode(message.value, "event", message.timestamp_ms or int(time.time() * 1000))
                events.setdefault(message.partition, []).extend(valid)
    rows = {}
    for partition, mine in events.items():
        built = batch_rows(mine, [(topic, partition)] * len(mine)).by_partition.get((topic, partition))
        if built is not None:
            rows[partition] = built
    return rows


def calibration(config: FTRLConfig, feature: int | None) -> FTRLConfig:
    """The config of a one-feature calibration of feature index ``feature`` (None: the base rate's constant 0):
    no prior to start from, and the feature standardized exactly when the ranker's config standardizes it.

    >>> ranker = FTRLConfig(alpha=0.07, standardize=True, standardize_only=(2, 8))
    >>> calibration(ranker, 8).standardize, calibration(ranker, 5).standardize, calibration(ranker, None).standardize
    (True, False, False)
    >>> calibration(FTRLConfig(prior=(0.0, 1.0)), 0).prior
    ()
    """
    scaled = (
        config.standardize
        and feature is not None
        and (not config.standardize_only or feature in config.standardize_only)
    )
    return dataclasses.replace(config, prior=(), standardize=scaled, standardize_only=())


def replay(rows: dict[int, Rows], config: FTRLConfig) -> dict[str, Scores]:
    """Every scorer over the rows, each partition predicted-then-learned in order; figures over all rows."""
    labels = np.concatenate([r.labels for r in rows.values()])
    predicted: dict[str, list[float]] = {name: [] for name in SCORERS}
    raw: dict[str, list[np.ndarray]] = {name: [] for name in SINGLE}
    for r in rows.values():
        FTRLRanker(len(FEATURES), config).update(r.features, r.labels, predicted["ranker"])
        for name, feature in SINGLE.items():
            column = r.features[:, [FEATURES.index(feature)]]
            raw[name].append(column[:, 0])
            FTRLRanker(1, calibration(config, FEATURES.index(feature))).update(column, r.labels, predicted[name])
        FTRLRanker(1, calibration(config, None)).update(np.zeros((len(r.labels), 1)), r.labels, predicted["base_rate"])
    late = np.concatenate([np.arange(len(r.labels)) >= len(r.labels) // 2 for r in rows.values()])
    p = {name: np.asarray(values) for name, values in predicted.items()}
    out = {"ranker": Scores.of(p["ranker"], p["ranker"], labels, late)}
    out.update((name, Scores.of(np.concatenate(raw[name]), p[name], labels, late)) for name in SINGLE)
    out["base_rate"] = Scores.of(None, p["base_rate"], labels, late)
    return out


@dataclass
class Run:
    world: str
    seed: int
    rows: int
    clicks: int
    ranked_share: float  # of the run's feeds (the others: the fixed blend while the ranker was cold)
    scores: dict[str, Scores]


def run_world(base: Settings, world: str, seed: int, args: argparse.Namespace, models: dict) -> Run:
    """One closed-loop run (bench/policies.py's), then its events topic replayed."""
    run_args = argparse.Namespace(
        world=world, items_per_s=None, history_s=args.history_s, history_rate=args.history_rate,
        feeds_per_s=args.feeds_per_s, concurrency=args.concurrency, seconds=args.seconds,
    )  # fmt: skip
    before = asyncio.run(topic_names(base))
    result = policies.run_with_retries(base, args.policy, seed, run_args, models)
    prefix = f"events-{args.policy}-{seed}-"
    created = [t for t in asyncio.run(topic_names(base)) - before if t.startswith(prefix)]
    by_topic = {t: asyncio.run(read_rows(base, t)) for t in created}  # a retried start leaves a topic of its own
    rows = max(by_topic.values(), key=lambda r: sum(len(p.labels) for p in r.values()), default={})
    n = sum(len(r.labels) for r in rows.values())
    if n == 0:
        raise SystemExit(f"{world} seed {seed}: no events with served features in {created}")
    if args.rows_out:  # for a study of the ranker's settings on these very rows
        args.rows_out.mkdir(parents=True, exist_ok=True)
        np.savez(args.rows_out / f"{world}-{seed}.npz", **{f"{k}_{p}": getattr(part, k) for p, part in rows.items()
                                                         for k in ("features", "labels")})  # fmt: skip
    scores = replay(rows, ftrl_config(base.ranker))
    clicks = int(sum(p.labels.sum() for p in rows.values()))
    return Run(world, seed, n, clicks, result.ranked_share, scores)


def spread(runs: Sequence[Run], name: str, field: str) -> str:
    """`` ± sd`` over the seeds when there are several."""
    if len(runs) < 2:
        return ""
    return f" ± {statistics.stdev(getattr(r.scores[name], field) for r in runs):.4f}"


def report(runs: list[Run], args: argparse.Namespace, command: str, minutes: float) -> None:
    table = Table(title=f"online ranker, prequential on closed-loop impressions: {args.seeds} seed(s) × "
                  f"{args.seconds:.0f} s at {args.feeds_per_s:.0f} feeds/s per world, reader {args.policy!r}; "
                  f"{machine()}; {minutes:.1f} min")  # fmt: skip
    for column in ("world", "rows (clicks)", "feeds ranked", "scorer", "AUC", "logloss", "AUC, 2nd half",
                   "logloss, 2nd half"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("world", "scorer") else "right")
    figures = {}
    for world in args.worlds:
        mine = [r for r in runs if r.world == world]
        size = f"{statistics.fmean(r.rows for r in mine):,.0f} ({statistics.fmean(r.clicks for r in mine):,.0f})"
        ranked = f"{statistics.fmean(r.ranked_share for r in mine):.0%}"
        suffix = "" if world == "fresh" else f"_{world}"
        for k, name in enumerate(SCORERS):
            mean = {f: statistics.fmean(getattr(r.scores[name], f) for r in mine) for f in Scores.__annotations__}
            cells = [
                "–" if name == "base_rate" else f"{mean['auc']:.4f}" + spread(mine, name, "auc"),
                f"{mean['logloss']:.4f}" + spread(mine, name, "logloss"),
                "–" if name == "base_rate" else f"{mean['late_auc']:.4f}",
                f"{mean['late_logloss']:.4f}",
            ]
            label = "ranker (FTRL, all features)" if name == "ranker" else name.replace("_", " ")
            if name in SINGLE:
                label = f"{SINGLE[name]} alone"
            first = k == 0
            table.add_row(world if first else "", size if first else "", ranked if first else "", label, *cells)
            key = "" if name == "ranker" else f"_{name}"
            if name != "base_rate":
                figures[f"ranker_auc{key}{suffix}"] = figure(mean["auc"], "AUC", command)
            figures[f"ranker_logloss{key}{suffix}"] = figure(mean["logloss"], "logloss", command)
        table.add_section()
    show(table, console)
    if not args.no_record:
        record(figures)


def main(argv: Sequence[str] | None = None) -> None:
    parser = policies.closed_loop_parser(__doc__, seeds=2, seconds=120.0)
    parser.add_argument("--policy", choices=list(policies.POLICIES), default="fixed", help="the reader's settings")
    parser.add_argument("--rows-out", type=Path, default=ROWS, help="where each run's rows are saved")
    parser.add_argument(
        "--first-seed", type=int, default=1, help="seeds first-seed … first-seed + seeds − 1 (validation: 101)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--quick", action="store_true", help="1 seed × 30 s: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    args.worlds = WORLDS
    if args.first_seed != 1 and not args.no_record:
        parser.error("--first-seed other than 1 studies validation seeds, not the recorded figures: add --no-record")
    if args.quick:
        args.seeds, args.seconds, args.no_record = 1, 30.0, True
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    runs = []
    with services() as base:
        for world in args.worlds:
            models: dict[int, object] = {}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                run = run_world(base, world, seed, args, models)
                runs.append(run)
                console.print(
                    f"{world} seed {seed}: {run.rows:,} rows, {run.clicks:,} clicks, {run.ranked_share:.0%} of feeds "
                    "ranked; AUC / logloss "
                    + ", ".join(f"{n} {s.auc:.4f} / {s.logloss:.4f}" for n, s in run.scores.items())
                )
    report(runs, args, command, (time.monotonic() - started) / 60)


if __name__ == "__main__":
    main()
