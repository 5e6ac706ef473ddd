"""``recstream demo``: the whole system on this machine, with simulated traffic, until Ctrl-C.

Brings up Kafka and Redis (if not running), publishes the synthetic world's recent history,
trains a first model on it, starts a worker and the reader as child processes, then keeps
publishing the world's live events at a steady rate while a panel shows what the system
does. On exit it stops exactly the processes it started (and the services, if it started
them) and prints a summary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

from rich.console import Console
from rich.live import Live
from rich.table import Table

from models.als import ALSConfig
from recstream import infra
from recstream.events import Event, ItemEvent, UserEvent, validate
from recstream.producer import EventProducer
from recstream.settings import Settings
from recstream.world import World, WorldConfig

console = Console(stderr=True)


@dataclass
class DemoStats:
    sent: int = 0
    clicks: int = 0
    started: float = field(default_factory=time.monotonic)
    recent: list[tuple[float, int]] = field(default_factory=list)

    def rate(self) -> float:
        now = time.monotonic()
        self.recent = [(t, n) for t, n in self.recent if now - t < 5] + [(now, self.sent)]
        (t0, n0), (t1, n1) = self.recent[0], self.recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


@contextmanager
def child(
    argv: list[str], settings: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """A child process that is stopped (SIGTERM, then SIGKILL) when the block ends."""
    env = {**os.environ, **settings.to_env(), "OPENBLAS_NUM_THREADS": "1", **(extra_env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _records(world: World, rate: float) -> Iterator[tuple[str, object]]:
    for obj in world.events(rate_per_s=rate):
        kind = obj.pop("kind", "event")
        yield kind, validate(obj, kind, 2**53)


async def _publish_history(
    settings: Settings, records: Iterator[tuple[str, object]], until_ms: int
) -> tuple[int, tuple]:
    """Everything the world did before ``until_ms``, as fast as the broker takes it; returns the next record."""
    n = 0
    async with EventProducer(settings) as producer:
        for kind, value in records:
            if value.ts >= until_ms:  # type: ignore[attr-defined]
                return n, (kind, value)
            n += await _send(producer, kind, value)
    return n, ("", None)


async def _send(producer: EventProducer, kind: str, value: object) -> int:
    if isinstance(value, Event):
        await producer.send_events([value])
        return 1
    if isinstance(value, ItemEvent):
        await producer.send_item(value)
    elif isinstance(value, UserEvent):
        await producer.send_user(value)
    return 0


def _scrape(url: str) -> str:
    try:
        with urlopen(url, timeout=1) as response:
            return response.read().decode()
    except OSError:
        return ""


def _panel(stats: DemoStats, settings: Settings, worker_metrics: str, reader_url: str) -> Table:
    text = _scrape(worker_metrics)
    counter = f'recstream_worker_events_total{{topic="{settings.events_topic}"'
    applied = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(counter))
    table = Table(title="recstream demo — Ctrl-C stops everything it started", show_header=False)
    table.add_row("events offered", f"{stats.sent:,}  ({stats.rate():,.0f}/s)")
    table.add_row("events applied by the worker", f"{applied:,.0f}")
    table.add_row(
        "clicks (simulated users)", f"{stats.clicks:,}  (CTR {stats.clicks / max(stats.sent - stats.clicks, 1):.1%})"
    )
    table.add_row("reader", f"{reader_url}  ·  docs {reader_url}/docs  ·  metrics {reader_url}/metrics")
    table.add_row("worker metrics", worker_metrics)
    return table


def run(settings: Settings, seconds: float | None, rate: float, history_events: int, seed: int) -> DemoStats:
    """Run the demo; returns what it offered."""
    from streams import training

    run_dir = settings.run_dir.resolve()
    worker_metrics = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    reader_url = f"http://{settings.reader_host}:{settings.reader_port}"
    stats = DemoStats()
    with ExitStack() as stack:
        for line in stack.enter_context(infra.running(settings)):
            console.print(line)
        now_ms = int(time.time() * 1000)
        world = World(WorldConfig(seed=seed, start_ms=now_ms - int(history_events / rate * 1000)))
        records = _records(world, rate)
        console.print(f"publishing ~{history_events:,} events of the world's history ...")
        n, pending = asyncio.run(_publish_history(settings, records, now_ms))
        console.print(f"published {n:,} events; training the first model ...")
        log = training.collect(asyncio.run(training.read_log(settings)))
        artifacts, metrics = training.train(log, ALSConfig(), holdout=0.1)
        version = asyncio.run(training.publish(settings, artifacts))
        hr = metrics["offline_hr10"] or 0.0
        console.print(f"model {version}: {metrics['users']:,} users, {metrics['items']:,} items, HR@10 {hr:.3f}")
        cli = [sys.executable, "-m", "recstream.cli"]
        stack.enter_context(child([*cli, "worker"], settings, run_dir / "logs" / "worker.log"))
        stack.enter_context(child([*cli, "serve"], settings, run_dir / "logs" / "reader.log"))
        asyncio.run(_live(settings, records, pending, stats, seconds, worker_metrics, reader_url))
    return stats


async def _live(settings: Settings, records: Iterator[tuple[str, object]], pending: tuple, stats: DemoStats,
                seconds: float | None, worker_metrics: str, reader_url: str) -> None:  # fmt: skip
    """Publish each world event when the wall clock reaches its timestamp."""
    deadline = None if seconds is None else time.monotonic() + seconds
    with Live(console=console, refresh_per_second=2) as live:
        async with EventProducer(settings) as producer:
            last_panel = 0.0
            kind, value = pending
            while deadline is None or time.monotonic() < deadline:
                if value is not None and value.ts <= time.time() * 1000:  # type: ignore[attr-defined]
                    sent = await _send(producer, kind, value)
                    stats.sent += sent
                    stats.clicks += sent and value.type == "click"  # type: ignore[attr-defined]
                    kind, value = next(records, ("", None))
                    continue
                await producer.flush()
                if time.monotonic() - last_panel > 1:
                    live.update(await asyncio.to_thread(_panel, stats, settings, worker_metrics, reader_url))
                    last_panel = time.monotonic()
                await asyncio.sleep(0.01)
