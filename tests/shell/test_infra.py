from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recstream.contracts.settings import Settings
from recstream.shell import infra
from recstream.shell.infra import free_port

pytestmark = pytest.mark.integration


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound():
    """An outgoing connection's local port comes from the ephemeral range; a chosen port there could be
    taken between the choice and the server's start (CI once lost Kafka's controller port that way)."""
    floor = infra._ephemeral_floor()
    for span in (1, 2, 3):
        port = free_port(span=span)
        assert port + span <= floor
        for k in range(span):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + k))


@pytest.mark.parametrize("floor", [1024, 20_001, 20_002, 20_010])
def test_a_kernel_range_that_leaves_no_room_below_it_still_gives_a_port(monkeypatch: pytest.MonkeyPatch, floor: int):
    """With ip_local_port_range starting at or below 20,000 + span, randrange(20000, floor - span) raised ValueError
    (an empty range), and the demo, on a machine whose port 9090 was taken, stopped on it."""
    monkeypatch.setattr(infra, "_ephemeral_floor", lambda: floor)
    port = free_port(span=2)
    assert 20_000 <= port <= 65_534
    monkeypatch.setattr(infra, "_bindable", lambda candidate: candidate >= floor)  # the few ports below all taken
    assert free_port() >= floor  # with 9 candidates below the floor taken, it raised "no free loopback port"


def test_a_listening_port_is_not_offered(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        picks = iter([taken.getsockname()[1] - 1, taken.getsockname()[1], taken.getsockname()[1] + 1])
        monkeypatch.setattr(infra.random, "randrange", lambda *_: next(picks))
        assert free_port(span=2) == taken.getsockname()[1] + 1  # the first two picks span the taken port


def test_up_is_idempotent_and_down_leaves_no_process(services: Settings, tmp_path: Path):
    settings = services.replace(
        kafka_bootstrap=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        run_dir=tmp_path,
    )
    infra.up(settings)
    pids = [infra.kafka_service(settings).pid(), infra.redis_service(settings).pid()]
    try:
        second = infra.up(settings)
        assert all(pids) and "already running" in second[0] and "already running" in second[1]
        assert second[2] == "topics present"
        assert [infra.kafka_service(settings).pid(), infra.redis_service(settings).pid()] == pids
    finally:
        infra.down(settings)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not infra.port_open(settings.kafka.port) and not infra.port_open(settings.redis.port)
    assert infra.down(settings) == ["kafka not running", "redis not running"]


def test_a_foreign_process_on_the_port_is_reported_not_killed(services: Settings, tmp_path: Path):
    taken = services.replace(run_dir=tmp_path)  # same ports, another run folder
    with pytest.raises(infra.InfraError, match="taken by a process this project did not start"):
        infra.redis_up(taken)
    assert infra.redis_answers(services)


def test_a_failed_start_stops_what_it_had_started(services: Settings, tmp_path: Path):
    with socket.socket() as blocker:  # a foreign process on the Kafka port: Redis starts, Kafka refuses
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        settings = services.replace(
            kafka_bootstrap=f"127.0.0.1:{blocker.getsockname()[1]}",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            run_dir=tmp_path,
        )
        with pytest.raises(infra.InfraError, match="taken by a process"), infra.running(settings):
            pass
    assert infra.redis_service(settings).pid() is None and not infra.port_open(settings.redis.port)


CLEANS_UP = """
import signal, sys, time
from recstream.shell import infra
if sys.argv[2] == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a process a script started with `&`
try:
    with infra.sigterm_interrupts():
        print("ready", flush=True)
        time.sleep(60)
finally:
    open(sys.argv[1], "w").write("stopped what it started")
"""


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_unwinds_the_block_like_ctrl_c(tmp_path: Path, sigint: str):
    """`kill <pid>` of a benchmark or the demo must still run their `finally`s (stop workers, Kafka, Redis),
    also when a script started them in the background, where SIGINT is ignored."""
    marker = tmp_path / "cleanup"
    child = subprocess.Popen([sys.executable, "-c", CLEANS_UP, str(marker), sigint], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.terminate()
        child.wait(timeout=10)
    finally:
        child.kill()
    assert marker.read_text() == "stopped what it started"


def test_the_sweep_stops_the_worker_then_the_redis_a_run_left_behind(
    services: Settings, isolated_settings: Settings, tmp_path: Path
):
    """What tests/conftest.py's pytest_unconfigure does after an interrupted parallel run: the worker (its own
    session, so nothing else signals it) is stopped by its recorded pid before the services it talks to."""
    own = services.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", run_dir=tmp_path / "run")
    infra.redis_up(own)
    redis_pid = infra.redis_service(own).pid()
    worker = infra.Child("worker", isolated_settings, tmp_path / "logs" / "worker.log")
    worker.wait_ready()

    report = infra.stop_recorded(tmp_path)

    assert report == [f"{worker.record.name} stopped (pid {worker.proc.pid})", f"redis stopped (pid {redis_pid})"]
    assert worker.proc.poll() is not None and not Path(f"/proc/{redis_pid}").exists()
    assert list(tmp_path.rglob("pid")) == []
    assert infra.stop_recorded(tmp_path) == []


def test_a_stopped_or_killed_child_leaves_no_record(isolated_settings: Settings, tmp_path: Path):
    log = tmp_path / "worker.log"
    stopped, killed = infra.Child("worker", isolated_settings, log), infra.Child("worker", isolated_settings, log)
    assert {c.record.pid() for c in (stopped, killed)} == {stopped.proc.pid, killed.proc.pid}  # one record each
    stopped.stop()
    killed.kill()
    assert [p.name for p in tmp_path.iterdir()] == ["worker.log"]
