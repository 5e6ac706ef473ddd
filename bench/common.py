"""What every benchmark shares: the machine line, bench/results.json and its keys, tables, private services,
quantiles, and the one way a run ends as invalid.

Benchmarks start their own Kafka and Redis (``infra.running`` on free loopback ports, in
``.run/bench``) and stop exactly those, so they never touch a developer's running system.
Each prints its tables through :func:`show`, which also hands them, as markdown, to
``bench/run_all.py`` (the one command that regenerates BENCHMARKS.md). A run that cannot stand
(answers that failed, states that differ, a figure from no samples) ends through :func:`fail`:
exit code 1 and nothing recorded, so bench/results.json only ever holds figures of valid runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from math import isfinite
from pathlib import Path
from typing import NoReturn

import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from recstream.contracts.settings import Settings
from recstream.shell import infra

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS_BESIDE = Path("shared", "data", "ml-100k")


def movielens_dir() -> Path:
    """Where MovieLens 100K is read from (it is never committed): ``$MOVIELENS_DIR``, else ``shared/data/ml-100k``
    beside the checkout (or, in a git worktree without one, beside the main checkout), where the project's own
    machines keep it."""
    if os.environ.get("MOVIELENS_DIR"):
        return Path(os.environ["MOVIELENS_DIR"])
    here = ROOT.parent / MOVIELENS_BESIDE
    if here.exists():
        return here
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    main = Path(common).parent.parent / MOVIELENS_BESIDE if common else here
    return main if main.exists() else here


RESULTS = ROOT / "bench" / "results.json"
TABLES_ENV = "BENCH_TABLES"
"""When set (by bench/run_all.py), :func:`show` appends each table to this file as one JSON line."""
START_ATTEMPTS = 3  # private services are started on fresh ports this many times before giving up
MAX_FAILED_SHARE = 0.001
"""A load run is invalid when more than this share of its requests failed (non-200 or degraded)."""
_MODE = re.compile(r'recstream_reader_feeds_by_mode_total\{mode="([^"]+)"\} (\S+)')


@dataclass(frozen=True)
class Keys:
    """The bench/results.json keys one benchmark writes: every valid default run writes all of ``always``;
    ``optional`` ones are written only by a non-default option or when what they measure happened."""

    always: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def all(self) -> frozenset[str]:
        return frozenset(self.always + self.optional)


def _prequential_keys(rows: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        f"prequential_{metric}_{row}" for row in rows for metric in ("hr10", "ndcg10", "coverage", "novelty", "ild")
    )


BLEND_ROWS = ("fixed", "popular_only", "personal_only", "ranked")
"""bench/blends.py's rows."""


def _policy_keys(policies: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"closed_loop_{what}_{policy}" for policy in policies for what in ("ctr", "regret", "discovered"))


RESULT_KEYS: Mapping[str, Keys] = {
    "produce": Keys(("producer_events_per_s",)),
    "worker": Keys(
        (
            "worker_events_per_s",
            "worker_events_per_s_counters_only",
            "worker_events_per_s_ranker",
            "worker_events_per_s_ranker_pipelined",
            "freshness_p50_ms",
            "freshness_p99_ms",
            "candidates_refresh_p50_ms",
            "candidates_refresh_p99_ms",
        ),
        ("worker_events_per_s_single", "worker_events_per_s_cluster"),  # --cluster only
    ),
    "user_steps": Keys(("user_steps_per_s", "user_steps_per_s_batched", "user_steps_per_s_anchored")),
    "ann_space": Keys(()),
    "feeds": Keys(
        (
            "reader_feeds_per_s",
            "reader_p99_ms",
            "reader_feeds_per_s_1proc",
            "reader_feeds_per_s_2proc",
            "reader_feeds_per_s_ranked",
            "reader_feeds_per_s_fixed",
        ),
        # the 2-process reader at the offered rate, added after the run of 2026-12-02: written by every run since;
        # the targets' ratios (medians of the ratios within each round), added after the run of 2026-12-05: written
        # by every run since; the reader on a Redis Cluster, the main reader of the same turns, their ratio: --cluster
        (
            "reader_p99_ms_2proc",
            "reader_two_processes_speedup",
            "reader_ranked_to_fixed",
            "reader_feeds_per_s_cluster",
            "reader_feeds_per_s_single",
            "reader_p99_ms_cluster",
            "reader_cluster_to_single",
        ),
    ),
    "prequential": Keys(
        _prequential_keys(("popularity", "frozen", "candidates", "served")),
        # the ranker-off row, added with the ranker (issue 16): written by the first valid run since, then always
        _prequential_keys(("served_fixed",)),
    ),
    "adopt": Keys(("adopt_hr10_served", "adopt_ndcg10_served", "adopt_import_to_feed_s")),
    "rebuild": Keys(("rebuild_events_per_s",)),
    "ranker": Keys(
        tuple(
            f"ranker_{figure}{scorer}{world}"
            for world in ("", "_stable")
            for scorer in ("", "_ctr_only", "_segment_ctr_only", "_als_only", "_base_rate")
            for figure in ("auc", "logloss")
            if (figure, scorer) != ("auc", "_base_rate")
        )
    ),
    "policies": Keys(_policy_keys(("no_explore", "fresh", "egreedy", "ts"))),
    "blends": Keys(
        (
            *_policy_keys(tuple(f"{row}{world}" for world in ("", "_stable") for row in BLEND_ROWS)),
            "closed_loop_ranked_share",
            "closed_loop_ranked_share_stable",
        ),
        # --worlds sparse or dense
        (
            *_policy_keys(tuple(f"{row}{world}" for world in ("_sparse", "_dense") for row in BLEND_ROWS)),
            "closed_loop_ranked_share_sparse",
            "closed_loop_ranked_share_dense",
        ),
    ),
    "validate": Keys(
        (
            "validate_hr10_worst_ratio",
            *(f"validate_hr10_{s}" for s in ("movielens", "movielens_shuffled", "fresh", "stable", "sparse", "dense")),
        )
    ),
    "reliability": Keys(
        (
            *(
                f"reliability_{s}_{figure}"
                for s in ("worker_kill", "rebalance_kill", "kafka_restart", "redis_kill", "redis_rollback", "poison")
                for figure in ("recovery_max_s", "stalled_partitions")
            ),
            "reliability_lost_events",
            "reliability_double_applied_events",
            "reliability_reader_failed_requests",
        ),
        # only when the reader recovered; the cluster scenarios' (--clusters)
        (
            "reliability_reader_recovery_max_s",
            "reliability_broker_kill_lost_events",
            "reliability_redis_failover_lost_events",
        ),
    ),
    "scale": Keys(
        (
            "scale_redis_bytes_per_user",
            "scale_redis_bytes_per_user_at_caps",
            "scale_redis_bytes_per_item",
            "scale_worker_events_per_s_x100",
            "scale_worker_rss_mib_x100",
            "scale_reader_p99_ms_x100",
            "scale_train_s_x100",
            "scale_rescore_ms_x100",
            "scale_rescore_pass_max_ms_x100",
            "scale_peak_rss_gib_x100",
        )
    ),
    "soak": Keys(
        (
            "soak_worker_rss_growth_pct",
            "soak_reader_rss_growth_pct",
            "soak_redis_memory_growth_pct",
            "soak_freshness_p99_ms",
            "soak_lag_events_max",
        )
    ),
}
"""Which benchmark (``bench/<name>.py``) writes which keys: :func:`record` refuses any other key, and
tests/bench/test_results.py checks bench/results.json against this table."""


def machine() -> str:
    """`2 cores, 23.4 GiB, <CPU model>` for the tables."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )  # fmt: skip
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.1f} GiB, {model}"


def client_of(settings: Settings, **options: float) -> redis.Redis | redis.RedisCluster:
    """A blocking client of the run's Redis: a cluster client on a Redis Cluster."""
    return (redis.RedisCluster if settings.redis.cluster else redis.Redis).from_url(settings.redis.url, **options)


def figure(value: float, unit: str, command: str, baseline: float | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "value": round(value, 4),
        "unit": unit,
        "command": command,
        "date": date.today().isoformat(),
    }
    if baseline is not None:
        out["baseline"] = round(baseline, 4)
    return out


def script() -> str:
    """The running benchmark's name: ``feeds`` for ``python -m bench.feeds``."""
    return Path(sys.argv[0]).stem


def fail(reason: str) -> NoReturn:
    """End an invalid run: the reason on stderr, exit code 1, nothing recorded (a ``finally`` still stops children)."""
    Console(stderr=True).print(f"[red]{script()}: invalid run, nothing recorded: {reason}[/red]")
    raise SystemExit(1)


def check_answers(what: str, answered: int, failed: int, max_share: float = MAX_FAILED_SHARE) -> None:
    """:func:`fail` when nothing was answered or more than ``max_share`` of the answers failed.

    >>> check_answers("warm feeds", answered=10_000, failed=10)
    >>> check_answers("warm feeds", answered=10_000, failed=11)
    Traceback (most recent call last):
    SystemExit: 1
    """
    if answered == 0:
        fail(f"{what}: no answers")
    if failed > max_share * answered:
        fail(f"{what}: {failed:,} of {answered:,} answers failed (more than {max_share:.1%})")


def record(figures: dict[str, dict[str, object]]) -> None:
    """Read-modify-write bench/results.json, keeping other benchmarks' keys; atomic replace.

    Refuses (:func:`fail`, nothing written) a key this benchmark does not declare in RESULT_KEYS and a
    value or baseline that is not a finite number (a quantile or mean of no samples is NaN).
    """
    declared = RESULT_KEYS.get(script())
    if declared is None:
        fail(f"bench/{script()}.py declares no results.json keys (bench/common.RESULT_KEYS)")
    undeclared = sorted(set(figures) - declared.all)
    if undeclared:
        fail(f"keys not declared in bench/common.RESULT_KEYS[{script()!r}]: {', '.join(undeclared)}")
    for key, entry in figures.items():
        for field in ("value", "baseline"):
            if field in entry and not isfinite(float(entry[field])):  # type: ignore[arg-type]
                fail(f"{key}: {field} {entry[field]} (computed from no samples?)")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


def markdown_table(table: Table) -> str:
    """A rich table as a GitHub markdown table: the title in bold above it, right-justified columns as `---:`.

    >>> t = Table("row", "value", title="demo")
    >>> t.columns[1].justify = "right"
    >>> t.add_row("a|b", "[bold]1[/bold]")
    >>> print(markdown_table(t))
    **demo**
    <BLANKLINE>
    | row | value |
    |---|---:|
    | a\\|b | 1 |
    """

    def plain(cell: object) -> str:
        text = cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain
        return " ".join(text.split()).replace("|", "\\|")

    columns = table.columns
    lines = [f"**{plain(table.title)}**", ""] if table.title else []
    lines.append("| " + " | ".join(plain(c.header) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in columns) + "|")
    for row in zip(*(c.cells for c in columns), strict=True):
        lines.append("| " + " | ".join(plain(cell) for cell in row) + " |")
    return "\n".join(lines)


def show(table: Table, console: Console | None = None) -> None:
    """Print the table; under bench/run_all.py also append it as markdown to the file it names in BENCH_TABLES."""
    (console or Console()).print(table)
    target = os.environ.get(TABLES_ENV)
    if target:
        with open(target, "ab") as out:
            out.write(json.dumps({"script": script(), "markdown": markdown_table(table)}).encode() + b"\n")


@contextmanager
def services(**overrides: object) -> Iterator[Settings]:
    """A private, empty Kafka + Redis for one benchmark run, removed afterwards.

    Ports are picked free, but other engineers' tests start services too, so a port can be taken
    before Kafka binds it: a failed start is retried on fresh ports. ``infra.running`` leaves Redis
    up when Kafka then fails to start, so a failed start is torn down here (by this run's pid files).
    """
    (ROOT / ".run").mkdir(exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        run_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / ".run"))
        settings = infra.private_settings(run_dir, ROOT / ".cache", model_dir=run_dir / "models", **overrides)
        try:
            with ExitStack() as stack:
                stack.enter_context(infra.sigterm_interrupts())  # `kill <pid>` still stops the workers and services
                try:
                    stack.enter_context(infra.running(settings))
                except infra.InfraError:
                    infra.down(settings)
                    if attempt < START_ATTEMPTS:
                        continue
                    raise
                yield settings
                return
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' estimate from cumulative (upper bound, count) buckets: linear within a bucket; NaN without
    samples (which :func:`record` refuses).

    >>> round(histogram_quantile(0.5, [(0.1, 0), (0.2, 10), (float("inf"), 10)]), 6)
    0.15
    >>> histogram_quantile(0.5, [(0.1, 0), (float("inf"), 0)])
    nan
    """
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def scrape_histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative buckets of an unlabelled histogram from Prometheus text exposition."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(buckets)


def modes(metrics: str) -> Counter[str]:
    """Feed pages by how they were made (``recstream_reader_feeds_by_mode_total``) in one reader process's metrics.

    >>> modes('recstream_reader_feeds_by_mode_total{mode="ranked"} 12.0')
    Counter({'ranked': 12})
    """
    return Counter({mode: int(float(n)) for mode, n in _MODE.findall(metrics)})


def changed_options(args: argparse.Namespace, defaults: argparse.Namespace, ignore: Collection[str] = ()) -> list[str]:
    """The options (``--name``) whose value differs from ``defaults``, but for ``ignore``: a run that departs from
    the defaults measured something else than the recorded figures promise."""
    return [f"--{name.replace('_', '-')}" for name, value in vars(defaults).items()
            if name not in ignore and getattr(args, name) != value]  # fmt: skip
