"""``recstream demo``: the whole system on this machine, in a closed loop with simulated users, until Ctrl-C.

Brings up Kafka and Redis (if not running), publishes the world's recent history, trains a first
model on it, starts a worker and the reader as child processes, then runs the closed-loop
simulator (recstream/sim/simulator.py) against the reader: simulated users fetch feeds over HTTP,
view and click with their true probabilities and report it through ``POST /v1/events``; new items
keep arriving. A panel shows what the system does. On exit (``--seconds`` or Ctrl-C) it stops
exactly the processes it started, by pid (and the services, if it started them), and prints a
summary. bench/policies.py runs the same pieces once per policy and seed.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.request import urlopen

from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from recstream.contracts.events import Event, ItemEvent, UserEvent, validate
from recstream.contracts.settings import TOPIC_STEMS, Settings
from recstream.eventlog.producer import EventProducer
from recstream.models.als import ALSConfig
from recstream.models.artifacts import ModelArtifacts
from recstream.shell import infra
from recstream.sim.simulator import SimConfig, SimResult, Simulator
from recstream.sim.world import World, WorldConfig, movielens_world
from recstream.store.connection import connect, unlink_scanned

console = Console(stderr=True)
READY_TIMEOUT_S = 120.0
HISTORY_BATCH = 1_000
FRESHNESS = "recstream_worker_freshness_seconds"
STAMP = "%Y%m%d%H%M%S%f"
"""A run's stamp in its namespace (:func:`run_namespace`): fixed width, so that an earlier run's sorts first; to the
microsecond, so that two demos started in one second do not share one (a stamp to the second once did)."""
STAMP_LENGTHS = (14, 20)
"""The digits of a demo's stamps: :data:`STAMP`'s, and the stamp to the second of the demos before 2026-12-06, whose
topics and keys a run removes too. As strings, stamps of both lengths sort by time (a prefix sorts first)."""


@dataclass
class History:
    """What was published before the live run: the simulator continues from it."""

    events: int = 0
    items: int = 0
    users: set[int] = field(default_factory=set)
    seen: dict[int, set[int]] = field(default_factory=dict)


@dataclass
class System:
    """The child processes of one run and where they answer."""

    reader_url: str
    worker_metrics: str
    pids: dict[str, int]


async def publish_history(settings: Settings, world: World, until_ms: int, rate_per_s: float) -> History:
    """The world's browsing stream (``rate_per_s`` views a second) from its start up to ``until_ms``,
    as fast as the broker takes it."""
    history = History()
    pending: list[Event] = []
    async with EventProducer(settings) as producer:
        for obj in world.events(rate_per_s=rate_per_s):
            if obj["ts"] >= until_ms:
                break
            kind = obj.pop("kind", "event")
            value = validate(obj, kind, until_ms)
            if isinstance(value, Event):
                pending.append(value)
                user = int(value.user_id[1:])
                history.seen.setdefault(user, set()).add(world.item_index(value.item_id))
                if len(pending) >= HISTORY_BATCH:
                    await producer.send_events(pending)
                    history.events += len(pending)
                    pending = []
            elif isinstance(value, ItemEvent):
                await producer.send_item(value)
                history.items += 1
            elif isinstance(value, UserEvent):
                await producer.send_user(value)
                history.users.add(int(value.user_id[1:]))
        await producer.send_events(pending)
        history.events += len(pending)
        await producer.flush()
    return history


def with_api_key(settings: Settings) -> Settings:
    """The settings with a fresh random API key unless one is set: the reader refuses writes without one, and
    the simulated users write through it (the reader child gets the key in its environment, the simulator
    sends it)."""
    if settings.reader.api_key is not None:
        return settings
    return settings.replace(api_key=SecretStr(secrets.token_urlsafe(24)))


NAMESPACE_FIELDS = {"kafka": tuple(TOPIC_STEMS), "redis": ("prefix",)}
"""Where a run's state lives: topics and a Redis prefix."""


def run_namespace(settings: Settings, stamp: str) -> tuple[Settings, str | None]:
    """The settings on topics and a Redis prefix of this run's own (``events-demo-<stamp>``, ``demo<stamp>``), and a
    line saying so: a run on the last run's topics re-published the same world's items and users (the same seed, the
    same ids) into a log that held them, trained on both runs' events, and found every item already known, so the
    new-item pool stayed empty and the explore and fresh slots never served. Unchanged when the user set any of them.

    >>> from recstream.contracts.settings import load_settings
    >>> own, line = run_namespace(load_settings(), "20261206")
    >>> own.kafka.events_topic, own.redis.prefix, run_namespace(load_settings(events_topic="mine"), "x")[1]
    ('events-demo-20261206', 'demo20261206', None)
    """
    if any(name in getattr(settings, section).model_fields_set for section, names in NAMESPACE_FIELDS.items()
           for name in names):  # fmt: skip
        return settings, None
    own = settings.on_topics(f"demo-{stamp}", redis_prefix=f"demo{stamp}")
    line = (
        f"this run's state: topics {own.kafka.events_topic}, {own.kafka.items_topic}, …, Redis prefix "
        f"{own.redis.prefix} (every run starts empty; the next demo run removes them)"
    )
    return own, line


@contextmanager
def recorded_run(settings: Settings) -> Iterator[None]:
    """This demo's pid recorded in the run folder's logs (``demo.<pid>/pid``, beside its worker's and reader's
    records, which ``recstream infra down`` stops: not this one) for the block, so that another demo on the same
    services sees it running (:func:`remove_earlier_runs`)."""
    record = infra.Service(f"demo.{os.getpid()}", infra.logs_dir(settings) / f"demo.{os.getpid()}")
    infra.record_pid(record, os.getpid())
    try:
        yield
    finally:
        record.forget()


def others_running(settings: Settings) -> list[int]:
    """The pids of the demos, workers and readers recorded alive in the run folder's logs, this process's aside."""
    pids = (service.pid() for service in infra.recorded(infra.logs_dir(settings), "*/pid"))
    return [pid for pid in pids if pid not in (None, os.getpid())]


def remove_earlier_runs(settings: Settings, stamp: str) -> str | None:
    """Delete the topics and Redis keys earlier demo runs left on these services (:func:`run_namespace`: each run has
    its own); returns a line saying what it removed, or why it removed nothing (None: there was nothing). For a run on
    the namespace it chose itself, ``stamp``'s (``settings`` are that run's), with the services up.

    Only names of the demo's own per-run naming are candidates (topics ``events-demo-<stamp>``, …, keys under
    ``demo<stamp>:``; never ``events``, ``rs:`` or a namespace the user set, unless named so), and of those only runs
    stamped before this one. And nothing at all while a process of another demo, or a worker or reader one left, is
    recorded alive in the run folder: every demo on these services runs from this run folder (``infra.running``
    refuses services another folder started), and each records itself before it picks its stamp
    (:func:`recorded_run`), so a demo this one cannot see yet has a later stamp, which is kept.
    Why not "keep the newest earlier run": with two demos running, a third would delete the older one's topics and
    keys under its worker and reader. The cost: a demo started beside a running one removes nothing; the next one
    alone removes it all. Keys go by SCAN and UNLINK in batches (never KEYS or FLUSHDB: other keys share the
    database). A failure is a warning line: the run goes on, on its own namespace.
    """
    if others := others_running(settings):
        return (f"earlier demo runs' topics and Redis keys kept: another demo's process (pid {others[0]}) runs from "
                f"{infra.logs_dir(settings)}")  # fmt: skip
    try:
        runs, topics, keys = asyncio.run(_remove_earlier(settings, stamp))
    except Exception as exc:  # Kafka's, Redis's or the system's: not worth ending the demo for
        return f"[yellow]warning: could not remove earlier demo runs' topics and Redis keys: {exc}[/yellow]"
    if not runs:
        return None
    return f"removed {len(runs)} earlier demo run{'s' * (len(runs) != 1)}: {topics} topics, {keys:,} Redis keys"


async def _remove_earlier(settings: Settings, stamp: str) -> tuple[set[str], int, int]:
    """:func:`remove_earlier_runs`' deletions: the stamps of the runs it removed from, the topics and the keys."""
    any_stamp = "(" + "|".join(rf"\d{{{n}}}" for n in STAMP_LENGTHS) + ")"  # another run's stamp in this one's place
    names = [re.compile(re.escape(getattr(settings.kafka, name)).replace(stamp, any_stamp))
             for name in NAMESPACE_FIELDS["kafka"]]  # fmt: skip

    def earlier(topic: str) -> str | None:
        return next((m[1] for name in names if (m := name.fullmatch(topic)) and m[1] < stamp), None)

    topics = await infra.delete_topics(settings, lambda topic: earlier(topic) is not None)
    runs = {run for topic in topics if (run := earlier(topic))}
    prefix = re.compile(re.escape(settings.redis.prefix).replace(stamp, any_stamp) + ":")
    glob = settings.redis.prefix.replace(stamp, "[0-9]" * min(STAMP_LENGTHS) + "*") + ":*"  # run_of picks

    def run_of(key: str) -> str | None:
        return m[1] if (m := prefix.match(key)) and m[1] < stamp else None

    redis = connect(settings)
    try:
        keys = await unlink_scanned(redis, glob, lambda key: run_of(key) is not None)
    finally:
        await redis.aclose()
    runs.update(run_of(key) for key in keys)
    return runs, len(topics), len(keys)


def train_first_model(settings: Settings) -> tuple[ModelArtifacts, str]:
    """iALS on everything in the log; returns the artifacts (publish them with
    ``recstream.jobs.training.publish``) and a line describing the model."""
    from recstream.jobs import training

    log = asyncio.run(training.collect_log(settings))
    artifacts, metrics = training.train(log, ALSConfig(), holdout=0.1)
    hr = metrics["offline_hr10"] or 0.0
    return artifacts, f"{metrics['users']:,} users, {metrics['items']:,} items, offline HR@10 {hr:.3f}"


@contextmanager
def system(settings: Settings, log_dir: Path, applied_events: int = 0) -> Iterator[System]:
    """A worker and the reader as children; yields once the reader is ready and the worker has applied
    ``applied_events`` events (the history), so the first simulated feed sees warm users."""
    with ExitStack() as stack:
        worker = stack.enter_context(
            infra.Child("worker", settings, log_dir / "worker.log", port=settings.worker.metrics_port)
        )
        reader = stack.enter_context(infra.Child("serve", settings, log_dir / "reader.log", port=settings.reader.port))
        reader_url = f"http://{settings.reader.host}:{reader.port}"
        worker_metrics = f"{worker.url}/metrics"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (_status(f"{reader_url}/readyz") == 200 and applied(worker_metrics, settings) >= applied_events):
            worker.check()
            reader.check()
            if time.monotonic() > deadline:
                raise infra.InfraError(f"worker and reader not ready in {READY_TIMEOUT_S:.0f} s; see {log_dir}")
            time.sleep(0.5)
        yield System(reader_url, worker_metrics, {"worker": worker.proc.pid, "reader": reader.proc.pid})


@dataclass(frozen=True)
class Port:
    """A port the demo binds (:func:`own_ports`): whose it is, the variable that sets it, how to move it."""

    name: str
    variable: str
    port: int
    span: int
    """ports bound from ``port`` on (Kafka: its broker and its controller)"""
    default: bool
    """the user did not set it (whatever its value): the demo may move it"""
    owner: infra.Service | None
    """the service of this project's own that may hold it already and is then used (Redis, Kafka), or None"""
    moved: Callable[[int], dict[str, object]]
    """the settings change that puts it on another port"""

    def taken(self) -> bool:
        """Held by a process the demo would not use: any, or one that is not ``owner``'s recorded process."""
        ports = range(self.port, self.port + self.span)
        if self.owner is None:
            return any(map(infra.port_open, ports))
        return any(infra.taken_by_another(self.owner, port) for port in ports)


def demo_ports(settings: Settings) -> list[Port]:
    """Every port the demo's processes bind, besides Prometheus's (which moves off 9090 by itself). A port is the
    default's when the user did not set it (its section's ``model_fields_set``), whatever its value: one set to the
    default's value, ``RECSTREAM_READER_PORT=8080``, is set explicitly and kept."""
    return [
        Port("Redis", "RECSTREAM_REDIS_URL", settings.redis.port, 1, "url" not in settings.redis.model_fields_set,
             infra.redis_service(settings), lambda port: {"redis_url": f"redis://127.0.0.1:{port}/0"}),
        Port("Kafka", "RECSTREAM_KAFKA_BOOTSTRAP", settings.kafka.port, 2,
             "bootstrap" not in settings.kafka.model_fields_set, infra.kafka_service(settings),
             lambda port: {"kafka_bootstrap": f"127.0.0.1:{port}"}),
        Port("reader", "RECSTREAM_READER_PORT", settings.reader.port, 1, "port" not in settings.reader.model_fields_set,
             None, lambda port: {"reader_port": port}),
        Port("worker /metrics", "RECSTREAM_WORKER_METRICS_PORT", settings.worker.metrics_port, 1,
             "metrics_port" not in settings.worker.model_fields_set, None, lambda port: {"worker_metrics_port": port}),
    ]  # fmt: skip


def own_ports(settings: Settings) -> tuple[Settings, list[str]]:
    """The settings with each of the demo's ports (:func:`demo_ports`) whose default is held by a process the demo
    would not use moved to a free loopback port (Debian's redis-server package runs a Redis on 6379; another
    program may serve on 8080), and a line saying so for each. A port set explicitly is kept: a taken one is an
    :class:`~recstream.shell.infra.InfraError` naming it and its variable, before anything starts."""
    changes: dict[str, object] = {}
    lines = []
    for port in demo_ports(settings):
        if not port.taken():
            continue
        if not port.default:
            raise infra.InfraError(
                f"port {port.port} ({port.variable}: the demo's {port.name}) is taken by a process the demo did not "
                f"start: set {port.variable} to a free port, or unset it and the demo picks one"
            )
        new = infra.free_port(span=port.span)
        changes |= port.moved(new)
        lines.append(f"port {port.port} is taken by a process the demo did not start: its own {port.name} runs on "
                     f"port {new}")  # fmt: skip
    return settings.replace(**changes), lines


def prometheus(settings: Settings, stack: ExitStack) -> tuple[str, str | None]:
    """Prometheus scraping the worker and the reader (monitoring/prometheus.yml's jobs and rules), stopped with the
    demo; on port 9090 unless that is taken. Returns a line saying so and its pages (:func:`prometheus_pages`); without
    the binary the demo goes on, says so, and has no pages."""
    infra.stop(infra.prometheus_service(settings))  # one an earlier demo left would hold 9090 against this one
    port = infra.PROMETHEUS_PORT if not infra.port_open(infra.PROMETHEUS_PORT) else infra.free_port()
    w, r = settings.worker, settings.reader
    targets = {"recstream-worker": f"{w.metrics_host}:{w.metrics_port}", "recstream-reader": f"{r.host}:{r.port}"}
    try:
        started = infra.prometheus_up(settings, targets, port)
    except infra.InfraError as exc:
        return f"no Prometheus: {exc}", None
    stack.callback(infra.stop, infra.prometheus_service(settings))
    pages = prometheus_pages(f"http://127.0.0.1:{port}")
    return f"{started}: {pages}", pages


def prometheus_pages(url: str) -> str:
    """The targets and alerts pages of the Prometheus at ``url``, where its build serves them: ``/targets`` (the
    project's Docker image, newer releases), else the classic UI's ``/classic/targets`` (Debian's 2.42.0+ds, which
    ``./dev`` installs, has only that one: its ``/targets`` is 404)."""
    base = url if _status(f"{url}/targets") == 200 or _status(f"{url}/classic/targets") != 200 else f"{url}/classic"
    return f"targets {base}/targets · alerts {base}/alerts"


def applied(worker_metrics: str, settings: Settings) -> float:
    """Events the worker has applied so far (its counter; 0 while it does not answer)."""
    prefix = f'recstream_worker_events_total{{topic="{settings.kafka.events_topic}"'
    return metric_sum(_scrape(worker_metrics), prefix)


def _scrape(url: str) -> str:
    try:
        with urlopen(url, timeout=1) as response:
            return response.read().decode()
    except OSError:
        return ""


def _status(url: str) -> int:
    try:
        with urlopen(url, timeout=1) as response:
            return response.status
    except OSError:
        return 0


def metric_sum(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (a name, or a name and labels) in Prometheus text."""
    lines = text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix) and "_bucket" not in line)


def _buckets(text: str) -> dict[float, float]:
    return {
        float(line.split('le="', 1)[1].split('"', 1)[0]): float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{FRESHNESS}_bucket{{")
    }


def window_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound of the bucket holding the p99 of the observations between two scrapes (None: none).

    >>> window_p99({0.1: 5, 1.0: 5, float("inf"): 5}, {0.1: 100, 1.0: 105, float("inf"): 105})
    1.0
    """
    delta = sorted((le, n - before.get(le, 0.0)) for le, n in after.items())
    if not delta or delta[-1][1] <= 0:
        return None
    return next(le for le, n in delta if n >= 0.99 * delta[-1][1])


@dataclass
class Panel:
    """The live view: simulator counts plus the worker's and reader's own metrics, over the last interval."""

    settings: Settings
    system: System
    prometheus: str | None
    """its pages (:func:`prometheus_pages`); None: the demo runs none"""
    last: tuple[float, int, int] = field(default_factory=lambda: (time.monotonic(), 0, 0))
    freshness: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.freshness = _buckets(_scrape(self.system.worker_metrics))  # the history's are not the loop's

    def render(self, result: SimResult) -> Table:
        now = time.monotonic()
        worker = _scrape(self.system.worker_metrics)
        reader = _scrape(f"{self.system.reader_url}/metrics")
        t0, feeds0, events0 = self.last
        dt = max(now - t0, 1e-9)
        feeds_rate, events_rate = (result.feeds - feeds0) / dt, (result.events_posted - events0) / dt
        self.last = (now, result.feeds, result.events_posted)
        buckets = _buckets(worker)
        p99 = window_p99(self.freshness, buckets)
        self.freshness = buckets
        url = self.system.reader_url

        def ctr(source: str) -> str:
            counts = result.by_source.get(source)
            return f"{counts.ctr:.1%} of {counts.impressions:,}" if counts else "–"

        table = Table(title="recstream demo — closed loop; Ctrl-C stops everything it started", show_header=False)
        table.add_row("feeds / events", f"{result.feeds:,} feeds ({feeds_rate:,.1f}/s) · "
                      f"{result.events_posted:,} events ({events_rate:,.0f}/s) · {result.failed} failed")  # fmt: skip
        table.add_row("events applied (worker)", f"{applied(self.system.worker_metrics, self.settings):,.0f}")
        table.add_row("freshness p99 (last interval)", "–" if p99 is None else f"≤ {p99 * 1000:,.0f} ms")
        table.add_row("online CTR", f"overall {result.ctr:.2%} · explore {ctr('explore')} · personal {ctr('personal')}"
                      f" · popular {ctr('popular')} · fresh {ctr('fresh')}")  # fmt: skip
        table.add_row("regret per feed (vs oracle)", f"{result.regret_per_feed:.3f}")
        table.add_row("new-item pool", f"{metric_sum(reader, 'recstream_reader_pool_items'):,.0f} items · "
                      f"{metric_sum(worker, 'recstream_worker_pool_graduations_total'):,.0f} graduated · "
                      f"{result.items_published:,} new items published")  # fmt: skip
        table.add_row("reader", f"{url}  ·  docs {url}/docs  ·  metrics {url}/metrics  ·  explorer {url}/explore")
        table.add_row("worker metrics", self.system.worker_metrics)
        table.add_row("prometheus", self.prometheus or "none (see above)")
        return table


async def _live(sim: Simulator, panel: Panel, seconds: float | None) -> SimResult:
    run = asyncio.create_task(sim.run(seconds=seconds if seconds is not None else float("inf")))
    with Live(console=console, refresh_per_second=1) as live:
        while not run.done():
            live.update(await asyncio.to_thread(panel.render, sim.result))
            await asyncio.wait({run}, timeout=1.0)
    return run.result()


def run(settings: Settings, seconds: float | None, world_config: WorldConfig, history_s: float, history_rate: float,
        sim: SimConfig, movielens: Path | None = None) -> SimResult | None:  # fmt: skip
    """Run the demo; returns the simulated users' result (None when stopped before the loop started).

    With ``movielens`` the hidden world is MovieLens 100K's users and items (world.movielens_world)."""
    from recstream.jobs import training

    simulator: Simulator | None = None
    own_key = settings.reader.api_key is None
    settings = with_api_key(settings)
    if not settings.worker.metrics_port:  # 0, "any": chosen here, so that Prometheus scrapes the port the worker has
        settings = settings.replace(worker_metrics_port=infra.free_port())
    settings, moved = own_ports(settings)
    with ExitStack() as stack:
        stack.enter_context(infra.sigterm_interrupts())
        stack.enter_context(recorded_run(settings))  # before the stamp (remove_earlier_runs says why)
        stamp = datetime.now().strftime(STAMP)
        settings, namespace = run_namespace(settings, stamp)
        for line in [*moved, *([namespace] if namespace else [])]:
            console.print(line)
        try:
            for line in stack.enter_context(infra.running(settings)):
                console.print(line)
            if namespace and (removed := remove_earlier_runs(settings, stamp)):
                console.print(removed)
            now_ms = int(time.time() * 1000)
            config = world_config.model_copy(update={"start_ms": now_ms - int(history_s * 1000)})
            world = World(config) if movielens is None else movielens_world(movielens, config)
            console.print(f"publishing the world's last {history_s / 60:.0f} minutes of history ...")
            history = asyncio.run(publish_history(settings, world, now_ms, history_rate))
            console.print(f"published {history.events:,} events, {history.items:,} items; training the first model")
            artifacts, about = train_first_model(settings)
            console.print(f"model {asyncio.run(training.publish(settings, artifacts))}: {about}")
            running = stack.enter_context(system(settings, infra.logs_dir(settings), history.events))
            for name, pid in running.pids.items():
                console.print(f"started {name} pid {pid}")
            started, pages = prometheus(settings, stack)
            console.print(started)
            url = running.reader_url
            console.print(f"reader {url} · docs {url}/docs · metrics {url}/metrics · explorer {url}/explore")
            if own_key:  # writes need this run's key: the explorer's "API key" field, the README's curl ($KEY)
                key = settings.reader.api_key.get_secret_value()  # type: ignore[union-attr]
                console.print(f"API key of this run (writes): {key}\nexport KEY={key}", soft_wrap=True)
            simulator = Simulator(world, url, settings, sim, announced_items=history.items,
                                  announced_users=history.users, history=history.seen)  # fmt: skip
            result = asyncio.run(_live(simulator, Panel(settings, running, pages), seconds))
            done = applied(running.worker_metrics, settings)
            console.print(f"events applied by the worker: {done:,.0f} ({history.events:,} of the history, "
                          f"{result.events_posted:,} posted by the simulated users)")  # fmt: skip
            return result
        except KeyboardInterrupt:
            console.print("stopped (Ctrl-C, SIGTERM or SIGHUP); stopping everything the demo started ...")
            return simulator.result if simulator else None
