"""Every benchmark in sequence, then BENCHMARKS.md regenerated from bench/BENCHMARKS.template.md.

    .venv/bin/python -m bench.run_all                      # everything but the 30-minute soak
    .venv/bin/python -m bench.run_all --only produce,feeds
    .venv/bin/python -m bench.run_all --skip prequential --with soak --quick

Each benchmark runs as its own process (as its documented command does), its output streamed
here and kept in ``.run/bench-logs/<name>.out``; it writes its figures into bench/results.json
itself (``common.record``) and hands its tables over as markdown (``common.show``). BENCHMARKS.md
is the template's prose with, per benchmark, a generated block: the command, date, machine and
the tables of its latest successful run. A benchmark not run this time (``--only``, ``--skip``,
a failure, a script not written yet) keeps the block it had, so a partial run never erases one.
``--quick`` replaces no block at all: its smoke tables would stand under prose describing full records.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from bench.common import ROOT, TABLES_ENV, machine

BENCH = ROOT / "bench"
TEMPLATE = BENCH / "BENCHMARKS.template.md"
OUTPUT = ROOT / "BENCHMARKS.md"
LOGS = ROOT / ".run" / "bench-logs"
PYTHON = ".venv/bin/python"
COMMAND = f"{PYTHON} -m bench.run_all"
TAIL_LINES = 40
console = Console()


@dataclass(frozen=True, slots=True)
class Bench:
    """One benchmark: bench/<module>.py (run as ``python -m bench.<module>`` with ``args``; the module is ``name``
    unless given), its block in BENCHMARKS.md named ``name``; ``env`` and ``args`` are part of its command.

    >>> Bench("reliability_clusters", module="reliability", args=("--clusters",)).command(["--quick"])
    '.venv/bin/python -m bench.reliability --clusters --quick'
    """

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    by_default: bool = True
    module: str = ""
    args: tuple[str, ...] = ()

    @property
    def module_name(self) -> str:
        """The bench/ module it runs (whose figures bench/common.RESULT_KEYS declares)."""
        return self.module or self.name

    @property
    def script(self) -> Path:
        return BENCH / f"{self.module_name}.py"

    def argv(self, args: Sequence[str] = ()) -> list[str]:
        return ["-m", f"bench.{self.module_name}", *self.args, *args]

    def command(self, args: Sequence[str] = ()) -> str:
        prefix = "".join(f"{k}={v} " for k, v in self.env.items())
        return " ".join([f"{prefix}{PYTHON}", *self.argv(args)])


BENCHES = (
    Bench("produce"),
    Bench("worker"),
    Bench("user_steps", {"OPENBLAS_NUM_THREADS": "1"}),
    Bench("ann_space"),
    Bench("feeds"),
    Bench("prequential"),
    Bench("adopt", {"OPENBLAS_NUM_THREADS": "1"}),
    Bench("rebuild", {"OPENBLAS_NUM_THREADS": "1"}),
    Bench("validate", {"OPENBLAS_NUM_THREADS": "1"}),
    Bench("policies"),
    Bench("blends"),
    Bench("ranker"),
    Bench("reliability"),
    Bench("reliability_clusters", module="reliability", args=("--clusters",), by_default=False),  # 9 more processes
    Bench("soak", by_default=False),  # ~30 minutes
    Bench("scale", {"OPENBLAS_NUM_THREADS": "1"}, by_default=False),  # ~45 minutes on a loaded machine
)
BY_NAME = {b.name: b for b in BENCHES}


@dataclass
class Run:
    """What one benchmark run produced: its markdown tables, or the reason it has none."""

    bench: Bench
    command: str
    day: str
    machine: str
    seconds: float = 0.0
    tables: list[str] = field(default_factory=list)
    failure: str | None = None

    def block(self) -> str:
        """The generated part of the benchmark's section (without its markers)."""
        return "\n\n".join([f"`{self.command}` — {self.day}, {self.machine}, {self.seconds:.0f} s", *self.tables])


# --- rendering (pure) --------------------------------------------------------------------

BLOCK = re.compile(r"<!-- bench:(?P<name>[a-z_]+) -->\n(?P<body>.*?)\n<!-- /bench:(?P=name) -->", re.DOTALL)
PLACEHOLDER = re.compile(r"^\{\{bench:(?P<name>[a-z_]+)\}\}$", re.MULTILINE)


def previous_blocks(markdown: str) -> dict[str, str]:
    """The generated block of each benchmark in an existing BENCHMARKS.md.

    >>> previous_blocks("x\\n<!-- bench:produce -->\\nold table\\n<!-- /bench:produce -->\\ny")
    {'produce': 'old table'}
    """
    return {m["name"]: m["body"] for m in BLOCK.finditer(markdown)}


def render(template: str, blocks: Mapping[str, str], header: str, names: Sequence[str]) -> str:
    """BENCHMARKS.md: ``{{header}}`` and each ``{{bench:NAME}}`` line of the template replaced by its block.

    A benchmark of ``names`` with a block but no placeholder gets a section of its own at the end
    (a new script is listed before its prose is written); a placeholder without a block says how
    to produce it.

    >>> print(render("# B\\n{{header}}\\n## P\\n{{bench:produce}}", {"produce": "T", "soak": "S"}, "H",
    ...              ["produce", "soak"]))
    # B
    H
    ## P
    <!-- bench:produce -->
    T
    <!-- /bench:produce -->
    <BLANKLINE>
    ## soak
    <BLANKLINE>
    <!-- bench:soak -->
    S
    <!-- /bench:soak -->
    <BLANKLINE>
    """

    def block(name: str) -> str:
        body = blocks.get(name) or f"_Not measured yet: `{COMMAND} --only {name}`._"
        return f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"

    placed = set(PLACEHOLDER.findall(template))
    out = PLACEHOLDER.sub(lambda m: block(m["name"]), template).replace("{{header}}", header)
    extra = [f"## {name}\n\n{block(name)}\n" for name in names if name not in placed and name in blocks]
    return "\n".join([out.rstrip("\n"), "", *extra]) if extra else out


def header(day: str, machine_line: str) -> str:
    return (
        f"Generated by `{COMMAND}` on {day} from `bench/BENCHMARKS.template.md` (edit the prose there; "
        f"each table below is replaced when its benchmark runs again). Machine of this run: **{machine_line}**; "
        f"Python {sys.version.split()[0]}."
    )


# --- running -----------------------------------------------------------------------------


def supports_quick(bench: Bench) -> bool:
    """Whether the script declares a ``--quick`` option (read from its source: a script without options
    would run in full when asked for ``--help``)."""
    return '"--quick"' in bench.script.read_text()


def run(bench: Bench, quick: bool) -> Run:
    """The script in a child process; its output streamed to the console and to .run/bench-logs/<name>.out."""
    args = ["--quick"] if quick and supports_quick(bench) else []
    result = Run(bench, bench.command(args), date.today().isoformat(), machine())
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{bench.name}.out"
    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(tmp) / "tables.jsonl"
        env = {**os.environ, **bench.env, TABLES_ENV: str(tables), "COLUMNS": "150"}
        started = time.perf_counter()
        tail: list[str] = []
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, *bench.argv(args)], cwd=ROOT, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                out.write(line)
                tail = [*tail[-TAIL_LINES + 1 :], line]
            code = proc.wait()
        result.seconds = time.perf_counter() - started
        if tables.exists():
            result.tables = [orjson.loads(line)["markdown"] for line in tables.read_text().splitlines() if line]
    if code != 0:
        result.failure = f"exit code {code}; see {log.relative_to(ROOT)}"
    elif not result.tables:  # a script that prints its tables without common.show: keep what it printed
        result.tables = ["```text\n" + "".join(tail).rstrip() + "\n```"]
    return result


def choose(only: str | None, skip: str | None, also: str | None) -> list[Bench]:
    """The benchmarks to run, in BENCHES order: --only, else the default ones plus --with, minus --skip.

    >>> [b.name for b in choose("feeds,produce", None, None)]
    ['produce', 'feeds']
    >>> [b.name for b in choose(None, "feeds,prequential,adopt,rebuild,policies,blends,ranker,reliability", "soak")]
    ['produce', 'worker', 'user_steps', 'ann_space', 'validate', 'soak']
    """

    def names(text: str | None) -> set[str]:
        chosen = {n.strip() for n in (text or "").split(",") if n.strip()}
        unknown = chosen - BY_NAME.keys()
        if unknown:
            raise typer.BadParameter(f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}")
        return chosen

    picked = names(only) or {b.name for b in BENCHES if b.by_default} | names(also)
    picked -= names(skip)
    return [b for b in BENCHES if b.name in picked]


def main(
    only: Annotated[str | None, typer.Option(help="comma-separated benchmarks to run, nothing else")] = None,
    skip: Annotated[str | None, typer.Option(help="comma-separated benchmarks not to run")] = None,
    also: Annotated[str | None, typer.Option("--with", help="add benchmarks skipped by default (soak)")] = None,
    quick: Annotated[
        bool, typer.Option(help="pass --quick to the benchmarks that declare it; BENCHMARKS.md is left as it was")
    ] = False,
    write: Annotated[bool, typer.Option(help="regenerate BENCHMARKS.md afterwards (not with --quick)")] = True,
) -> None:
    """Run the benchmarks in sequence, then regenerate BENCHMARKS.md (results.json is written by each)."""
    chosen = choose(only, skip, also)
    runs: list[Run] = []
    for bench in chosen:
        if not bench.script.exists():
            console.print(f"[yellow]{bench.name}: bench/{bench.name}.py does not exist yet; skipped[/yellow]")
            continue
        console.rule(f"{bench.name}: {bench.command()}")
        runs.append(run(bench, quick))
    if quick:
        console.print(f"--quick: smoke runs, not measurements; {OUTPUT.relative_to(ROOT)} left as it was")
    elif write:
        blocks = previous_blocks(OUTPUT.read_text()) if OUTPUT.exists() else {}
        blocks.update({r.bench.name: r.block() for r in runs if r.failure is None})
        today = date.today().isoformat()
        names = [b.name for b in BENCHES]
        OUTPUT.write_text(render(TEMPLATE.read_text(), blocks, header(today, machine()), names))
        console.print(f"wrote {OUTPUT.relative_to(ROOT)}")
    for r in runs:
        status = f"[red]failed: {r.failure}[/red]" if r.failure else f"{len(r.tables)} table(s)"
        console.print(f"{r.bench.name}: {r.seconds:.0f} s, {status}")
    if any(r.failure for r in runs):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
