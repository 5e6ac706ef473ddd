"""`recstream demo`, the README's first command, end to end: it starts everything (Prometheus included), serves the
simulated users' feeds, applies their events, exits 0 when its time is up and leaves no process behind."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from rich.console import Console

from recstream.contracts.settings import Settings, load_settings
from recstream.shell import infra
from recstream.shell.demo import Panel, System, own_ports, prometheus_pages
from recstream.shell.infra import free_port
from recstream.sim.simulator import SimResult

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
