"""What every benchmark shares: the machine line, bench/results.json, its tables, private services, quantiles.

Benchmarks start their own Kafka and Redis (``infra.running`` on free loopback ports, in
``.run/bench``) and stop exactly those, so they never touch a developer's running system.
Each prints its tables through :func:`show`, which also hands them, as markdown, to
``bench/run_all.py`` (the one command that regenerates BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from recstream.contracts.settings import Settings
from recstream.shell import infra

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
TABLES_ENV = "BENCH_TABLES"
"""When set (by bench/run_all.py), :func:`show` appends each table to this file as one JSON line."""
START_ATTEMPTS = 3  # private services are started on fresh ports this many times before giving up


def machine() -> str:
    """`2 cores, 23.4 GiB, <CPU model>` for the tables."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )  # fmt: skip
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.1f} GiB, {model}"


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


def record(figures: dict[str, dict[str, object]]) -> None:
    """Read-modify-write bench/results.json, keeping other benchmarks' keys; atomic replace."""
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
            out.write(
                json.dumps({"script": Path(sys.argv[0]).stem, "markdown": markdown_table(table)}).encode() + b"\n"
            )


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
    """Prometheus' estimate from cumulative (upper bound, count) buckets: linear within a bucket.

    >>> round(histogram_quantile(0.5, [(0.1, 0), (0.2, 10), (float("inf"), 10)]), 6)
    0.15
    """
    total = buckets[-1][1]
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
