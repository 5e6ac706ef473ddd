"""``recstream``: one entry point whose subcommands grow with the project."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from recstream.contracts.events import Event, Rejected
from recstream.contracts.feedback import FeedbackTypes
from recstream.contracts.settings import (
    TOPIC_STEMS,
    ReaderSettings,
    Section,
    Settings,
    SettingsError,
    WorkerSettings,
    load_settings,
    redacted,
    variable,
)
from recstream.eventlog.log import MissingTopic
from recstream.eventlog.producer import EventProducer
from recstream.jobs import sources
from recstream.shell import infra
from recstream.sim.world import synthetic as synthetic_records


class _BootstrapFailures(logging.Filter):
    """Holds back aiokafka's "Unable connect to" record of each bootstrap address (it raises
    KafkaConnectionError right after) and keeps its reason for the one line that reports the error."""

    TEMPLATE = 'Unable connect to "%s:%s": %s'

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.TEMPLATE and isinstance(record.args, tuple):
            self.reasons.append(str(record.args[-1]))
            return False
        return True


_BUILT: ContextVar[Settings | None] = ContextVar("recstream_settings", default=None)
"""The settings the running command built with :func:`_settings`, its options included."""


def _built() -> Settings:
    """The running command's settings, else the environment's: rebuilt from the environment alone, an option that
    overrode a variable the settings refuse would end the command naming that variable, not the address."""
    return _BUILT.get() or _settings()


def _default(section: type[Section], field: str) -> str:
    """An option's default as its help says it, read from the settings model (a number written in the help would
    drift from it): the variable that sets it, and the model's default.

    >>> _default(ReaderSettings, "port")
    'RECSTREAM_READER_PORT, 8080'
    """
    return f"{variable(section.variables[field])}, {section.model_fields[field].default}"


@contextmanager
def _unreachable_in_one_line() -> Iterator[None]:
    """An unreachable Kafka or Redis, or a topic the brokers do not have, wherever a command meets it, ends the
    command with one line on stderr naming the address or topic and its variable, and exit code 1, instead of a
    traceback; so does a database the Redis refuses (past its ``databases``), which every connection selects first."""
    failures = _BootstrapFailures()
    kafka_log = logging.getLogger("aiokafka")
    kafka_log.addFilter(failures)
    built = _BUILT.set(None)
    try:
        yield
    except KafkaConnectionError:
        reasons = "; ".join(dict.fromkeys(failures.reasons)) or "no broker answered"
        _fail(f"cannot reach Kafka at {_built().kafka.bootstrap} (RECSTREAM_KAFKA_BOOTSTRAP): {reasons}")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        _fail(f"cannot reach Redis at {redacted(_built().redis.url)} (RECSTREAM_REDIS_URL): {reason}")
    except ResponseError as exc:
        if "DB index" not in str(exc):  # SELECT's refusal ("DB index is out of range"); any other is no address's
            raise
        redis = _built().redis
        _fail(f"Redis at {redacted(redis.url)} refuses database {redis.database} (RECSTREAM_REDIS_URL): {exc}")
    except infra.TopicsRefused as exc:
        _fail(str(exc))
    except MissingTopic as exc:
        kafka = _built().kafka
        variables = " or ".join(variable(name) for name in TOPIC_STEMS if getattr(kafka, name) == exc.topic)
        _fail(
            f"{exc} on Kafka at {kafka.bootstrap} ({variables or 'a topic setting'}): check the name, or create the "
            "topics with `recstream infra topics`"
        )
    finally:
        kafka_log.removeFilter(failures)
        _BUILT.reset(built)


def _fail(line: str) -> None:
    typer.secho(line, fg="red", err=True)  # not rich: it would wrap the line at 80 columns and read [brackets]
    raise typer.Exit(1)


class _Commands(TyperGroup):
    """The ``recstream`` group: every command, subcommands included, runs inside the one handler above."""

    def invoke(self, ctx: click.Context) -> object:
        with _unreachable_in_one_line():
            return super().invoke(ctx)


app = typer.Typer(help="recstream: a streaming, near-real-time recommender.", no_args_is_help=True, cls=_Commands)
infra_app = typer.Typer(help="Local Kafka + Redis on loopback, without Docker.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
experiment_app = typer.Typer(help="Online experiments (A/B tests) of blend settings.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
console = Console(stderr=True, soft_wrap=True)  # an error naming a long path stays one line, unbroken


def _existing(text: str, *, folder: bool = False) -> Any:
    """An option naming a file (or a ``folder``) that must exist: a mistyped path is a usage error before anything
    runs, not a traceback once the services are up."""
    return typer.Option(help=text, exists=True, file_okay=not folder, dir_okay=folder)


def _share(value: float) -> float:
    """A share in [0, 1): NaN fails the comparison too."""
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"expected a share in [0, 1), got {value}")
    return value


def _settings(**options: tuple[str, object]) -> Settings:
    """The environment's settings, with the command's options that set one, each given as setting=(option, value):
    ``reader_workers=("--workers", workers)``, a value of None when the option was not given. An option given
    overrides the variable; an invalid value ends the command, named as the user gave it: the option, else the
    variable."""
    given = {setting: (option, value) for setting, (option, value) in options.items() if value is not None}
    overrides = {setting: value for setting, (_, value) in given.items()}
    try:
        settings = load_settings({setting: option for setting, (option, _) in given.items()}, **overrides)
    except SettingsError as exc:
        console.print(f"[red]invalid settings[/red]\n{exc}")
        raise typer.Exit(2) from None
    _BUILT.set(settings)
    return settings


async def _reach(settings: Settings, *, kafka: bool, redis: bool) -> None:
    """Connect once to what a long-running command needs, so a wrong address stops it at start through the
    handler above (faust would print a traceback; the reader would serve empty degraded pages). Once
    running, the worker retries Redis and the reader degrades without it, by design."""
    from aiokafka.admin import AIOKafkaAdminClient

    from recstream.eventlog.connection import client_options
    from recstream.store.connection import connect

    if kafka:
        admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=10_000)
        try:
            await admin.start()
        finally:
            await admin.close()
    if redis:
        client = connect(settings, socket_connect_timeout=5, socket_timeout=5)
        try:
            await client.ping()
        finally:
            await client.aclose()


@infra_app.command("up")
def infra_up() -> None:
    """Start Redis and Kafka (if not running), wait until they answer, create the topics."""
    settings = _settings()
    try:
        for line in infra.up(settings):
            console.print(line)
    except infra.InfraError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except OSError as exc:  # a run folder it cannot write, say; up() has stopped what it started
        _fail(f"cannot start the services in {settings.local.run_dir} ({infra.RUN_DIR_VARIABLE}): {exc}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop what `infra up` started, and the worker, reader and Prometheus the demo left, by their recorded pids."""
    for line in infra.down(_settings()):
        console.print(line)


@infra_app.command("topics")
def infra_topics() -> None:
    """Create the contract's topics on the configured broker (for brokers this project did not start)."""
    created = asyncio.run(infra.ensure_topics(_settings()))
    console.print(f"topics created: {', '.join(created)}" if created else "topics present")


@infra_app.command("status")
def infra_status() -> None:
    """Kafka's and Redis's state as recorded in the run folder (named, absolute: it is relative to the working
    directory unless RECSTREAM_RUN_DIR says otherwise)."""
    for line in infra.status(_settings()):
        console.print(line)


bench_app = typer.Typer(help="Benchmarks (from a source checkout: they live in bench/).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("all", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_all(ctx: typer.Context) -> None:
    """Every benchmark in sequence, then BENCHMARKS.md regenerated: bench/run_all.py with the options given
    (--only, --skip, --with, --quick; `.venv/bin/python -m bench.run_all --help` describes them)."""
    import subprocess
    import sys

    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "run_all.py").exists():
        console.print(f"[red]{checkout / 'bench'} not found: the benchmarks run from a source checkout[/red]")
        raise typer.Exit(2)
    command = [sys.executable, "-m", "bench.run_all", *ctx.args]
    raise typer.Exit(subprocess.run(command, cwd=checkout, check=False).returncode)


def _progress() -> Progress:
    """The progress bar of a long command, on a terminal only: a log (Docker, CI) gets the summary line
    alone, and an error its one line."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=not console.is_terminal)


def _records(
    file: Path | None, movielens: Path | None, synthetic: int | None, seed: int, feedback: FeedbackTypes
) -> Iterator[sources.Record]:
    """The records of the one source given (the caller checked that with :func:`_one_source`, naming its options)."""
    if file is not None:
        return sources.read_jsonl(file, feedback=feedback)
    if movielens is not None:
        try:
            return sources.movielens(movielens)
        except sources.SourceError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    return synthetic_records(synthetic or 0, seed=seed, events=True)


def _one_source(**given: object) -> None:
    """End the command with a usage error unless exactly one of the source options ``given`` (by name) was, naming
    them: each command names its own (train has no --synthetic, and said it had)."""
    if sum(value is not None for value in given.values()) != 1:
        console.print(f"[red]give exactly one of {', '.join(f'--{name}' for name in given)}[/red]")
        raise typer.Exit(2)


async def _produce(
    settings: Settings, records: Iterable[sources.Record], progress: Progress
) -> tuple[int, int, list[str]]:
    task = progress.add_task("producing", total=None)
    invalid: list[str] = []
    pending: list[Event] = []
    async with EventProducer(settings) as producer:
        for record in records:
            value = record.value
            if isinstance(value, Rejected):
                invalid.append(record.refusal)
            elif record.kind == "event":
                pending.append(value)  # type: ignore[arg-type]
                if len(pending) >= 1000:
                    await producer.send_events(pending)
                    progress.advance(task, len(pending))
                    pending = []
            elif record.kind == "item":
                await producer.send_item(value)  # type: ignore[arg-type]
            else:
                await producer.send_user(value)  # type: ignore[arg-type]
        await producer.send_events(pending)
        progress.advance(task, len(pending))
        sent = await producer.flush()
        return sent, producer.messages_sent, invalid


def _skipped(lines: list[str], count: int, shown: int = 20) -> None:
    """The first invalid lines of an input, each with its reason, and how many more there were."""
    for line in lines[:shown]:
        console.print(f"[yellow]skipped {escape(line)}[/yellow]")  # a reason quotes the input: '[/x]' is no markup
    if count > shown:
        console.print(f"[yellow]... and {count - shown:,} more[/yellow]")


@app.command()
def produce(
    file: Annotated[Path | None, _existing("JSONL file, one event/item/user object a line")] = None,
    movielens: Annotated[Path | None, _existing("MovieLens 100K folder (u.data, u.item, u.user)", folder=True)] = None,
    synthetic: Annotated[
        int | None,
        typer.Option(min=1, help="this many events from the synthetic world (and the users and items they name)"),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="synthetic world seed")] = 7,
) -> None:
    """Publish a stream to Kafka with delivery confirmation; invalid lines are reported and skipped."""
    settings = _settings()
    _one_source(file=file, movielens=movielens, synthetic=synthetic)
    records = _records(file, movielens, synthetic, seed, settings.model.feedback_types)
    started = time.perf_counter()
    with _progress() as progress:
        sent, messages, invalid = asyncio.run(_produce(settings, records, progress))
    seconds = time.perf_counter() - started
    _skipped(invalid, len(invalid))
    console.print(
        f"{sent:,} events in {messages:,} messages in {seconds:.1f} s "
        f"({sent / max(seconds, 1e-9):,.0f} events/s); {len(invalid)} invalid lines skipped"
    )


@app.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(help="a CSV, JSONL or Parquet file", exists=True, dir_okay=False)],
    kind: Annotated[str, typer.Option(help="interactions, items or users")] = "interactions",
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or parquet (default: from the suffix, else csv)")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="CSV delimiter; 'tab' for a tab")] = ",",
    columns: Annotated[
        str | None, typer.Option(help="a file without a header row: its columns, comma-separated")
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="FIELD=COLUMN, where the file has a field (user, item, ts, type, rating, ...)"),
    ] = None,
    ts_unit: Annotated[str, typer.Option(help="s or ms: the unit of ts and created_ts")] = "ms",
    type_map: Annotated[
        list[str] | None, typer.Option(help="VALUE=TYPE: a type column's value as an event type")
    ] = None,
    click_rating: Annotated[
        float, typer.Option(help="a rating column: every row a view, this or more a click too")
    ] = 4.0,
    category_columns: Annotated[
        str | None, typer.Option(help="items: comma-separated columns whose 1 or true names a category")
    ] = None,
    sort: Annotated[bool, typer.Option(help="interactions: publish in timestamp order (reads the file first)")] = False,
    before: Annotated[int | None, typer.Option(help="interactions: only those before this ts (in --ts-unit)")] = None,
) -> None:
    """Publish a file of interactions, items or users to the topics; bad rows are reported by line and skipped.

    Fields and columns: recstream/jobs/imports.py. MovieLens 100K's ratings, for example:
    recstream import u.data --delimiter tab --columns user,item,rating,ts --ts-unit s --sort
    """
    from recstream.jobs import imports

    settings = _settings()
    header = [c.strip() for c in columns.split(",")] if columns else None
    try:
        spec = imports.ImportSpec.parse(
            kind,
            map_ or (),
            ts_unit,
            type_map or (),
            click_rating,
            category_columns.split(",") if category_columns else (),
        )
        fmt = imports.file_format(path, file_format)
        total = imports.count_rows(path, fmt)  # None: a stream, read once
    except imports.ImportSpecError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    delimiter = "\t" if delimiter == "tab" else delimiter
    if len(delimiter) != 1:
        console.print(f"[red]--delimiter: expected one character or 'tab', got {delimiter!r}[/red]")
        raise typer.Exit(2)
    rows = imports.file_rows(path, fmt, delimiter, header)
    before_ms = None if before is None else before * (1000 if ts_unit == "s" else 1)
    with _progress() as progress:
        task = progress.add_task(f"importing {path.name}", total=total)
        report = asyncio.run(
            imports.publish_rows(settings, rows, spec, sort, before_ms, lambda n: progress.advance(task, n))
        )
    where = "row" if fmt == "parquet" else "line"
    _skipped([f"{where} {number}: {reason}" for number, reason in report.bad], len(report.bad))
    records = "events" if kind == "interactions" else kind
    console.print(
        f"{report.records:,} {records} from {report.rows:,} rows published in {report.seconds:.1f} s; "
        f"{len(report.bad):,} bad rows skipped"
    )
    pool = settings.pool
    if (span := report.event_span_s()) is not None and span < pool.graduate_age_s:  # filled-in dates: nothing ages
        console.print(
            f"[yellow]these events span {span:,.0f} s of event time, less than the new-item pool's graduation age "
            f"(RECSTREAM_POOL_GRADUATE_AGE_S, {pool.graduate_age_s:,} s): no item ages out of the pool on them; one "
            f"leaves it after {pool.graduate_views:,} views (RECSTREAM_POOL_GRADUATE_VIEWS), or once "
            f"{pool.graduate_standing_events:,} events were applied at one instant (dates filled in: "
            'RECSTREAM_POOL_GRADUATE_STANDING_EVENTS; README, "Data without a clock").[/yellow]'
        )
    if report.stopped is not None:  # exit 0 here read as "the whole file is in", and the rest was lost unseen
        line, stopped = report.stopped
        _fail(f"{where} {line}: {stopped}")


class LogLevel(StrEnum):
    """The reader's and the worker's log levels: uvicorn.config.LOG_LEVELS (another name raised KeyError inside uvicorn,
    and faust took any)."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help=f"Prometheus port (default: {_default(WorkerSettings, 'metrics_port')}; 0: any)"
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="faust/python log level")
    ] = LogLevel.warning,
    loglevel: Annotated[
        LogLevel | None, typer.Option(case_sensitive=False, hidden=True, help="deprecated spelling of --log-level")
    ] = None,
) -> None:
    """Run a stream worker: consume events, items and users; keep Redis state fresh. Its port serves Prometheus
    /metrics and /healthz (503 when an agent stopped or stalled: restart the process)."""
    import faust
    from uvicorn.config import LOG_LEVELS

    from recstream.streams.app import create_app
    from recstream.streams.liveness import Liveness, serve

    settings = _settings(worker_metrics_port=("--metrics-port", metrics_port))
    if loglevel is not None:
        typer.secho("worker --loglevel is deprecated: use --log-level", fg="yellow", err=True)
    liveness = Liveness(settings.worker.stall_s)
    port = settings.worker.metrics_port
    address = f"{settings.worker.metrics_host}:{port}"
    try:  # first: a port in use is a bad option, said before any service is reached
        server = serve(port, liveness, addr=settings.worker.metrics_host)
    except OSError as exc:
        given = "--metrics-port" if metrics_port is not None else "RECSTREAM_WORKER_METRICS_PORT"
        typer.secho(f"cannot serve metrics on {address} ({given}): {exc.strerror or exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(_reach(settings, kafka=True, redis=True))
        level = LOG_LEVELS[(loglevel or log_level).value]  # a number: faust knows no "trace"
        faust.Worker(create_app(settings, liveness), loglevel=level).execute_from_commandline()
    finally:
        server.shutdown()
        server.server_close()


class Engine(StrEnum):
    """Where ``train`` fits the model."""

    implicit = "implicit"
    spark = "spark"


@app.command()
def train(
    file: Annotated[Path | None, _existing("JSONL file instead of the Kafka log")] = None,
    movielens: Annotated[Path | None, _existing("MovieLens 100K folder instead of the Kafka log", folder=True)] = None,
    factors: Annotated[int, typer.Option(help="latent factors k")] = 64,
    iterations: Annotated[int, typer.Option(help="ALS sweeps")] = 15,
    regularization: Annotated[
        float | None, typer.Option(help="λ (implicit does not scale it by the data); default: ALSConfig's")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="confidence c = 1 + α·r; default: ALSConfig's")] = None,
    anchor: Annotated[
        float | None, typer.Option(help="μ: the online step's pull toward a user's batch vector; default: ALSConfig's")
    ] = None,
    holdout: Annotated[
        float, typer.Option(callback=_share, help="share of the log held out for offline HR@10, in [0, 1) (0: skip)")
    ] = 0.1,
    engine: Annotated[
        Engine, typer.Option(help="implicit: this process; spark: pyspark's ALS on RECSTREAM_SPARK_MASTER")
    ] = Engine.implicit,
) -> None:
    """Train iALS on the events log (from the earliest offset) and publish a new model version."""
    from rich.table import Table

    from recstream.jobs import spark_training, training
    from recstream.models.als import ALSConfig, FitError
    from recstream.models.artifacts import ArtifactError, check_writable

    settings = _settings()
    try:
        chosen = {"regularization": regularization, "alpha": alpha, "anchor": anchor}  # None: bench/validate.py's
        cfg = ALSConfig(factors=factors, iterations=iterations, **{k: v for k, v in chosen.items() if v is not None})
    except ValidationError as exc:  # one line naming each option (pydantic's report spans four, and a link)
        typer.secho("; ".join(f"--{error['loc'][0]}: {error['msg']}" for error in exc.errors()), fg="red", err=True)
        raise typer.Exit(2) from None
    try:  # before the log is read: a file there failed only once the model was trained
        check_writable(settings.model.dir)
    except ArtifactError as exc:
        _fail(f"cannot write models (RECSTREAM_MODEL_DIR): {exc}")
    if engine is Engine.spark:
        try:
            spark_training.require_pyspark()
        except spark_training.SparkMissing as exc:
            _fail(str(exc))
    from_kafka = file is None and movielens is None
    if not from_kafka:
        _one_source(file=file, movielens=movielens)
    feedback = settings.model.feedback_types
    records = None if from_kafka else _records(file, movielens, None, 0, feedback)  # a bad folder: before services
    asyncio.run(_reach(settings, kafka=from_kafka, redis=True))  # the model is published to Redis after training
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("reading the log", total=None)
        advance = partial(progress.advance, task)
        if records is None:
            log = asyncio.run(training.collect_log(settings, advance))
        else:
            log = training.collect(records, advance, feedback)
        progress.update(task, description=f"training ({engine.value})")
        try:
            if engine is Engine.spark:
                artifacts, metrics = spark_training.train(log, cfg, settings, holdout=holdout)
            else:
                artifacts, metrics = training.train(log, cfg, holdout=holdout)
        except (training.EmptyLog, FitError) as exc:
            _skipped(log.rejections, log.rejected)
            _fail(str(exc))
        progress.update(task, description="publishing")
        version = asyncio.run(training.publish(settings, artifacts))
    _skipped(log.rejections, log.rejected)
    table = Table(title=f"model {version}")
    for name in ("users", "items", "nnz", "events", "seconds", "offline_hr10"):
        value = metrics[name]
        table.add_row(name, "n/a" if value is None else f"{value:,.4g}" if isinstance(value, float) else f"{value:,}")
    table.add_row("repeated event ids", f"{log.repeated:,}")  # left out of events: each id is counted once
    table.add_row("wall seconds", f"{time.perf_counter() - started:.1f}")
    Console().print(table)


@app.command()
def rebuild() -> None:
    """Recompute every derived Redis key from the Kafka log and the current model (workers must be stopped)."""
    from recstream.jobs import rebuild as rebuild_module

    settings = _settings()
    with _progress() as progress:
        tasks: dict[str, object] = {}

        def advance(topic: str, n: int, total: int) -> None:
            if topic not in tasks:
                tasks[topic] = progress.add_task(f"replaying {topic}", total=total)
            progress.advance(tasks[topic], n)  # type: ignore[arg-type]

        try:
            report = asyncio.run(rebuild_module.rebuild(settings, advance))
        except rebuild_module.RebuildError as exc:
            _fail(str(exc))  # it names paths: no markup
    per_topic = ", ".join(f"{topic} {n:,}" for topic, n in report.messages.items())
    console.print(
        f"deleted {report.deleted_keys:,} derived keys; model {report.model_version or 'none'}; replayed "
        f"{sum(report.messages.values()):,} messages ({per_topic}) holding {report.events:,} views and clicks, "
        f"{report.invalid:,} invalid records skipped; {report.seconds:.1f} s. Workers resume after these offsets."
    )


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help=f"interface to bind (default: {_default(ReaderSettings, 'host')})")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help=f"port (default: {_default(ReaderSettings, 'port')})")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help=f"processes sharing the port (default: {_default(ReaderSettings, 'workers')})")
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(case_sensitive=False, help="uvicorn log level")] = LogLevel.warning,
) -> None:
    """Run the reader: blended feeds from Redis over HTTP (uvloop + httptools, one or more processes)."""
    from recstream.shell import reader

    settings = _settings(
        reader_host=("--host", host), reader_port=("--port", port), reader_workers=("--workers", workers)
    )
    asyncio.run(_reach(settings, kafka=False, redis=True))  # writes answer 503 without Kafka; reads need Redis
    reader.serve(
        host=settings.reader.host,
        port=settings.reader.port,
        workers=settings.reader.workers,
        log_level=log_level.value,
    )


@app.command()
def demo(
    seconds: Annotated[float | None, typer.Option(help="stop after this long (default: until Ctrl-C)")] = None,
    feeds_per_s: Annotated[float, typer.Option(help="feed requests of the simulated users per second")] = 20.0,
    concurrency: Annotated[int, typer.Option(help="feed requests in flight at most")] = 16,
    new_items_per_min: Annotated[float, typer.Option(help="new items arriving per minute")] = 30.0,
    half_life_min: Annotated[float, typer.Option(help="item appeal halves every this many minutes (0: off)")] = 2.0,
    history_min: Annotated[float, typer.Option(help="minutes of the world's history before the first model")] = 10.0,
    history_rate: Annotated[float, typer.Option(help="views per second in that history")] = 20.0,
    seed: Annotated[int, typer.Option(help="world and simulation seed")] = 7,
    movielens: Annotated[
        Path | None, _existing("MovieLens 100K folder: its users' tastes and items as the hidden world", folder=True)
    ] = None,
) -> None:
    """Run everything here: Kafka, Redis, a trained model, a worker, the reader, simulated users in a closed loop."""
    from recstream.shell import demo as demo_module
    from recstream.sim.simulator import FRESH_WORLD, SimConfig, pool_age_for
    from recstream.sim.world import WorldConfig

    settings = _settings()
    try:
        sim = SimConfig(seed=seed, feeds_per_s=feeds_per_s, concurrency=concurrency)
        changes = {"seed": seed, "new_items_per_hour": new_items_per_min * 60, "appeal_half_life_h": half_life_min / 60}
        world = WorldConfig.model_validate({**FRESH_WORLD.model_dump(), **changes})
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if "graduate_age_s" not in settings.pool.model_fields_set:  # the pool on the world's clock
        settings = settings.replace(pool_graduate_age_s=pool_age_for(world))
    try:
        result = demo_module.run(settings, seconds, world, history_min * 60, history_rate, sim, movielens)
    except (infra.InfraError, ValueError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if result is None:
        return
    summary = result.summary()
    console.print(
        f"demo ran {summary['seconds']:.0f} s: {summary['feeds']:,} feeds ({summary['failed']} failed), "
        f"{result.events_posted:,} events, CTR {summary['ctr']:.2%} "
        + " ".join(f"{s} {c:.2%}" for s, c in summary["ctr_by_source"].items())
        + f"; regret per feed {summary['regret_per_feed']:.3f}; {summary['items_published']:,} new items; "
        f"{summary['top_new_discovered']}/{summary['top_new_items']} top-decile new items entered the popular top 20"
    )


@experiment_app.command("report")
def experiment_report(
    name: Annotated[str | None, typer.Argument(help="the experiment (default: the configured one)")] = None,
    file: Annotated[Path | None, _existing("JSONL file of events instead of the Kafka log")] = None,
    control: Annotated[str | None, typer.Option(help="baseline variant (default: the configured control)")] = None,
    alpha: Annotated[float, typer.Option(min=0.0001, max=0.5, help="significance level (Bonferroni-split)")] = 0.05,
) -> None:
    """CTR per variant with 95% intervals, lift and a two-proportion z-test against the control.

    Counts every event whose ``variant`` names the experiment, from the earliest offset of the events
    topic (exact, whatever the workers did) or from a file.
    """
    from recstream.jobs import experiment_report as report
    from recstream.jobs.experiment_stats import compare

    settings = _settings()
    configured = settings.experiment
    name = name or (configured.name if configured else None)
    if name is None:
        console.print("[red]no experiment is configured (RECSTREAM_EXPERIMENT): name one[/red]")
        raise typer.Exit(2)
    if file is not None:
        feedback, refused = settings.model.feedback_types, []
        counted = report.count_variants(report.file_events(file, feedback, refused), name, feedback.ctr_column)
        _skipped(refused, len(refused))  # not counted: the report says so
    else:
        counted = asyncio.run(report.count_log(settings, name))
    counts = counted.totals
    if len(counts) < 2:
        found = f"experiment {escape(name)}: events of {len(counts)} variant(s) found, nothing to compare"
        console.print(f"[red]{found}[/red]")  # the name and the control as typed: '[/x]' is no markup
        raise typer.Exit(1)
    this = configured if configured and configured.name == name else None
    baseline = control or (this.control_name if this else min(counts))
    if baseline not in counts:
        console.print(f"[red]control {escape(repr(baseline))} has no events; variants seen: {', '.join(counts)}[/red]")
        raise typer.Exit(2)
    weights = {v.name: v.weight for v in this.variants} if this else None  # the sample ratio's expected split
    comparison = compare(counts, baseline, alpha, counted.users)
    Console().print(report.report_table(name, comparison, counted, weights))


@app.command("settings")
def settings_(
    changed: Annotated[bool, typer.Option("--changed", help="only the settings not at their default")] = False,
) -> None:
    """Every RECSTREAM_ variable: its value here (from the environment; secrets hidden), its default, what it does."""
    from rich.table import Table

    from recstream.contracts.settings import reference

    table = Table(title="recstream settings", show_lines=True, expand=True)
    table.add_column("variable", no_wrap=True)
    for name in ("value", "default"):
        table.add_column(name, ratio=1, overflow="fold")  # a JSON value has no spaces to wrap at
    table.add_column("what", ratio=3)
    for row in reference(_settings()):
        if not changed or row[1] != row[2]:
            table.add_row(*map(escape, row))
    Console().print(table)


if __name__ == "__main__":
    app()
