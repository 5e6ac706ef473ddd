"""The ranked feed against the fixed blend and each single source, in the fresh and the stable world (issue 16).

    .venv/bin/python -m bench.blends                   # 5 seeds × 4 rows × 2 worlds, 60 s of simulated users each
    .venv/bin/python -m bench.blends --quick           # 2 seeds × 20 s: a smoke run, not a measurement (not recorded)

The runs of bench/policies.py (``run_one``: one private Kafka + Redis, per run fresh topics and Redis
prefix, the world's history, a first model, a real worker and reader, simulated users), with its rows
``fixed`` (the reader's default blend: 4 personal, 4 popular, 1 fresh, 1 Thompson slot),
``popular_only``, ``personal_only`` (all 8 exploitation slots to one source, the same 2-slot
exploration budget) and ``ranked`` (the default shares with the online ranker on). Every row but
``ranked`` runs with the ranker switched off, so ``fixed`` is the true fixed blend. The ranked row's
ranker starts cold every run: the history has no served features to learn from, so its first pages
are the fixed blend (logging the vectors it learns from) until ``ranker_min_rows`` rows are learned;
its regret and CTR count those pages too, and the table says which share of its pages was ranked.
A ranked row whose run was mostly not ranked (below MIN_RANKED_SHARE) makes the benchmark invalid:
it would be measuring the fixed blend under another name.

Both worlds (``--worlds``, recstream.sim.simulator.WORLDS) run the same seeds; within a world every
row of a seed has the same world, history, users and click draws. The worlds run side by side (a thread
each, sharing the one Kafka and Redis, every run on its own topics and prefix), which halves the wall
time (~40 min); ``--sequential`` runs one after the other. Keys: ``closed_loop_<figure>_<row>``
for the fresh world, ``..._<row>_<world>`` for the others (bench/policies.py's rule), and
``closed_loop_ranked_share[_<world>]``. Targets (issue 16): the ranked feed's regret below each other
row's on every seed of both worlds, its CTR ≥ 1.2× the fixed blend's in each world.

The by-seed table shows each run's feeds served: a run that served under 95% of the feeds offered (throttled:
bench/policies.MIN_SERVED_SHARE) makes a recorded benchmark invalid (a ``--no-record`` one warns); one whose setup
outlasted the lead before its users start (bench/policies.SETUP_S: it would cover another stretch of the world)
makes any invalid.

Probes of worlds no default was chosen on (never recorded): ``--world-set NAME=VALUE`` changes a parameter of
every world the run makes (recstream.sim.world.WorldConfig), ``--movielens-tastes DIR`` gives them MovieLens 100K's
users and films as hidden tastes (recstream.sim.world.movielens_world); each world is built once before any service
starts, so one that its parameters cannot make (a CTR its fading cannot reach) is refused at once.

Only the full run at the defaults records (every row, at least the default worlds, seeds 1–5, 60 s, no ``--set``):
a run of fewer rows, worlds, seeds or seconds would replace some of its keys and leave the others from another
run. Any other run is refused at its options unless it says ``--no-record`` (``--quick`` implies it).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from rich.table import Table

from bench.common import BLEND_ROWS, changed_options, fail, figure, machine, record, services, show
from bench.policies import (
    check_feeds,
    closed_loop_parser,
    console,
    feeds_served,
    figures_of,
    make_world,
    means,
    run_with_retries,
    served_column,
    summary_table,
    world_config,
)
from recstream.contracts.settings import Settings
from recstream.sim.simulator import WORLDS, SimResult
from recstream.sim.world import WorldConfig

COMMAND = ".venv/bin/python -m bench.blends"
ROWS = BLEND_ROWS
MIN_RANKED_SHARE = 0.5
"""A ranked run with fewer of its pages ranked than this is invalid (the ranker never warmed up)."""
CTR_TARGET = 1.2
WORLD_PARAMETERS = tuple(name for name in WorldConfig.model_fields if name not in ("seed", "start_ms"))
"""What ``--world-set`` may change: not the seed and start, which every run sets (bench/policies.run_one)."""
UNMEASURED = ("sequential", "no_record", "quick")
"""Options that do not change what is measured: the worlds side by side or not, and whether to record."""


def options() -> argparse.ArgumentParser:
    """The closed loop's options (bench/policies.closed_loop_parser) and this benchmark's."""
    parser = closed_loop_parser(__doc__)
    parser.add_argument("--worlds", default="fresh,stable", help="comma-separated, of: " + ", ".join(WORLDS))
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated, of: " + ", ".join(ROWS))
    parser.add_argument("--first-seed", type=int, default=1, help="seeds first-seed … first-seed + seeds − 1")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every row, named as its RECSTREAM_ variable in lower case (validation of a candidate "
        "default: ranker_min_rows=1000); only with --no-record, the figures are the defaults'",
    )
    parser.add_argument(
        "--world-set",
        action="append",
        default=[],
        type=world_setting,
        metavar="NAME=VALUE",
        help="a parameter of every world run (recstream.sim.world.WorldConfig; the value as JSON, null: off), to probe "
        "a world none of the defaults was chosen on; only with --no-record",
    )
    parser.add_argument(
        "--movielens-tastes",
        type=Path,
        default=None,
        metavar="DIR",
        help="MovieLens 100K's users and films as every world's hidden tastes (its clock, arrivals and fading kept): "
        "a world of real preferences; only with --no-record",
    )
    parser.add_argument(
        "--sequential", action="store_true", help="one world after the other (default: the worlds side by side)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--quick", action="store_true", help="2 seeds × 20 s: a smoke run, not a measurement")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    worlds, rows = args.worlds.split(","), args.rows.split(",")
    if unknown := set(worlds) - set(WORLDS):
        parser.error(f"unknown worlds {sorted(unknown)}; choose among {', '.join(WORLDS)}")
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose among {', '.join(ROWS)}")
    if args.quick:  # a smoke run: its figures never replace the recorded ones
        args.seeds, args.seconds, args.no_record = 2, 20.0, True
    if not args.no_record and (changed := departures(args, parser.parse_args([]))):
        parser.error(f"{', '.join(changed)}: only the full run at the defaults is recorded: add --no-record")
    overrides = dict(item.partition("=")[::2] for item in args.set)
    per_world = {w: argparse.Namespace(**vars(args), world=w, items_per_s=None, overrides=overrides) for w in worlds}
    for world, world_args in per_world.items():  # built once here: a world that cannot be made fails before services
        try:
            make_world(world_config(world_args).model_copy(update={"seed": args.first_seed}), world_args)
        except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
            parser.error(f"--world-set or --movielens-tastes makes the {world} world invalid: {exc}")
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    stop = threading.Event()
    with services() as base, ThreadPoolExecutor(1 if args.sequential else len(worlds)) as pool:
        runs = {w: pool.submit(run_world, base, w, rows, per_world[w], stop) for w in worlds}
        try:
            done, _ = wait(runs.values(), return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a world's failure, raised as soon as it happens
            results = {w: future.result() for w, future in runs.items()}
        except BaseException:  # a failure, Ctrl-C or `kill`: every other world ends after the run it is in
            stop.set()
            raise
    report(results, args, command, (time.monotonic() - started) / 60)


def world_setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` → (a WorldConfig field, its JSON value; a bare word is a string), or argparse's error.

    >>> world_setting("appeal_half_life_h=null"), world_setting("n_categories=40")
    (('appeal_half_life_h', None), ('n_categories', 40))
    """
    name, equals, value = text.partition("=")
    if not equals or name not in WORLD_PARAMETERS:
        raise argparse.ArgumentTypeError(f"{text!r}: NAME=VALUE with NAME one of {', '.join(WORLD_PARAMETERS)}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def world_name(world: str, args: argparse.Namespace) -> str:
    """The world as the tables name it: its preset, and what ``--world-set`` changed in it."""
    changes = ", ".join(f"{name}={json.dumps(value)}" for name, value in getattr(args, "world_set", ()))
    if getattr(args, "movielens_tastes", None) is not None:
        changes = ", ".join(filter(None, ["MovieLens tastes", changes]))
    return f"{world} ({changes})" if changes else world


def departures(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """The options by which this run is not the full run at the defaults, the only one recorded: every row, the
    default worlds (others may run beside them: their keys are their own), every other measured option as it is."""
    changed = changed_options(args, defaults, ("rows", "worlds", *UNMEASURED))
    if set(args.rows.split(",")) != set(ROWS):
        changed.append("--rows")
    if not set(defaults.worlds.split(",")) <= set(args.worlds.split(",")):
        changed.append("--worlds")
    return changed


def run_world(
    base: Settings, world: str, rows: Sequence[str], args: argparse.Namespace, stop: threading.Event
) -> dict[str, list[SimResult]]:
    """Every row on every seed of one world, the rows of a seed one after another (bench/policies.run_one); none
    more once ``stop`` is set (another world failed, or the benchmark was interrupted: its services stop after)."""
    results: dict[str, list[SimResult]] = {r: [] for r in rows}
    models: dict[int, object] = {}  # the seed's first run trains the model, the others publish it
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for row in rows:
            if stop.is_set():
                return results
            r = run_with_retries(base, row, seed, args, models)
            results[row].append(r)
            console.print(
                f"{world} seed {seed} {row:>14}: {r.feeds:,} feeds ({r.failed} failed, {r.degraded} "
                f"degraded, {r.ranked_share:.0%} ranked), CTR {r.ctr:.4f}, regret/feed {r.regret_per_feed:.4f}; "
                "CTR (slots) by source "
                + ", ".join(
                    f"{source} {c.ctr:.3f} ({c.impressions / max(r.feeds, 1):.1f})"
                    for source, c in sorted(r.by_source.items())
                )
            )
    return results


def report(
    results: dict[str, dict[str, list[SimResult]]], args: argparse.Namespace, command: str, minutes: float
) -> None:
    """Per world the summary table; the per-seed regret table of every world; the targets; then the checks
    (failed or degraded feeds, a ranked row that was not ranked) before anything is recorded."""
    for world, by_row in results.items():
        title = (
            f"closed loop, {world_name(world, args)} world, {args.seeds} seeds × {args.seconds:.0f} s at "
            f"{args.feeds_per_s:.0f} feeds/s (top-10 feeds); {machine()}; {minutes:.1f} min for every world"
        )
        show(summary_table(by_row, title), console)
    rows = list(next(iter(results.values())))
    served = served_column(next(iter(results.values())), args)
    by_seed = Table(title="regret per feed, by world and seed (the same world, users and click draws for every row)")
    for column in ("world", "seed", *rows, served, "ranked pages", "ranked lowest"):
        by_seed.add_column(column, justify="left" if column in ("world", "ranked lowest") else "right")
    for world, by_row in results.items():
        for k in range(args.seeds):
            regret = {row: by_row[row][k].regret_per_feed for row in rows}
            ranked = by_row["ranked"][k] if "ranked" in by_row else None
            shares, lowest = (
                ("–", "–") if ranked is None else (f"{ranked.ranked_share:.0%}", _yes(ranked_lowest(by_row, k)))
            )
            by_seed.add_row(world_name(world, args), str(args.first_seed + k), *(f"{regret[row]:.3f}" for row in rows),
                            feeds_served(by_row, k), shares, lowest)  # fmt: skip
    show(by_seed, console)
    figures: dict[str, dict[str, object]] = {}
    for world, by_row in results.items():
        mean = means(by_row)
        if {"ranked", "fixed"} <= set(by_row):
            below = sum(bool(ranked_lowest(by_row, k)) for k in range(args.seeds))
            console.print(
                f"{world_name(world, args)} world: ranked / fixed CTR "
                f"×{mean['ranked']['ctr'] / max(mean['fixed']['ctr'], 1e-9):.3f} "
                f"(target ≥ {CTR_TARGET}); ranked regret below every other row's on {below} of {args.seeds} seeds "
                "(target: all)"
            )
        figures |= figures_of(by_row, world, command)
        if "ranked" in by_row:
            share = sum(r.ranked for r in by_row["ranked"]) / max(sum(r.feeds for r in by_row["ranked"]), 1)
            suffix = "" if world == "fresh" else f"_{world}"
            figures[f"closed_loop_ranked_share{suffix}"] = figure(share, "share of the ranked row's pages", command)
    for world, by_row in results.items():
        for k, r in enumerate(by_row.get("ranked", [])):
            if r.ranked_share < MIN_RANKED_SHARE:
                fail(f"{world} world, seed {args.first_seed + k}: only {r.ranked_share:.0%} of the ranked row's pages "
                     f"were ranked (the ranker did not warm up; at least {MIN_RANKED_SHARE:.0%} needed)")  # fmt: skip
        check_feeds({f"{world} {row}": runs for row, runs in by_row.items()}, args)
    if not args.no_record:
        record(figures)


def ranked_lowest(by_row: dict[str, list[SimResult]], seed: int) -> bool | None:
    """Whether the ranked row's regret on the seed (0-based) is below every other row's; None when no other row ran
    (below nothing is no verdict)."""
    others = [runs[seed].regret_per_feed for row, runs in by_row.items() if row != "ranked"]
    return by_row["ranked"][seed].regret_per_feed < min(others) if others else None


def _yes(value: bool | None) -> str:
    return "–" if value is None else "yes" if value else "no"


if __name__ == "__main__":
    main()
