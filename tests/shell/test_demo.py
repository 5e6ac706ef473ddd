"""`recstream demo`, the README's first command, end to end: it starts everything (Prometheus included), serves the
simulated users' feeds, applies their events, exits 0 when its time is up and leaves no process behind."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
import redis
from rich.console import Console

from recstream.contracts.settings import Settings, load_settings
from recstream.shell import infra
from recstream.shell.demo import (
    NAMESPACE_FIELDS,
    STAMP,
    Panel,
    System,
    own_ports,
    prometheus_pages,
    recorded_run,
    remove_earlier_runs,
    run_namespace,
)
from recstream.shell.infra import free_port
from recstream.sim.simulator import SimResult
from recstream.store.connection import UNLINK_BATCH
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def demo_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The demo's environment: every port a free one, its folders under ``tmp_path``, then ``variables``."""
    return {
        **os.environ,
        "RECSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port(span=2)}",
        "RECSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RECSTREAM_READER_PORT": str(free_port()),
        "RECSTREAM_WORKER_METRICS_PORT": str(free_port()),
        "RECSTREAM_RUN_DIR": str(tmp_path / "run"),
        "RECSTREAM_MODEL_DIR": str(tmp_path / "models"),
        "RECSTREAM_CACHE_DIR": str(REPO / ".cache"),
        "COLUMNS": "300",
        **variables,
    }


def test_demo_serves_feeds_applies_events_and_stops_everything_it_started(tmp_path: Path):
    env = demo_env(tmp_path)
    # 25 s at the demo's 20 feeds/s: ~500 feeds, 200 needed
    argv = [sys.executable, "-m", "recstream.shell.cli", "demo", "--seconds", "25", "--history-min", "5"]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    out = done.stdout + done.stderr
    pids = [int(p) for p in re.findall(r"(?:started \w+ pid|started \(pid) (\d+)", out)]
    assert done.returncode == 0, out[-4000:]
    assert len(pids) == 5, out[-4000:]  # redis, kafka, worker, reader, prometheus
    assert re.search(r"prometheus started \(pid \d+\) on port \d+", out), out[-4000:]
    assert re.search(r"│ prometheus +│ targets http://127\.0\.0\.1:\d+/(classic/)?targets", out), out[-4000:]
    assert re.search(r"^API key of this run \(writes\): (\S+)\nexport KEY=\1$", out, re.MULTILINE), out[-4000:]
    assert not [pid for pid in pids if alive(pid)], out[-4000:]

    feeds, failed = map(int, re.search(r"([\d,]+) feeds \((\d+) failed\)", out.replace(",", "")).groups())
    assert feeds >= 200 and failed <= feeds // 100, out[-4000:]
    applied, history, posted = (
        int(x.replace(",", ""))
        for x in re.search(r"applied by the worker: ([\d,]+) \(([\d,]+) of the history, ([\d,]+) posted", out).groups()
    )
    assert posted > 0 and applied > history, out[-4000:]

    # a second run on the same Kafka and Redis data starts as empty as the first: its own topics and prefix, so its
    # model learns its own history only (the same world and seed: the same users and items), where a run on the last
    # run's topics trained on both runs' events and found every item known (no new-item pool)
    again = subprocess.run([*argv[:5], "5", *argv[6:]], env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    second = again.stdout + again.stderr
    assert again.returncode == 0, second[-4000:]
    model = r"model \S+: ([\d,]+) users, ([\d,]+) items"
    assert re.search(model, second).groups() == re.search(model, out).groups(), (out[-2000:], second[-2000:])
    namespaces = [re.search(r"this run's state: topics (\S+),", text).group(1) for text in (out, second)]
    assert namespaces[0] != namespaces[1], namespaces
    # and it deletes the first run's topics and keys: ten demos held ten copies of the world's events and keys
    assert "earlier demo run" not in out, out[-4000:]
    assert re.search(r"^removed 1 earlier demo run: 5 topics, [\d,]+ Redis keys$", second, re.MULTILINE), second[-4000:]


def namespace(settings: Settings, stamp: str) -> Settings:
    return run_namespace(settings, stamp)[0]


def topics(settings: Settings) -> list[str]:
    return [getattr(settings.kafka, name) for name in NAMESPACE_FIELDS["kafka"]]


@pytest.fixture
def state(services: Settings) -> Iterator[Callable[[Settings, int], Settings]]:
    """Give a namespace its topics and ``n`` Redis keys on the session's services; all of them are deleted after."""
    client = redis.Redis.from_url(services.redis.url)
    made: list[Settings] = []

    def make(settings: Settings, n: int) -> Settings:
        asyncio.run(infra.ensure_topics(settings))
        client.mset({f"{settings.redis.prefix}:k:{i}": i for i in range(n)})
        made.append(settings)
        # a created topic reaches the brokers' metadata a moment later: a test that counts at once could find none
        wait_until(lambda: left([settings]) == [(len(topics(settings)), n)], 30, "the new topics listed")
        return settings

    yield make
    names = {topic for settings in made for topic in topics(settings)}
    asyncio.run(infra.delete_topics(services, names.__contains__))
    for settings in made:
        for key in client.scan_iter(match=f"{settings.redis.prefix}:*", count=1000):
            client.unlink(key)
    client.close()


def left(namespaces: list[Settings]) -> list[tuple[int, int]]:
    """How many of each namespace's topics and Redis keys are there."""

    async def existing() -> set[str]:
        async with infra.kafka_admin(namespaces[0]) as admin:
            return set(await admin.list_topics())

    names = asyncio.run(existing())
    client = redis.Redis.from_url(namespaces[0].redis.url)
    try:
        return [(len(names.intersection(topics(ns))), sum(1 for _ in client.scan_iter(match=f"{ns.redis.prefix}:*")))
                for ns in namespaces]  # fmt: skip
    finally:
        client.close()


def test_two_demos_started_in_one_second_get_namespaces_of_their_own_in_start_order():
    """A stamp to the second gave two demos started in one second the same topics and Redis prefix."""
    first, second, later = (datetime(2026, 12, 6, 10, 0, s, us).strftime(STAMP) for s, us in ((0, 9), (0, 10), (1, 0)))
    assert namespace(load_settings(), first).kafka.events_topic != namespace(load_settings(), second).kafka.events_topic
    assert first < second < later and len({len(first), len(second), len(later)}) == 1


def test_a_demo_run_removes_the_topics_and_keys_earlier_runs_left_and_nothing_else(
    services: Settings, state: Callable[[Settings, int], Settings], tmp_path: Path
):
    """Every demo run's topics and Redis keys stayed until the run folder was deleted: ten demos held ten copies of
    the world's events in Kafka and ten key sets in Redis. A run now removes those of the runs stamped before it (one
    key more than an UNLINK batch; one stamped to the second, as demos were before 2026-12-06), and keeps its own, a
    later one's of either form, the user's, the defaults (``events``, …, ``rs:``) and names of a stamp one digit
    shorter or longer than either form."""
    base = services.replace(run_dir=tmp_path)  # a run folder of its own: no other demo's process is recorded in it
    stamp = datetime(2020, 1, 3, 0, 0, 0, 500).strftime(STAMP)
    earlier = [state(namespace(base, datetime(2020, 1, 1).strftime(STAMP)), UNLINK_BATCH + 1),
               state(namespace(base, "20200103000000"), 2)]  # fmt: skip
    kept = [state(namespace(base, s), 2) for s in (stamp, datetime(2020, 1, 4).strftime(STAMP), "20200104000000")]
    kept.append(state(base.on_topics("mine", redis_prefix="mine"), 2))
    odd = ("2020010100000", "202001010000000", "2020010100000000000", "202001010000000000000")  # 13, 15, 19, 21 digits
    kept += [state(base.on_topics(f"demo-{digits}", redis_prefix=f"demo{digits}"), 2) for digits in odd]
    client = redis.Redis.from_url(services.redis.url)
    client.set("rs:demo-cleanup-test", 1)
    try:
        with recorded_run(kept[0]):  # this process's own record is no other demo
            line = remove_earlier_runs(kept[0], stamp)
        assert line == f"removed 2 earlier demo runs: 10 topics, {UNLINK_BATCH + 3:,} Redis keys"
        wait_until(lambda: left(earlier) == [(0, 0), (0, 0)], 30, "the earlier runs' topics deleted")  # asynchronously
        assert left(kept) == [(5, 2)] * len(kept)
        assert left([services])[0][0] == 5 and client.get("rs:demo-cleanup-test") == b"1"
        assert remove_earlier_runs(kept[0], stamp) is None  # nothing left to remove
    finally:
        client.delete("rs:demo-cleanup-test")
        client.close()


def test_a_demo_run_removes_nothing_while_another_demo_runs_from_its_run_folder(
    services: Settings, state: Callable[[Settings, int], Settings], tmp_path: Path
):
    """Two demos at once share Kafka and Redis (the run folder's): the second must not delete the first's topics and
    keys under its worker and reader. Once that process has ended, its record holds nothing back."""
    stamp = "20210102000000"  # not the other tests' (a topic deleted a moment ago may still be listed)
    base = services.replace(run_dir=tmp_path)
    earlier = state(namespace(base, "20210101000000"), 2)
    own = namespace(base, stamp)
    other = subprocess.Popen(["sleep", "60"])
    record = infra.Service("demo.other", infra.logs_dir(own) / "demo.other")
    infra.record_pid(record, other.pid)
    try:
        line = remove_earlier_runs(own, stamp)
    finally:
        infra.terminate(other)
    assert line == (f"earlier demo runs' topics and Redis keys kept: another demo's process (pid {other.pid}) runs "
                    f"from {infra.logs_dir(own)}")  # fmt: skip
    assert left([earlier]) == [(5, 2)]
    assert remove_earlier_runs(own, stamp) == "removed 1 earlier demo run: 5 topics, 2 Redis keys"
    wait_until(lambda: left([earlier]) == [(0, 0)], 30, "the earlier run's topics deleted")


def test_a_failure_to_remove_earlier_demo_runs_is_a_warning(tmp_path: Path):
    """The demo goes on, on its own namespace, when Kafka or Redis fails the cleanup."""
    stamp = "20200102000000"
    down = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", run_dir=tmp_path, cache_dir=tmp_path)
    line = remove_earlier_runs(namespace(down, stamp), stamp)
    assert line is not None and line.startswith("[yellow]warning: could not remove earlier demo runs'"), line


def test_the_demo_moves_its_redis_and_kafka_off_default_ports_another_process_holds(tmp_path: Path):
    """Debian's redis-server package runs a Redis on 6379: the demo stopped on "port 6379 is taken by a process this
    project did not start". Its own Redis and Kafka go to free ports instead, and it says so."""
    defaults = Settings()
    held = []
    for port in (defaults.redis.port, defaults.kafka.port):
        if not infra.port_open(port):  # else something holds it already, as on such a host
            held.append(socket.create_server(("127.0.0.1", port)))
    settings = load_settings(run_dir=tmp_path, cache_dir=tmp_path)  # Redis and Kafka not set: on their defaults
    try:
        moved, lines = own_ports(settings)
        assert lines == [
            f"port 6379 is taken by a process the demo did not start: its own Redis runs on port {moved.redis.port}",
            f"port 9092 is taken by a process the demo did not start: its own Kafka runs on port {moved.kafka.port}",
        ]
        assert infra.redis_up(moved).startswith("redis started")
    finally:
        for sock in held:
            sock.close()
        infra.stop(infra.redis_service(settings))
    unchanged = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # set explicitly: kept
    assert own_ports(unchanged)[0].redis.url == unchanged.redis.url


def test_the_demo_keeps_the_default_port_its_own_redis_holds(tmp_path: Path):
    """A Redis `recstream infra up` started on 6379 (recorded in the run folder) is the demo's to use, not another's."""
    defaults = Settings()
    if infra.port_open(defaults.redis.port):
        pytest.skip(f"port {defaults.redis.port} is taken on this machine")
    settings = load_settings(run_dir=tmp_path, cache_dir=tmp_path)
    try:
        infra.redis_up(settings)
        assert own_ports(settings)[0].redis.url == defaults.redis.url
    finally:
        infra.stop(infra.redis_service(settings))


def test_the_demo_moves_its_reader_and_worker_metrics_off_default_ports_another_process_holds(tmp_path: Path):
    """The reader's 8080 and the worker's 9101 had no fallback: with either held, the demo started Kafka and Redis,
    published, trained, and only then ended on "recstream serve exited with 1; see <log>". They move to free ports
    as Redis and Kafka do, and it says so."""
    defaults = Settings()
    held = [
        socket.create_server(("127.0.0.1", port))
        for port in (defaults.reader.port, defaults.worker.metrics_port)
        if not infra.port_open(port)  # else something holds it already
    ]
    settings = load_settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", kafka_bootstrap=f"127.0.0.1:{free_port(span=2)}",
        run_dir=tmp_path, cache_dir=tmp_path,
    )  # fmt: skip
    try:
        moved, lines = own_ports(settings)
    finally:
        for sock in held:
            sock.close()
    assert lines == [
        f"port 8080 is taken by a process the demo did not start: its own reader runs on port {moved.reader.port}",
        "port 9101 is taken by a process the demo did not start: its own worker /metrics runs on port "
        f"{moved.worker.metrics_port}",
    ]
    assert (moved.redis.url, moved.kafka.bootstrap) == (settings.redis.url, settings.kafka.bootstrap)
    assert not infra.port_open(moved.reader.port) and not infra.port_open(moved.worker.metrics_port)


@pytest.mark.parametrize("at_default", [False, True], ids=["a free port", "the default's port"])
@pytest.mark.parametrize(
    ("variable", "name", "default"),
    [
        ("RECSTREAM_READER_PORT", "reader", Settings().reader.port),
        ("RECSTREAM_WORKER_METRICS_PORT", "worker /metrics", Settings().worker.metrics_port),
    ],
)
def test_a_taken_port_set_explicitly_ends_the_demo_at_once_naming_it_and_its_variable(
    tmp_path: Path, variable: str, name: str, default: int, at_default: bool
):
    """A port set explicitly is kept, so a taken one is an error: it came at the end of the start-up, as the reader's
    or worker's exit code and its log's path; now one line, before anything starts. Set to the default's port it is
    set too: ``RECSTREAM_READER_PORT=8080`` with 8080 taken moved the reader to a free port instead."""
    port = default if at_default else free_port()
    with ExitStack() as held:
        if not infra.port_open(port):  # else another process holds it already
            held.enter_context(socket.create_server(("127.0.0.1", port)))
        env = demo_env(tmp_path, **{variable: str(port)})
        argv = [sys.executable, "-m", "recstream.shell.cli", "demo", "--seconds", "1", "--history-min", "0.2"]
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 1, done.stderr[-4000:]
    assert done.stderr.strip() == (
        f"port {port} ({variable}: the demo's {name}) is taken by a process the demo did not start: set {variable} "
        "to a free port, or unset it and the demo picks one"
    ), done.stderr[-4000:]
    assert not (tmp_path / "run").exists()  # nothing was started


def status(url: str) -> int:
    try:
        with urlopen(url, timeout=5) as response:
            return response.status
    except HTTPError as exc:
        return exc.code


def test_the_prometheus_pages_the_demo_prints_answer_on_the_prometheus_dev_installs(tmp_path: Path):
    """The demo printed /targets and /alerts, 404 on Debian's 2.42.0+ds (classic UI only, under /classic/)."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache", model_dir=tmp_path / "models")
    port = free_port()
    infra.prometheus_up(settings, {"recstream-worker": "127.0.0.1:1", "recstream-reader": "127.0.0.1:2"}, port)
    try:
        pages = re.findall(r"http://\S+", prometheus_pages(f"http://127.0.0.1:{port}"))
        assert [page.rsplit("/", 1)[1] for page in pages] == ["targets", "alerts"]
        assert [status(page) for page in pages] == [200, 200], pages
    finally:
        infra.stop(infra.prometheus_service(settings))


class NewerPrometheus(BaseHTTPRequestHandler):
    """Stands in for a build without the classic UI (Prometheus 3): /targets and /alerts, nothing under /classic/."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/targets", "/alerts") else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_prometheus_pages_are_the_plain_ones_on_a_build_without_the_classic_ui():
    with ThreadingHTTPServer(("127.0.0.1", 0), NewerPrometheus) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            assert prometheus_pages(url) == f"targets {url}/targets · alerts {url}/alerts"
        finally:
            server.shutdown()


def test_the_panel_shows_the_prometheus_pages():
    """The README says the panel shows Prometheus's URL; it was printed once, before the panel."""
    closed = f"http://127.0.0.1:{free_port()}"
    pages = "targets http://127.0.0.1:9090/classic/targets · alerts http://127.0.0.1:9090/classic/alerts"
    out = Console(record=True, width=300, file=io.StringIO())
    for shown in (pages, None):
        out.print(Panel(Settings(), System(closed, f"{closed}/metrics", {}), shown).render(SimResult()))
    text = out.export_text()
    assert f"prometheus                    │ {pages}" in text and "prometheus                    │ none" in text
