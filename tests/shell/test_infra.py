from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from recstream.contracts.settings import Settings, SettingsError
from recstream.eventlog.connection import client_options
from recstream.shell import infra
from recstream.shell.infra import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running: not gone, not a zombie waiting for its parent."""
    return infra._start_time(pid) is not None


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    members = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in members if (fields := infra._stat(pid)) and fields[0] != "Z" and int(fields[2]) == pgid]


def uvicorn_workers(pgid: int) -> list[int]:
    """The worker processes uvicorn's supervisor (leading process group ``pgid``) spawned."""
    return [pid for pid in group(pgid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def cli(settings: Settings, *args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    env = {**settings.environment(os.environ), "OPENBLAS_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "recstream.shell.cli", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Settings]:
    """A Redis of this test's own (no Kafka: its port is merely chosen), stopped after."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache", model_dir=tmp_path / "models")
    infra.redis_up(settings)
    yield settings
    infra.stop(infra.redis_service(settings))


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
    assert infra.down(settings) == ["prometheus not running", "kafka not running", "redis not running"]


def test_status_and_up_name_the_run_folder_they_looked_in_and_what_answers_outside_it(tmp_path: Path):
    """The run folder is ``.run`` in the working directory: from another folder `infra status` said "redis: stopped"
    while the project's Redis answered, and `infra up` said the port was "taken by a process this project did not
    start", naming neither the folder it had looked in nor how to look in another."""
    settings = infra.private_settings(Path(".run"), REPO / ".cache")  # relative, as by default
    folder = tmp_path / ".run"
    with socket.socket() as listener:  # something on the Redis port, recorded in no run folder
        listener.bind(("127.0.0.1", settings.redis.port))
        listener.listen()
        status = cli(settings, "infra", "status", cwd=tmp_path)
        up = cli(settings, "infra", "up", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stderr.splitlines() == [  # the console writes to stderr
        f"run folder: {folder} (RECSTREAM_RUN_DIR)",
        "kafka: stopped",
        f"redis: not started from {folder}, but something answers on port {settings.redis.port}",
    ]
    assert up.returncode == 1
    said = " ".join(up.stderr.split())  # the console wraps the line
    assert (
        f"port {settings.redis.port} is taken by a process this project did not start from the run folder "
        f"{folder}: if it did, from another folder, set RECSTREAM_RUN_DIR to that folder's run folder" in said
    ), said
    assert not folder.exists() and not infra.port_open(settings.kafka.port)


def test_a_foreign_process_on_the_port_is_reported_not_killed(services: Settings, tmp_path: Path):
    taken = services.replace(run_dir=tmp_path)  # same ports, another run folder
    with pytest.raises(infra.InfraError, match="taken by a process this project did not start"):
        infra.redis_up(taken)
    assert infra.redis_answers(services)


@pytest.mark.parametrize("written", ["in another boot", "naming no boot"])
def test_a_record_not_proved_of_this_boot_is_not_trusted_and_its_pid_never_signalled(tmp_path: Path, written: str):
    """After a reboot the run folder's pid file may name a pid another process holds now, even with the recorded start
    time (counted in ticks since boot): `up` took it for a running Redis (and, as it did not answer, SIGTERMed it),
    `down` signalled it. A record carries the boot it was written in; one of another boot, or naming none, is none."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    service = infra.redis_service(settings)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        infra.record_pid(service, stranger.pid)
        assert service.pid() == stranger.pid  # written in this boot: that very process
        boot = f" {uuid.uuid4()}" if written == "in another boot" else ""
        stale = f"{stranger.pid} {infra._start_time(stranger.pid)}{boot}"
        service.pid_file.write_text(stale)
        assert service.pid() is None
        assert infra.redis_up(settings).startswith("redis started") and stranger.poll() is None
        infra.stop(service)
        service.pid_file.write_text(stale)
        assert infra.down(settings)[-1] == "redis not running"
        assert stranger.poll() is None, "the stranger was signalled"
    finally:
        stranger.kill()
        stranger.wait()
        infra.stop(service)


def test_an_own_process_listening_elsewhere_is_not_taken_for_the_one_answering_on_the_port(tmp_path: Path):
    """`up` took a live recorded Redis of ours for the one answering on the configured port without asking which
    process listens there: with the port changed to one another Redis serves, it said "already running" (our pid)
    and the demo used the other. Ours, left over on its old port, is stopped; the other is reported, not touched."""
    ours = infra.private_settings(tmp_path / "run", REPO / ".cache")
    port = free_port()
    moved = ours.replace(redis_url=f"redis://127.0.0.1:{port}/0")
    argv = [infra.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]  # fmt: skip
    other = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        infra.redis_up(ours)
        pid = infra.redis_service(ours).pid()
        assert pid is not None and wait_until(lambda: infra.redis_answers(moved))
        with pytest.raises(infra.InfraError, match=f"port {port} is taken by a process this project did not start"):
            infra.redis_up(moved)
        assert wait_until(lambda: not alive(pid)) and infra.redis_answers(moved) and other.poll() is None
    finally:
        infra.stop(infra.redis_service(ours))
        other.terminate()
        other.wait()


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
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # started from a terminal (a suite run under nohup hands on SIG_IGN)
if sys.argv[2] == "ignored":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a process a script started with `&`
try:
    with infra.sigterm_interrupts():
        print("ready", flush=True)
        time.sleep(60)
finally:
    open(sys.argv[1], "w").write("stopped what it started")
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_unwinds_the_block_like_ctrl_c(tmp_path: Path, sigint: str, stop: signal.Signals):
    """`kill <pid>` of a benchmark or the demo must still run their `finally`s (stop workers, Kafka, Redis),
    also when a script started them in the background, where SIGINT is ignored; so must the terminal closing
    (SIGHUP): the children, in sessions of their own, never get it."""
    marker = tmp_path / "cleanup"
    child = subprocess.Popen([sys.executable, "-c", CLEANS_UP, str(marker), sigint], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.send_signal(stop)
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


WAITS = """
import os, time
from pathlib import Path

def test_waits():
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        Path(os.environ["MARKER"]).write_text("session ended cleanly")
"""


def test_sighup_ends_a_test_session_like_ctrl_c(tmp_path: Path):
    """tests/conftest.py's handlers: a closed terminal ends the session through its fixtures' teardown (which stop
    Kafka and Redis), not by the default action, which kills pytest at once and leaves them running."""
    (tmp_path / "test_waits.py").write_text(WAITS)
    # pytest as started from a terminal, SIGHUP at its default (a suite run under nohup hands on SIG_IGN)
    terminal = "import signal, sys, pytest; signal.signal(signal.SIGHUP, signal.SIG_DFL); sys.exit(pytest.main())"
    argv = [sys.executable, "-c", terminal, "-p", "tests.conftest", "-p", "no:cacheprovider", "-s", "-q",
            "--rootdir", str(tmp_path), str(tmp_path / "test_waits.py")]  # fmt: skip
    env = {**os.environ, "MARKER": str(tmp_path / "marker")}
    session = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert session.stdout is not None
        while "ready" not in (line := session.stdout.readline()):
            assert line, "pytest ended before the test ran"
        session.send_signal(signal.SIGHUP)
        session.wait(timeout=30)
    finally:
        session.kill()
    assert (tmp_path / "marker").read_text() == "session ended cleanly"


def test_a_kill_after_the_timeout_reaches_the_whole_process_group(tmp_path: Path):
    """A recorded process that outlives SIGTERM is SIGKILLed with its process group: the processes it started (a
    reader's uvicorn workers) would otherwise outlive it, orphaned."""
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('ready', flush=True); "
        "time.sleep(60)"
    )  # its child inherits the ignored SIGTERM
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE)
    assert leader.stdout is not None and leader.stdout.readline() == b"ready\n"
    service = infra.Service("stubborn", tmp_path / "stubborn")
    infra.record_pid(service, leader.pid)
    members = group(leader.pid)
    try:
        assert len(members) == 2
        assert infra.stop(service, timeout_s=0.5) == f"stubborn stopped (pid {leader.pid})"
        assert wait_until(lambda: not [pid for pid in members if alive(pid)]), group(leader.pid)
    finally:
        if group(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_a_killed_reader_takes_its_uvicorn_workers_with_it(own_redis: Settings, tmp_path: Path):
    """`serve --workers 2` is uvicorn's supervisor and two worker processes: SIGKILL to the supervisor alone (a fault
    test's crash) left both workers serving, orphaned, with nothing to stop them."""
    reader = infra.Child("serve", own_redis.replace(reader_workers=2), tmp_path / "reader.log")
    try:
        assert wait_until(lambda: len(uvicorn_workers(reader.proc.pid)) == 2, 60), reader.log
        members = group(reader.proc.pid)  # with multiprocessing's resource tracker
        reader.kill()
        assert wait_until(lambda: not [pid for pid in members if alive(pid)]), group(reader.proc.pid)
    finally:
        if group(reader.proc.pid):
            os.killpg(reader.proc.pid, signal.SIGKILL)
        reader.proc.wait()


def test_an_interrupt_while_kafka_stops_still_stops_redis(tmp_path: Path):
    """A second Ctrl-C (or a SIGTERM) while the block's cleanup waits for Kafka's shutdown (up to 30 s) must not leave
    Redis running: every service gets its SIGTERM before any is waited for, each wait in a `finally`."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupted)
    kafka_pid = redis_pid = 0
    try:
        with pytest.raises(KeyboardInterrupt), infra.running(settings):
            kafka_pid, redis_pid = infra.kafka_service(settings).pid(), infra.redis_service(settings).pid()
            os.kill(kafka_pid, signal.SIGSTOP)  # a Kafka slow to shut down: SIGTERM waits until SIGCONT
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # the interrupt, while the cleanup waits for Kafka
        assert wait_until(lambda: not alive(redis_pid)) and not infra.port_open(settings.redis.port)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if kafka_pid:
            os.kill(kafka_pid, signal.SIGKILL)
            os.waitpid(kafka_pid, 0)
        infra.stop_recorded(tmp_path)


def test_a_recorded_service_that_did_not_answer_and_was_replaced_is_stopped_after(tmp_path: Path):
    """`running` leaves alone a service that was running and answering before it; one `up` stopped (its recorded
    process did not answer) and started again is its own, and stopped after the block."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    infra.kafka_up(settings)  # running and answering before: not the block's to stop
    silent = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a recorded "Redis" that never answers
    infra.record_pid(infra.redis_service(settings), silent.pid)
    try:
        with infra.running(settings) as report:
            redis_pid = infra.redis_service(settings).pid()
            assert redis_pid not in (None, silent.pid) and report[0].startswith("redis started"), report
            assert report[1].startswith("kafka already running"), report
        assert wait_until(lambda: not alive(redis_pid)) and not infra.port_open(settings.redis.port)
        assert infra.kafka_answers(settings)
    finally:
        silent.kill()
        silent.wait()
        infra.stop_recorded(tmp_path)


def test_infra_down_also_stops_the_demos_reader_and_prometheus(own_redis: Settings):
    """`recstream infra down` stopped Kafka and Redis only: the reader and worker the demo records (their own sessions,
    so no terminal signal reaches them) and its Prometheus kept running, with nothing left to stop them."""
    reader = infra.Child("serve", own_redis, infra.logs_dir(own_redis) / "reader.log")
    targets = {"recstream-worker": "127.0.0.1:1", "recstream-reader": f"127.0.0.1:{reader.port}"}
    infra.prometheus_up(own_redis, targets, free_port())
    prometheus_pid, redis_pid = infra.prometheus_service(own_redis).pid(), infra.redis_service(own_redis).pid()
    try:
        done = cli(own_redis, "infra", "down")
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines() == [
            f"{reader.record.name} stopped (pid {reader.proc.pid})",
            f"prometheus stopped (pid {prometheus_pid})",
            "kafka not running",
            f"redis stopped (pid {redis_pid})",
        ]
        reader.proc.wait(timeout=10)
        assert not alive(prometheus_pid) and not alive(redis_pid)
    finally:
        reader.stop()
        infra.stop(infra.prometheus_service(own_redis))


def test_down_stops_the_demos_children_recorded_in_its_logs_folder_and_nothing_recorded_below_it(tmp_path: Path):
    """`down` swept the logs folder with rglob("pid"): it stopped what another run, whose run folder lay below it,
    had recorded there, and deleted every file named pid it met. It stops the children recorded in the logs folder
    itself (<log>.<pid>.child/pid, as a demo's reader and worker are), by pid, and touches nothing else."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    logs = infra.logs_dir(settings)
    mine, theirs = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2))
    other_run = settings.replace(run_dir=logs / "another-run")
    foreign = logs / "some-tool" / "pid"  # another program's pid file
    try:
        name = f"reader.log.{mine.pid}{infra.CHILD_SUFFIX}"
        infra.record_pid(infra.Service(name, logs / name), mine.pid)
        infra.record_pid(infra.redis_service(other_run), theirs.pid)
        foreign.parent.mkdir()
        foreign.write_text("1\n")
        assert infra.down(settings) == [
            f"{name} stopped (pid {mine.pid})",
            "prometheus not running",
            "kafka not running",
            "redis not running",
        ]
        assert wait_until(lambda: not alive(mine.pid)) and theirs.poll() is None
        assert infra.redis_service(other_run).pid() == theirs.pid and foreign.read_text() == "1\n"
        assert infra.down(settings)[0] == "prometheus not running"  # the stopped child's record is gone
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()


def test_a_redis_slow_to_answer_is_not_answering_yet(tmp_path: Path):
    """A PING not answered within the second (a loaded machine, a Redis loading its AOF) is retried by the start's
    wait; it raised TimeoutError, which ended the start."""
    with socket.socket() as silent:  # accepts (the kernel does, from the backlog), never replies
        silent.bind(("127.0.0.1", free_port()))
        silent.listen()
        settings = infra.private_settings(tmp_path, tmp_path).replace(
            redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        )
        assert infra.redis_answers(settings) is False


def test_a_port_handed_out_is_never_handed_out_again(monkeypatch: pytest.MonkeyPatch):
    """Services get their ports before any binds one: a port handed out, Kafka's controller port (``port + 1``)
    included, was free still and so could be handed out again, to a Redis or a reader."""
    kafka = free_port(span=2)
    pick = random.randrange
    picks = iter([kafka, kafka + 1])
    monkeypatch.setattr(infra.random, "randrange", lambda *bounds: next(picks, None) or pick(*bounds))
    assert free_port() not in (kafka, kafka + 1)
    picks = iter([kafka - 1, kafka + 1])
    assert free_port(span=2) not in (kafka - 1, kafka + 1)  # each range would overlap Kafka's


@pytest.mark.parametrize("properties", ["missing", "binary"])
def test_an_unusable_server_properties_file_is_a_clear_error_and_leaves_nothing_running(tmp_path: Path, properties):
    """RECSTREAM_KAFKA_SERVER_PROPERTIES naming no file, or one that is no text: a settings error before anything
    starts, or a message naming it with the Redis started before stopped again; it was a traceback, Redis running."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    path = tmp_path / "server-extra.properties"
    if properties == "binary":
        path.write_bytes(b"\xff\xfe\x00keystore")
    done = cli(settings, "infra", "up", RECSTREAM_KAFKA_SERVER_PROPERTIES=str(path))
    assert "Traceback" not in done.stderr, done.stderr
    if properties == "missing":
        assert (
            done.returncode == 2 and "RECSTREAM_KAFKA_SERVER_PROPERTIES: Path does not point to a file" in done.stderr
        )
    else:
        assert done.returncode == 1 and f"cannot read RECSTREAM_KAFKA_SERVER_PROPERTIES ({path})" in done.stderr
    assert not list(tmp_path.rglob("pid")) and not infra.port_open(settings.redis.port), done.stderr


def test_a_run_folder_infra_up_cannot_write_is_one_line_and_stops_the_redis_it_started(tmp_path: Path):
    """An OSError once Redis runs (here Kafka's folder is a dangling link) ended `infra up` with a traceback and
    Redis left running."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kafka").symlink_to(tmp_path / "nowhere")
    done = cli(settings, "infra", "up")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith("cannot start the services in "), done.stderr
    assert "Traceback" not in done.stderr and not infra.port_open(settings.redis.port), done.stderr
    assert not list(tmp_path.rglob("pid"))


BATCH = """
if (redis.call('HGET', KEYS[1], 'p0') or '') ~= ARGV[1] then return 'done' end
redis.call('HINCRBY', KEYS[2], 'views', 36)
redis.call('SET', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[1], 'p0', ARGV[2])
return 'ok'
"""
"""A batch as the workers' script writes one: a counter, a large value, the watermark last, in one transaction."""


def test_a_batch_cut_off_in_the_aof_by_a_sigkill_is_not_replayed_after_its_retry(tmp_path: Path):
    """A SIGKILL that stops Redis's write of a batch's MULTI/EXEC block part way (the file is cut at a page boundary
    inside the block's large value) loses the batch, which the worker retries. Redis 7.0 kept the block's first
    commands in the file, and the next restart ran them again inside the retry's transaction: 36 views counted
    twice (the redis-kill fault scenario's 7,446 applied events of 7,410)."""
    settings = infra.private_settings(tmp_path / "run", REPO / ".cache")
    service, blob = infra.redis_service(settings), "x" * 200_000
    client = redis.Redis(port=settings.redis.port)
    infra.redis_up(settings)
    try:
        batch = client.register_script(BATCH)
        keys = ["wm", "totals", "blob"]
        assert [batch(keys=keys, args=["", "10", blob]), batch(keys=keys, args=["10", "20", blob])] == [b"ok", b"ok"]
        [incr] = (service.data_dir / "appendonlydir").glob("*.incr.aof")
        deadline = time.monotonic() + 30  # a write may wait up to 2 s behind a slow fsync (everysec): both blocks in
        while not ((data := incr.read_bytes()).count(b"MULTI") == 2 and data.endswith(b"EXEC\r\n")):
            assert time.monotonic() < deadline, "the two batches never reached the AOF"
            time.sleep(0.1)
        infra.stop(service, sig=signal.SIGKILL)
        inside = data.find(b"xxxx", data.find(b"HINCRBY", data.rfind(b"MULTI")))
        with incr.open("r+b") as out:
            out.truncate((inside // 4096 + 1) * 4096)  # the write() the kill cut short, at a page boundary
        infra.redis_up(settings)
        assert (client.hget("totals", "views"), client.hget("wm", "p0")) == (b"36", b"10"), "the second batch lost"
        blocks = incr.read_bytes().count(b"MULTI")
        assert batch(keys=keys, args=["10", "20", blob]) == b"ok"  # the worker's retry
        deadline = time.monotonic() + 30
        while not ((data := incr.read_bytes()).count(b"MULTI") > blocks and data.endswith(b"EXEC\r\n")):  # written
            assert time.monotonic() < deadline, "the retry never reached the AOF"
            time.sleep(0.1)
        infra.stop(service, sig=signal.SIGKILL)
        infra.redis_up(settings)
        assert (client.hget("totals", "views"), client.hget("wm", "p0")) == (b"72", b"20")
    finally:
        client.close()
        infra.stop(service)


async def _retention(settings: Settings, topic: str) -> str | None:
    """The topic's ``retention.ms`` as the broker describes it (None: no such topic, after 10 s of asking: the
    broker asked may not know a topic created a moment ago yet)."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        for _ in range(50):
            [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            [(error, *_, entries)] = described.resources
            if error == 0:
                return {name: value for name, value, *_ in entries}["retention.ms"]
            await asyncio.sleep(0.2)
        return None
    finally:
        await admin.close()


@pytest.mark.parametrize("over", [-1, 0, 1], ids=["bound-1", "bound", "bound+1"])
def test_the_events_topics_take_the_longest_retention_the_settings_take(services: Settings, over: int):
    """``RECSTREAM_RETENTION_MS`` at its bound, 2^63 − 1 (the broker reads it as a Java long), and one under: the
    events and dead-letter topics are created with it. One past it is refused at start, naming the variable."""
    retention = 2**63 - 1 + over
    if over > 0:
        with pytest.raises(SettingsError, match="RECSTREAM_RETENTION_MS: Input should be less than or equal to"):
            services.on_topics(uuid.uuid4().hex[:8], retention_ms=retention)
        return
    settings = services.on_topics(uuid.uuid4().hex[:8], retention_ms=retention)
    asyncio.run(infra.ensure_topics(settings))
    for topic in (settings.kafka.events_topic, settings.kafka.dlq_topic):
        assert asyncio.run(_retention(settings, topic)) == str(retention), topic


def test_the_topics_have_a_leader_for_every_partition_when_ensure_topics_returns(services: Settings):
    settings = services.on_topics(uuid.uuid4().hex[:8], events_partitions=6)
    names = [settings.kafka.events_topic, settings.kafka.items_topic, settings.kafka.dlq_topic]

    async def created_then_described() -> list[str]:
        assert set(names) <= set(await infra.ensure_topics(settings))
        async with infra.kafka_admin(settings) as admin:
            return infra.unled(await admin.describe_topics(names), names)

    assert asyncio.run(created_then_described()) == []


def test_a_topic_without_leaders_past_the_deadline_is_named(services: Settings, monkeypatch: pytest.MonkeyPatch):
    """The broker creates no topic on a metadata request (auto.create.topics.enable=false), so one never created
    stays without a leader."""
    monkeypatch.setattr(infra, "TOPICS_LED_S", 0.3)
    ghost = f"never-created-{uuid.uuid4().hex[:8]}"

    async def wait() -> None:
        async with infra.kafka_admin(services) as admin:
            await infra._until_led(services, admin, [services.kafka.events_topic, ghost])

    with pytest.raises(infra.InfraError, match=f"no leader for every partition of {ghost} 0 s after"):
        asyncio.run(wait())
