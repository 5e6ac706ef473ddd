"""Exploration policies and blends in the closed loop: the same seeds and users for every row.

    .venv/bin/python -m bench.policies                 # 5 seeds × 4 exploration policies, 60 s of simulated users each
    .venv/bin/python -m bench.policies --policies fixed,ranked --world stable --no-record   # blend rows, unrecorded

Every run goes through the real pipeline: one private Kafka + Redis for the whole benchmark
(bench/common.services), and per run fresh topics, consumer group and Redis prefix, the world's
history published and a first model trained on it, a real ``recstream worker`` and ``recstream
serve``, then recstream/simulator.py's users for ``--seconds``, starting SETUP_S after the history
ends. Only the policy differs between the runs of a seed: same world over the same stretch of its
timeline, same history, same users in the same order at the same offsets, same click draws per feed
(a page's clicks depend only on what it holds).

The policies share one exploration budget, 2 slots of a 10-item page (``POLICIES``: the reader's
shares and ``RECSTREAM_EXPLORE_POLICY``): ``none`` gives them to the personal and popular sources
(8 + 2), ``fresh`` fills them with the default blend's recency rule (new items of the user's favourite
categories, newest first), ``epsilon_greedy`` (ε = 0.1: a random pool item, otherwise the best
smoothed CTR) and ``thompson`` (one Beta draw per pool item) with their explore rule. Each rule
is measured alone and ``none`` explores nothing by rule (new items still reach personal lists through
their content vectors); the reader's default blend, one slot of recency and one of Thompson sampling,
is the ``fixed`` row. Beside it, ``popular_only`` and ``personal_only`` give all 8 exploitation slots to one
source, with the same 2-slot exploration budget (1 recency + 1 Thompson, the default's): each row is a
named set of reader settings (``POLICIES``), so a new blend (e.g. a ranked one) is one more entry.
``popular_only``'s slots are the popular source as the reader serves it, its head reordered by the
user's candidate list (serving/blend.personal_first); a fresh slot with no new item of the user's
categories overflows to the sources with a share first, then to the others (serving/blend.OVERFLOW order; before
2026-12-05 personal came first whatever its share), so the table shows what each row served.
Every row but ``ranked`` (the default shares, exploitation slots ordered by the online ranker) runs with
the ranker switched off. bench/blends.py runs and records the blend rows in both worlds; here they run
only with ``--no-record``.

The world (``--world``) is one of recstream.sim.simulator.WORLDS: ``fresh`` (FRESH_WORLD, the default), a
fresh-content feed on a clock of minutes, or ``stable``, a stable catalogue where taste matters more than
quality; arrivals are the world's own unless ``--items-per-s`` says otherwise. The pool's graduation age
is scaled with the world's clock (48 h for a 24 h half-life → 4 min for 2 min: simulator.pool_age_for),
the same for every row. Keys: ``closed_loop_<figure>_<row>``, with ``_<world>`` after it for a world
other than fresh.

Per policy, mean ± standard deviation over the seeds: CTR, regret per feed against the oracle
(Σ true p of the best k unseen items at that moment − Σ true p of the k served), how many of the
top-decile new items (by true quality, created during the run) reached the popular ranking and the
median impressions that took.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Sequence

from recstream.serving.ranking import average_weights
from rich.console import Console
from rich.table import Table

from bench.common import BLEND_ROWS, ROOT, START_ATTEMPTS, check_answers, fail, figure, machine, record, services, show
from recstream.contracts.keys import Keys
from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import Settings
from recstream.jobs import training
from recstream.shell import infra
from recstream.shell.demo import publish_history, system, train_first_model, with_api_key
from recstream.shell.infra import free_port
from recstream.sim.simulator import WORLDS, SimConfig, SimResult, Simulator, pool_age_for
from recstream.sim.world import World, WorldConfig, movielens_world

COMMAND = ".venv/bin/python -m bench.policies"
EXPLORE_SHARE = 0.2
"""The exploration budget: 2 slots of 10, each policy's own rule fills them (within the 0.25 cap)."""
FIXED = {"ranker": False}
"""Every row but ``ranked`` serves the fixed-quota blend of its shares: the ranker switched off."""
EXPLORING = {**FIXED, "share_personal": 0.6, "share_popular": 0.2}
"""The exploration policies' exploitation slots, 6 personal + 2 popular: the shares of their records (2026-11-23),
kept when the default became 4 + 4 (2026-12-06), so that the policies compare on the budget they were measured on."""
POLICIES: dict[str, dict[str, object]] = {
    "none": {**EXPLORING, "explore_policy": "none", "share_fresh": 0.0},
    "fresh": {**EXPLORING, "explore_policy": "none", "share_fresh": EXPLORE_SHARE},
    "epsilon_greedy": {
        **EXPLORING,
        "explore_policy": "epsilon_greedy",
        "share_fresh": 0.0,
        "share_explore": EXPLORE_SHARE,
    },
    "thompson": {**EXPLORING, "explore_policy": "thompson", "share_fresh": 0.0, "share_explore": EXPLORE_SHARE},
    "fixed": FIXED,
    "popular_only": {**FIXED, "share_personal": 0.0, "share_popular": 1 - EXPLORE_SHARE},
    "personal_only": {**FIXED, "share_personal": 1 - EXPLORE_SHARE, "share_popular": 0.0},
    "ranked": {"ranker": True},
}
"""Reader settings per row; everything else is the default. ``fixed`` is the reader's default blend (4 personal,
4 popular, 1 fresh, 1 Thompson slot); it and the single-source rows run when asked for."""
KEYS = {
    "none": "no_explore",
    "fresh": "fresh",
    "epsilon_greedy": "egreedy",
    "thompson": "ts",
    "fixed": "fixed",
    "popular_only": "popular_only",
    "personal_only": "personal_only",
    "ranked": "ranked",
}
REDIS_TIMEOUT_S = 2.0
"""The reader's Redis timeout (50 ms by default) is hit on these 2 shared cores under the benchmark's own
load; a degraded feed serves the popular list whatever the policy, so the runs use 2 s (0.5 s still left up to
15% of the pages degraded at a load average of 25, with other work on the machine)."""
LOGS = ROOT / ".run" / "bench-policies-logs"
SETUP_S = 50.0
"""Every run's simulated users start this long after its history ends (setup takes 10–25 s on a quiet machine,
up to 45 s on a loaded one), so all runs of a seed cover the same stretch of the world's timeline; a run whose
setup took longer would start later in its world than the others, and ends the benchmark as invalid."""
MIN_SERVED_SHARE = 0.95
"""A run that served fewer feeds than this share of those offered (``--feeds-per-s`` × ``--seconds``, the rate the
tables name) was throttled (a slow reader holds ``--concurrency`` feeds in flight and the users wait), so its row
saw fewer feeds than the other rows of its seed: a recorded run fails, a ``--no-record`` one warns."""
console = Console(width=160)


def row_settings(policy: str, args: argparse.Namespace) -> dict[str, object]:
    """A row's settings by their flat names: the world's pool age, then the policy's, then ``--set`` (``overrides``),
    each later one winning, so a candidate default can be any of them (a keyword given twice was a TypeError).

    >>> args = argparse.Namespace(world="fresh", items_per_s=None, overrides={"pool_graduate_age_s": "60"})
    >>> row_settings("ranked", args)["pool_graduate_age_s"], row_settings("ranked", args)["ranker"]
    ('60', True)
    """
    world = {"pool_graduate_age_s": pool_age_for(world_config(args))}
    return {**world, **POLICIES[policy], **getattr(args, "overrides", {})}


def run_one(base: Settings, policy: str, seed: int, args: argparse.Namespace, models: dict) -> SimResult:
    """One policy on one seed's world, through fresh topics and a fresh worker and reader.

    The seed's first run trains the model on the history; the others publish the same artifacts
    (their histories are the same events), which saves a training per run and keeps the model equal.
    """
    run = f"{policy}-{seed}-{uuid.uuid4().hex[:6]}"
    settings = base.on_topics(
        run,
        worker_group=f"worker-{run}",
        redis_prefix=f"p{uuid.uuid4().hex[:8]}",
        model_dir=base.local.run_dir / "models" / run,
        reader_port=free_port(),
        worker_metrics_port=free_port(),
        reader_redis_timeout_s=REDIS_TIMEOUT_S,
        **row_settings(policy, args),
    )
    settings = with_api_key(settings)  # the simulated users post their events with it
    clock = time.monotonic()
    asyncio.run(infra.ensure_topics(settings))
    now_ms = int(time.time() * 1000)
    world = make_world(
        world_config(args).model_copy(update={"seed": seed, "start_ms": now_ms - int(args.history_s * 1000)}), args
    )
    history = asyncio.run(publish_history(settings, world, now_ms, args.history_rate))
    published = time.monotonic()
    if seed not in models:
        models[seed] = train_first_model(settings)[0]
    asyncio.run(training.publish(settings, models[seed]))
    trained = time.monotonic()
    with system(settings, LOGS / run, history.events) as running:
        ready = time.monotonic()
        sim = Simulator(world, running.reader_url, settings,
                        SimConfig(seed=seed, feeds_per_s=args.feeds_per_s, concurrency=args.concurrency),
                        announced_items=history.items, announced_users=history.users, history=history.seen)  # fmt: skip
        begin = world.config.start_ms + int((args.history_s + SETUP_S) * 1000)
        if (late_s := time.time() - begin / 1000) > 0:
            fail(f"{run}: setup took {SETUP_S + late_s:.0f} s, over the {SETUP_S:.0f} s lead: its simulated "
                 f"users would start later in the world than the other runs of seed {seed}")  # fmt: skip
        result = asyncio.run(sim.run(seconds=args.seconds, start_ms=begin))
        if settings.blend.ranker:
            console.print(f"  {run}: {learned_weights(settings)}")
    console.print(f"  {run}: history {published - clock:.1f} s ({history.events:,} events), model "
                  f"{trained - published:.1f} s, worker + reader ready {ready - trained:.1f} s")  # fmt: skip
    return result


def learned_weights(settings: Settings) -> str:
    """The ranker the reader scored with at the end of a run (the partitions' mean weights), feature by feature."""
    import redis

    keys = Keys(settings.redis.prefix)
    client = redis.Redis.from_url(settings.redis.url)
    try:
        names = [keys.ranker(settings.kafka.events_topic, p) for p in range(settings.kafka.events_partitions)]
        weights, rows, partitions = average_weights(client.mget(names))
    finally:
        client.close()
    if weights is None:
        return "no ranker learned"
    terms = ", ".join(f"{name} {w:+.2f}" for name, w in zip(("bias", *FEATURES), weights.tolist(), strict=True))
    return f"ranker after {rows:,} rows ({partitions} partitions): {terms}"


def world_config(args: argparse.Namespace) -> WorldConfig:
    """The ``--world`` preset, with ``--items-per-s`` arrivals when given and ``world_set``'s parameters (bench.blends'
    ``--world-set``: a world no default was chosen on), validated as a whole (pydantic.ValidationError).

    >>> args = argparse.Namespace(world="stable", items_per_s=None, world_set=[("n_categories", 40)])
    >>> world_config(args).n_categories, world_config(args).appeal_half_life_h
    (40, None)
    """
    update = dict(getattr(args, "world_set", ()))
    if args.items_per_s is not None:
        update["new_items_per_hour"] = args.items_per_s * 3600
    world = WORLDS[args.world]
    return WorldConfig.model_validate({**world.model_dump(), **update}) if update else world


def make_world(config: WorldConfig, args: argparse.Namespace) -> World:
    """The run's world: synthetic, or with MovieLens 100K's users and films as its hidden tastes (bench.blends'
    ``--movielens-tastes DIR``: recstream.sim.world.movielens_world, the world's clock and fading kept)."""
    folder = getattr(args, "movielens_tastes", None)
    return World(config) if folder is None else movielens_world(folder, config)


def run_with_retries(base: Settings, policy: str, seed: int, args: argparse.Namespace, models: dict) -> SimResult:
    """Ports are picked free but other people's tests take ports too: a child that could not bind is retried."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return run_one(base, policy, seed, args, models)
        except infra.InfraError as exc:
            if attempt == START_ATTEMPTS:
                raise
            console.print(f"[yellow]{exc}; retrying on fresh ports[/yellow]")
    raise AssertionError("unreachable")


def spread(values: Sequence[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:{fmt}} ± {sd:{fmt}}"


def closed_loop_parser(doc: str, seeds: int = 5, seconds: float = 60.0) -> argparse.ArgumentParser:
    """The options every closed-loop benchmark shares (this one, bench.blends, bench.ranker): seeds, run length,
    the simulated users' pace and the world history each run's first model is trained on."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--seconds", type=float, default=seconds, help="simulated users per run")
    parser.add_argument("--feeds-per-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--history-s", type=float, default=300.0, help="world history before each run's model")
    parser.add_argument("--history-rate", type=float, default=40.0, help="views per second in that history")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = closed_loop_parser(__doc__)
    parser.add_argument("--world", choices=list(WORLDS), default="fresh", help="the simulated world (simulator.WORLDS)")
    parser.add_argument("--items-per-s", type=float, default=None, help="new items per second (default: the world's)")
    parser.add_argument(
        "--policies", default="none,fresh,epsilon_greedy,thompson", help="comma-separated, of: " + ", ".join(POLICIES)
    )
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--quick", action="store_true", help="2 seeds × 20 s: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    chosen = args.policies.split(",")
    if unknown := set(chosen) - set(POLICIES):
        parser.error(f"unknown policies {sorted(unknown)}; choose among {', '.join(POLICIES)}")
    if not args.no_record and (blends := [p for p in chosen if p in BLEND_ROWS]):
        parser.error(f"{', '.join(blends)}: bench.blends records these rows (here, add --no-record)")
    if args.quick:  # a smoke run: its figures never replace the recorded ones
        args.seeds, args.seconds, args.no_record = 2, 20.0, True
    command = " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    results: dict[str, list[SimResult]] = {p: [] for p in chosen}
    models: dict[int, object] = {}
    with services() as base:
        for seed in range(1, args.seeds + 1):
            for policy in chosen:
                r = run_with_retries(base, policy, seed, args, models)
                results[policy].append(r)
                s = r.summary()
                console.print(
                    f"seed {seed} {policy:>14}: {s['feeds']:,} feeds ({s['failed']} failed, {s['degraded']} degraded, "
                    f"{s['ranked_share']:.0%} ranked), "
                    f"CTR {s['ctr']:.4f}, regret/feed {s['regret_per_feed']:.4f}, top-decile discovered "
                    f"{s['top_new_discovered']}/{s['top_new_items']}, CTR by source "
                    + ", ".join(f"{k} {v:.3f}" for k, v in s["ctr_by_source"].items())
                )
    minutes = (time.monotonic() - started) / 60
    report(results, args, command, minutes)


def slots_per_feed(runs: Sequence[SimResult]) -> str:
    """What a row served, per source, averaged over its feeds: a source that ran dry hands its slots on
    (serving/blend.OVERFLOW, personal first), so a single-source row may still serve a little of another."""
    feeds = sum(r.feeds for r in runs) or 1
    served: dict[str, int] = {}
    for r in runs:
        for source, counts in r.by_source.items():
            served[source] = served.get(source, 0) + counts.impressions
    return ", ".join(f"{source} {n / feeds:.1f}" for source, n in sorted(served.items()))


def summary_table(results: dict[str, list[SimResult]], title: str) -> Table:
    """Per row, mean ± standard deviation over the seeds, and how many seeds it had the lowest regret on."""
    policies = list(results)
    seeds = len(next(iter(results.values())))
    table = Table(title=title)
    columns = ("policy", "CTR", "regret / feed", "pages ranked", "top-decile new items discovered",
               "median impressions to discovery", "seeds with the lowest regret",
               "slots per feed by source")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("policy", columns[-1]) else "right")
    lowest = lowest_regret(results)
    for policy in policies:
        runs = results[policy]
        medians = [m for r in runs if (m := r.median_impressions_to_discovery) is not None]
        table.add_row(
            policy,
            spread([r.ctr for r in runs], ".4f"),
            spread([r.regret_per_feed for r in runs], ".3f"),
            f"{sum(r.ranked for r in runs) / max(sum(r.feeds for r in runs), 1):.0%}",
            spread([len(r.top_discovered) for r in runs], ".1f")
            + f" of {statistics.fmean(len(r.top_new) for r in runs):.1f}",
            f"{statistics.median(medians):.0f}" if medians else "–",
            f"{lowest.count(policy)} of {seeds}" if lowest else "–",
            slots_per_feed(runs),
        )
    return table


def lowest_regret(results: dict[str, list[SimResult]]) -> list[str] | None:
    """Per seed, the row with the lowest regret per feed; None when only one row ran (nothing to be lower than)."""
    if len(results) < 2:
        return None
    seeds = len(next(iter(results.values())))
    return [min(results, key=lambda p, k=k: results[p][k].regret_per_feed) for k in range(seeds)]


def means(results: dict[str, list[SimResult]]) -> dict[str, dict[str, float]]:
    """Per row, the mean over the seeds of CTR, regret per feed and top-decile new items discovered."""
    return {
        p: {
            "ctr": statistics.fmean(r.ctr for r in runs),
            "regret_per_feed": statistics.fmean(r.regret_per_feed for r in runs),
            "found": statistics.fmean(len(r.top_discovered) for r in runs),
        }
        for p, runs in results.items()
    }


def offered(args: argparse.Namespace) -> float:
    """The feeds a run is offered: ``--feeds-per-s`` × ``--seconds``."""
    return args.feeds_per_s * args.seconds


def served_column(results: dict[str, list[SimResult]], args: argparse.Namespace) -> str:
    """The header of :func:`feeds_served`'s column: the rows in the same order, and the feeds offered."""
    return f"feeds served ({' / '.join(results)}; {offered(args):,.0f} offered)"


def feeds_served(results: dict[str, list[SimResult]], seed: int) -> str:
    """Each row's feeds served on the seed (0-based), in the rows' order: a throttled row stands out."""
    return " / ".join(f"{runs[seed].feeds:,}" for runs in results.values())


def check_feeds(results: dict[str, list[SimResult]], args: argparse.Namespace) -> None:
    """bench/common.check_answers per row: more than 0.1% of its feeds failed or degraded makes the run invalid;
    then every run must have served MIN_SERVED_SHARE of the feeds offered (a warning under ``--no-record``)."""
    for policy, runs in results.items():
        check_answers(
            f"{policy} feeds", sum(r.feeds + r.failed for r in runs), sum(r.failed + r.degraded for r in runs)
        )
    first = getattr(args, "first_seed", 1)
    short = [f"{policy} seed {first + k}: {r.feeds:,}" for policy, runs in results.items()
             for k, r in enumerate(runs) if r.feeds < MIN_SERVED_SHARE * offered(args)]  # fmt: skip
    if not short:
        return
    reason = (f"throttled: {'; '.join(short)} feeds served, below {MIN_SERVED_SHARE:.0%} of the {offered(args):,.0f} "
              "offered")  # fmt: skip
    if not args.no_record:
        fail(reason)
    console.print(f"[yellow]warning (not recorded anyway): {reason}[/yellow]")


def figures_of(results: dict[str, list[SimResult]], world: str, command: str) -> dict[str, dict[str, object]]:
    """``closed_loop_<figure>_<row>[_<world>]``: CTR, regret per feed and discoveries, means over the seeds."""
    suffix = "" if world == "fresh" else f"_{world}"
    figures = {}
    for policy, mean in means(results).items():
        key = KEYS[policy] + suffix
        figures[f"closed_loop_ctr_{key}"] = figure(mean["ctr"], "CTR", command)
        figures[f"closed_loop_regret_{key}"] = figure(mean["regret_per_feed"], "regret per feed", command)
        figures[f"closed_loop_discovered_{key}"] = figure(mean["found"], "top-decile new items", command)
    return figures


def report(results: dict[str, list[SimResult]], args: argparse.Namespace, command: str, minutes: float) -> None:
    """The tables, Thompson sampling against the targets (when its rivals ran) and bench/results.json (not when
    more than 0.1% of a policy's feeds failed or came back degraded: bench/common.check_answers)."""
    policies = list(results)
    title = (f"closed loop, {args.world} world, {args.seeds} seeds × {args.seconds:.0f} s at "
             f"{args.feeds_per_s:.0f} feeds/s (top-10 feeds); {machine()}; {minutes:.1f} min")  # fmt: skip
    show(summary_table(results, title), console)
    lowest = lowest_regret(results)
    served = served_column(results, args)
    by_seed = Table(title="regret per feed, by seed (the same world and users for every policy)")
    for column in ("seed", *policies, served, "lowest"):
        by_seed.add_column(column, justify="left" if column in ("seed", "lowest") else "right")
    for k in range(args.seeds):
        by_seed.add_row(str(k + 1), *(f"{results[p][k].regret_per_feed:.3f}" for p in policies),
                        feeds_served(results, k), lowest[k] if lowest else "–")  # fmt: skip
    show(by_seed, console)
    mean = means(results)
    if {"thompson", "none", "epsilon_greedy"} <= set(policies):  # the targets
        ts, none = mean["thompson"], mean["none"]
        ts_k, none_k, eg_k = ([r.regret_per_feed for r in results[p]] for p in ("thompson", "none", "epsilon_greedy"))
        below = sum(t < min(n, e) for t, n, e in zip(ts_k, none_k, eg_k, strict=True))
        console.print(
            f"Thompson / none: CTR ×{ts['ctr'] / max(none['ctr'], 1e-9):.3f} (target ≥ 1.15), discovered ×"
            f"{ts['found'] / max(none['found'], 1e-9):.2f} (target ≥ 1.5); Thompson's regret below none's and "
            f"ε-greedy's on {below} of {args.seeds} seeds (target: all)"
        )
    check_feeds(results, args)
    if not args.no_record:
        record(figures_of(results, args.world, command))


if __name__ == "__main__":
    main()
