"""Local infrastructure without Docker: a KRaft Kafka 3.9.1 broker and a Redis server on loopback, and a
Prometheus scraping the processes that run beside them.

``up`` is idempotent (a running, answering service is left alone) and returns only once
each service really answers (an admin request to Kafka, a PING to Redis); ``down`` stops
exactly the processes ``up`` started and those the demo runs beside them, by the pids
recorded, and nothing else. A record is the pid, its start time and the boot's id: a pid
another process holds now (reused, or after a reboot) is never taken for ours nor signalled.

Kafka comes from Maven Central jars (``infra/pom.xml``, fetched by the Maven dependency
plugin into the git-ignored cache folder); Redis and Prometheus from Debian's packages
(``./dev setup`` installs them).

Redis persistence: append-only file with ``appendfsync everysec`` and no RDB snapshots.
Redis writes each command to the AOF before replying, so a killed or restarted Redis
loses nothing it acknowledged; only a crash of the whole machine can lose up to a second,
which the workers' watermarks detect and replay from the Kafka log.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.request import urlopen

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code
from redis.crc import key_slot

from recstream.contracts.settings import ENV_PREFIX, Settings, load_settings
from recstream.eventlog.connection import client_options

_FREE_PORT_FLOOR = 20000  # clear of the well-known and registered services' usual ports

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_POM = REPO_ROOT / "infra" / "pom.xml"
KAFKA_HEAP = "-Xmx512m"
START_TIMEOUT_S = 90.0
TOPICS_LED_S = 30.0  # a new topic's partitions have leaders within a second or two on a healthy cluster
RUN_DIR_VARIABLE = f"{ENV_PREFIX}RUN_DIR"
"""Sets the run folder (pid files, logs, data): ``.run`` in the working directory unless given."""


class InfraError(RuntimeError):
    """A service could not be installed or started; the message carries the log tail."""


class TopicsRefused(InfraError):
    """The brokers answered a topic creation with an error for some topics (aiokafka returns it, raising nothing)."""


@dataclass(frozen=True)
class Service:
    """One locally managed process: where its pid, log and data live."""

    name: str
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def record(self) -> tuple[int, int] | None:
        """The recorded pid and start time if that very process is still alive: recorded in this boot (after a
        reboot another process may have the pid, and even the start time, counted from boot) and started at the
        recorded time (a pid reused within the boot has another). A record naming no boot is no proof either."""
        try:
            pid, started, boot = self.pid_file.read_text().split()
            pid_started = int(pid), int(started)
        except (FileNotFoundError, ValueError):
            return None
        return pid_started if boot == _boot_id() and _start_time(pid_started[0]) == pid_started[1] else None

    def pid(self) -> int | None:
        """The recorded pid if that very process is still alive."""
        record = self.record()
        return record[0] if record is not None else None

    def forget(self) -> None:
        """Remove its record, and its folder when that is empty now."""
        self.pid_file.unlink(missing_ok=True)
        with suppress(OSError):
            self.home.rmdir()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state is [0], start time is [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return []


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when it is gone or a zombie."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


@cache
def _boot_id() -> str:
    """This boot's random id (Linux makes a new one at every boot): a pid and start time are unique within one."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on: its sockets' inodes looked up in its network namespace's tables."""
    inodes = set()
    with suppress(OSError):  # gone, or not ours to look into
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):  # closed meanwhile
                if (link := os.readlink(fd)).startswith("socket:["):
                    inodes.add(link.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()  # sl, local address:port (hex), remote, state (0A: listening), ..., inode [9]
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def taken_by_another(service: Service, port: int) -> bool:
    """Something listens on ``port`` that is not ``service``'s own recorded process (a system Redis on 6379)."""
    pid = service.pid()
    return port_open(port) and (pid is None or port not in _listening_ports(pid))


def kafka_service(settings: Settings) -> Service:
    return Service("kafka", settings.local.run_dir.resolve() / "kafka")


def redis_service(settings: Settings) -> Service:
    return Service("redis", settings.local.run_dir.resolve() / "redis")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux's ``ip_local_port_range``)."""
    with suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kafka and Redis bind theirs
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


MIN_PORTS_BELOW = 1_000
"""Fewer candidate ports than this below the kernel's ephemeral range, and :func:`free_port` looks above it too."""


_handed_out: set[int] = set()
"""Every port :func:`free_port` returned in this process, spans included: each is someone's until it binds."""


_slice: tuple[int, int] = (0, 1)
"""(k, n): :func:`free_port` picks from the k-th of n equal slices of its range (:func:`use_port_slice`)."""


def use_port_slice(k: int, n: int) -> None:
    """From now on this process picks its free ports from the k-th of n equal slices of :func:`free_port`'s range.

    Why: parallel test processes (pytest-xdist's workers) each remember only the ports they handed out, so one may
    pick a port another picked and has not bound yet (the demo's worker binds its metrics port ~20 s after its test
    chose it, and once exited with "Address already in use"). Disjoint slices make that impossible between them.

    >>> use_port_slice(0, 2)
    >>> low = [free_port() for _ in range(20)]
    >>> use_port_slice(1, 2)
    >>> max(low) < min(free_port() for _ in range(20))
    True
    >>> use_port_slice(2, 2)
    Traceback (most recent call last):
    ValueError: slice 2 of 2: expected 0 <= k < n
    >>> use_port_slice(0, 1)
    """
    if not 0 <= k < n:
        raise ValueError(f"slice {k} of {n}: expected 0 <= k < n")
    global _slice
    _slice = (k, n)


def free_port(span: int = 1) -> int:
    """A loopback port with ``span`` consecutive free ports (Kafka needs two: broker and controller), none of them
    handed out before by this process: a caller picks its services' ports first and starts them after, so a port
    returned earlier may be free still and yet taken (a Kafka's controller port, ``port + 1``).

    Chosen below the kernel's ephemeral range: a port the kernel hands out (port 0) may be
    taken again, between this choice and the server's start, as the local port of any
    outgoing connection, and Kafka then dies with "Address already in use".
    """
    floor, ceiling = _FREE_PORT_FLOOR, _ephemeral_floor()
    if ceiling - span - floor < MIN_PORTS_BELOW:  # little or no room below the kernel's range (it starts at 1024,
        ceiling = 65536  # say): any port, race and all
    k, n = _slice
    floor, ceiling = floor + (ceiling - floor) * k // n, floor + (ceiling - floor) * (k + 1) // n - span
    for _ in range(200):
        port = random.randrange(floor, ceiling)
        ports = range(port, port + span)
        if _handed_out.isdisjoint(ports) and all(map(_bindable, ports)):  # a listening port does not bind
            _handed_out.update(ports)
            return port
    raise RuntimeError("no free loopback port")


def private_settings(run_dir: Path, cache_dir: Path, **overrides: object) -> Settings:
    """Settings for a Kafka + Redis of one's own on free loopback ports, kept in ``run_dir`` (tests, benchmarks)."""
    return load_settings(
        kafka_bootstrap=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        run_dir=run_dir,
        cache_dir=cache_dir,
        **overrides,
    )


def _spawn(service: Service, argv: list[str]) -> int:
    service.home.mkdir(parents=True, exist_ok=True)
    with service.log_file.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    record_pid(service, proc.pid)
    return proc.pid


def record_pid(service: Service, pid: int) -> None:
    """Write the pid, its start time and the boot: :func:`stop` never signals a reused pid (:meth:`Service.record`)."""
    service.home.mkdir(parents=True, exist_ok=True)
    service.pid_file.write_text(f"{pid} {_start_time(pid)} {_boot_id()}")


def _wait(service: Service, ready: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.pid() is None:
            raise InfraError(f"{service.name} exited while starting; log tail:\n{service.log_tail()}")
        if ready():
            return
        time.sleep(0.3)
    raise InfraError(f"{service.name} did not {what} within {timeout_s:.0f} s; log tail:\n{service.log_tail()}")


def _already_up(service: Service, port: int, answers: Callable[[], bool]) -> bool:
    """True when our own process answers on ``port``: it listens there (an answer alone may come from another
    process) and answers. An own process that does not (left over with other ports) is stopped; a foreign
    process on the port is an error, never touched."""
    if (pid := service.pid()) is not None:
        if port in _listening_ports(pid) and answers():
            return True
        stop(service)
    if port_open(port):
        raise _taken(service, port)
    return False


def _taken(service: Service, port: int) -> InfraError:
    """``port`` answers for a process ``service``'s run folder records none of: say where we looked and how to look
    elsewhere (the run folder is relative to the working directory by default, so from another folder the project's
    own services look foreign)."""
    return InfraError(
        f"port {port} is taken by a process this project did not start from the run folder {service.home.parent}: "
        f"if it did, from another folder, set {RUN_DIR_VARIABLE} to that folder's run folder (e.g. "
        f"{RUN_DIR_VARIABLE}=/path/to/checkout/.run); otherwise stop that process or give {service.name} another port"
    )


def status(settings: Settings) -> list[str]:
    """A line for the run folder, then one a service: answering or not (its recorded process), stopped, or not
    started from this run folder while its port answers (started from another folder, or not the project's)."""
    folder = settings.local.run_dir.resolve()
    lines = [f"run folder: {folder} ({RUN_DIR_VARIABLE})"]
    for service, port, answers in ((kafka_service(settings), settings.kafka.port, kafka_answers),
                                   (redis_service(settings), settings.redis.port, redis_answers)):  # fmt: skip
        if (pid := service.pid()) is not None:
            state = "answering" if answers(settings) else "running, not answering"
            lines.append(f"{service.name}: {state} (pid {pid})")
        elif port_open(port):
            lines.append(f"{service.name}: not started from {folder}, but something answers on port {port}")
        else:
            lines.append(f"{service.name}: stopped")
    return lines


# --- Kafka -------------------------------------------------------------------------------


def kafka_libs(settings: Settings) -> Path:
    """The broker's jars, fetched from Maven Central once into the cache folder."""
    libs = settings.local.cache_dir.resolve() / "kafka-3.9.1" / "libs"
    if not any(libs.glob("kafka_2.13-3.9.1.jar")):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError("Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)")
        argv = [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InfraError(f"fetching Kafka jars failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return libs


def _listeners(settings: Settings) -> list[str]:
    """The broker's listeners: clients on ``port`` with the configured protocol, the controller on ``port + 1``.

    A secured client listener (SSL, SASL_*) gets a plaintext loopback listener for the broker's own
    traffic on ``port + 2``, so the broker needs no credentials for itself; its keystore and users come
    from ``RECSTREAM_KAFKA_SERVER_PROPERTIES``.
    """
    port, protocol = settings.kafka.port, settings.kafka.security_protocol
    if protocol == "PLAINTEXT":
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]
    return [
        f"listeners={protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1},INTERNAL://127.0.0.1:{port + 2}",
        f"advertised.listeners={protocol}://127.0.0.1:{port},INTERNAL://127.0.0.1:{port + 2}",
        "inter.broker.listener.name=INTERNAL",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,{protocol}:{protocol}",
    ]


def _kafka_config(settings: Settings, service: Service, node_id: int = 1, voters: str | None = None) -> Path:
    """One combined broker + controller. ``voters`` (``id@host:port,...``) makes it one of a quorum; its size
    is the replication factor of the broker's own topics, and a write needs all replicas but one
    (``min.insync.replicas``), so a quorum of 3 keeps accepting acks=all writes with one broker down."""
    port = settings.kafka.port
    extra = settings.local.kafka_server_properties
    try:
        extra_lines = extra.read_text() if extra is not None else ""
    except (OSError, UnicodeDecodeError) as exc:  # a settings check passed it, but it may go or be a binary file
        raise InfraError(f"cannot read RECSTREAM_KAFKA_SERVER_PROPERTIES ({extra}): {exc}") from None
    voters = voters or f"{node_id}@127.0.0.1:{port + 1}"
    replicas = len(voters.split(","))
    config = service.home / "server.properties"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node_id}",
                f"controller.quorum.voters={voters}",
                *_listeners(settings),
                "controller.listener.names=CONTROLLER",
                f"log.dirs={service.data_dir}",
                "num.network.threads=2",
                "num.io.threads=2",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=4",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={max(1, replicas - 1)}",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={max(1, replicas - 1)}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.retention.hours=-1",
                extra_lines,
                "",
            ]
        )
    )
    (service.home / "log4j.properties").write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.logger.kafka.server.KafkaServer=INFO\n"
        "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    return config


def _java(settings: Settings, service: Service, main: str, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
    return [java, KAFKA_HEAP, "-XX:+UseG1GC", f"-Dkafka.logs.dir={service.home}",
            f"-Dlog4j.configuration=file:{service.home / 'log4j.properties'}",
            "-cp", f"{kafka_libs(settings)}/*", main, *args]  # fmt: skip


async def _admin_ping(settings: Settings) -> bool:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.describe_cluster()
        return True
    except Exception:
        return False
    finally:
        await admin.close()


def kafka_answers(settings: Settings) -> bool:
    return port_open(settings.kafka.port) and asyncio.run(_admin_ping(settings))


def kafka_up(settings: Settings) -> str:
    service = kafka_service(settings)
    if _already_up(service, settings.kafka.port, lambda: kafka_answers(settings)):
        return f"kafka already running (pid {service.pid()}) on {settings.kafka.bootstrap}"
    pid = _kafka_start(settings)
    _wait(service, lambda: kafka_answers(settings), "answer an admin request")
    return f"kafka started (pid {pid}) on {settings.kafka.bootstrap}"


def _kafka_start(settings: Settings, node_id: int = 1, voters: str | None = None, cluster_id: str | None = None) -> int:
    """Format the broker's storage on its first start (every member of a quorum with the same ``cluster_id``)
    and spawn it, without waiting: a member of a quorum answers only once a majority runs."""
    service = kafka_service(settings)
    service.home.mkdir(parents=True, exist_ok=True)
    config = _kafka_config(settings, service, node_id, voters)
    if not (service.data_dir / "meta.properties").exists():
        fmt = _java(settings, service, "kafka.tools.StorageTool", "format", "-t", cluster_id or uuid.uuid4().hex[:22],
                    "-c", str(config), "--ignore-formatted")  # fmt: skip
        result = subprocess.run(fmt, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InfraError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")
    return _spawn(service, _java(settings, service, "kafka.Kafka", str(config)))


def _refused(settings: Settings, response: Any) -> None:
    """Raise :class:`TopicsRefused` naming each topic the brokers did not create and why (a replication factor past
    the brokers' count, a config they refuse): the creation once returned as if it had made them, and every command
    after it met a topic that did not exist. A topic another process created meanwhile is no refusal."""
    refused = [
        f"{name}: {message or for_code(code).__name__}"
        for name, code, *rest in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
        for message in [rest[0] if rest else None]
    ]
    if refused:
        raise TopicsRefused(
            f"Kafka at {settings.kafka.bootstrap} refused to create {len(refused)} topic(s): {'; '.join(refused)}"
        )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the contract's topics if missing: events (retained), items/users/erasures (compacted), DLQ."""
    retention = {"retention.ms": str(settings.kafka.retention_ms)}
    compacted = {"cleanup.policy": "compact"}
    wanted = [
        NewTopic(
            settings.kafka.events_topic,
            settings.kafka.events_partitions,
            settings.kafka.replication_factor,
            topic_configs=retention,
        ),
        NewTopic(
            settings.kafka.items_topic,
            settings.kafka.items_partitions,
            settings.kafka.replication_factor,
            topic_configs=compacted,
        ),
        NewTopic(
            settings.kafka.users_topic,
            settings.kafka.users_partitions,
            settings.kafka.replication_factor,
            topic_configs=compacted,
        ),
        NewTopic(settings.kafka.erasures_topic, 1, settings.kafka.replication_factor, topic_configs=compacted),
        NewTopic(
            settings.kafka.dlq_topic,
            settings.kafka.dlq_partitions,
            settings.kafka.replication_factor,
            topic_configs=retention,
        ),
    ]
    async with kafka_admin(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another process created it meanwhile
                _refused(settings, await admin.create_topics(missing))
        await _until_led(settings, admin, [topic.name for topic in wanted])
        return [topic.name for topic in missing]


async def _until_led(settings: Settings, admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Return once the cluster's metadata lists every topic of ``names`` with a leader for each partition, else raise
    :class:`InfraError` after TOPICS_LED_S naming the others. A topic is created before its partitions have leaders:
    a producer started at once met "topic not found in cluster metadata". (A NotLeaderForPartition retry can still
    come: the broker may take up a partition a moment after the metadata names it leader; the producer retries.)"""
    deadline = time.monotonic() + TOPICS_LED_S
    while waiting := unled(await admin.describe_topics(names), names):
        if time.monotonic() > deadline:
            raise InfraError(
                f"Kafka at {settings.kafka.bootstrap}: no leader for every partition of {', '.join(waiting)} "
                f"{TOPICS_LED_S:.0f} s after their creation"
            )
        await asyncio.sleep(0.1)


def unled(topics: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Of ``names``, those the metadata ``topics`` (aiokafka's describe_topics) does not list without an error and with
    a leader for each partition (−1 while one is being elected).

    >>> led = {"topic": "a", "error_code": 0, "partitions": [{"partition": 0, "leader": 1, "error_code": 0}]}
    >>> electing = {"topic": "b", "error_code": 0, "partitions": [{"partition": 0, "leader": -1, "error_code": 5}]}
    >>> unled([led, electing], ["a", "b", "c"])
    ['b', 'c']
    """
    ready = {
        topic["topic"]
        for topic in topics
        if topic["error_code"] == 0
        and topic["partitions"]
        and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
    }
    return [name for name in names if name not in ready]


async def delete_topics(settings: Settings, doomed: Callable[[str], bool]) -> list[str]:
    """Delete the topics whose names ``doomed`` accepts; returns those deleted (one another process deleted meanwhile
    is no error). An :class:`InfraError` names each one the brokers refused to delete (aiokafka returns the refusal,
    raising nothing)."""
    async with kafka_admin(settings) as admin:
        names = sorted(filter(doomed, await admin.list_topics()))
        if not names:
            return []
        response = await admin.delete_topics(names)
    codes = dict(response.topic_error_codes)
    refused = [f"{name}: {for_code(code).__name__}" for name, code in codes.items()
               if code not in (0, UnknownTopicOrPartitionError.errno)]  # fmt: skip
    if refused:
        raise InfraError(f"Kafka at {settings.kafka.bootstrap} refused to delete {len(refused)} topic(s): "
                         f"{'; '.join(refused)}")  # fmt: skip
    return [name for name, code in codes.items() if code == 0]


@asynccontextmanager
async def kafka_admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client of the settings' Kafka, started, for the block."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=10_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


# --- Redis -------------------------------------------------------------------------------


def redis_binary() -> str:
    """``redis-server`` from Debian, installed on first use when running as root."""
    found = shutil.which("redis-server") or (os.path.exists("/usr/bin/redis-server") and "/usr/bin/redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        raise InfraError("redis-server is missing; install it: sudo apt-get install -y redis-server")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        if result.returncode != 0:
            raise InfraError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return "/usr/bin/redis-server"


def redis_answers(settings: Settings) -> bool:
    """A PING answered within a second; a slow or refused one is no answer yet (callers retry)."""
    try:
        with socket.create_connection(("127.0.0.1", settings.redis.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:  # refused, reset, or the recv timed out (a loaded machine)
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def repair_aof(service: Service) -> None:
    """Cut an append-only file that ends inside a transaction back to before its ``MULTI`` (``redis-check-aof --fix``).

    Why: a SIGKILL can stop Redis's ``write()`` of a batch script's MULTI/EXEC block part way. Redis 7.0 loads such a
    file anyway (``aof-load-truncated``) with the right data, but cuts the file after the block's last whole command,
    not before its ``MULTI``; the worker then retries the batch (its watermark was not written), and at the next
    restart the loader runs the leftover fragment inside the retried batch's transaction: a batch's ``HINCRBY`` is
    applied twice (the fault benchmark's redis-kill scenario once counted 36 events twice). redis-check-aof cuts
    before the ``MULTI``, and leaves a whole file as it is.
    """
    manifests = sorted((service.data_dir / "appendonlydir").glob("*.manifest"))
    if not manifests:
        return
    check = Path(redis_binary()).with_name("redis-check-aof")
    done = subprocess.run([str(check), "--fix", str(manifests[0])], input="y\n", capture_output=True, text=True)
    if done.returncode != 0:
        raise InfraError(f"redis-check-aof could not repair {manifests[0]}: {(done.stdout + done.stderr)[-500:]}")


def redis_up(settings: Settings, extra: Sequence[str] = ()) -> str:
    """Start a Redis server unless ours already answers; ``extra`` arguments (a cluster node's) go last."""
    service = redis_service(settings)
    if _already_up(service, settings.redis.port, lambda: redis_answers(settings)):
        return f"redis already running (pid {service.pid()}) on port {settings.redis.port}"
    service.data_dir.mkdir(parents=True, exist_ok=True)
    repair_aof(service)
    argv = [redis_binary(), "--port", str(settings.redis.port), "--bind", "127.0.0.1",
            "--dir", str(service.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--pidfile", str(service.home / "redis.pid"), *extra]  # fmt: skip
    pid = _spawn(service, argv)
    _wait(service, lambda: redis_answers(settings), "answer PING")
    return f"redis started (pid {pid}) on port {settings.redis.port}"


# --- Prometheus ----------------------------------------------------------------------------

PROMETHEUS_CONFIG = REPO_ROOT / "monitoring" / "prometheus.yml"
"""The one scrape config: docker-compose mounts it as is; :func:`prometheus_up` rewrites its targets."""
PROMETHEUS_PORT = 9090


def prometheus_service(settings: Settings) -> Service:
    return Service("prometheus", settings.local.run_dir.resolve() / "prometheus")


def prometheus_rule_files() -> list[Path]:
    """The rule files monitoring/prometheus.yml names (relative to it there), as paths."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return [PROMETHEUS_CONFIG.parent / name for name in config["rule_files"]]


def prometheus_config(targets: Mapping[str, str], interval_s: int | None = None) -> dict:
    """monitoring/prometheus.yml for a Prometheus on this machine: each job's target (a compose service name there)
    replaced by ``targets[job]`` (``host:port``), the rule files named by their paths; scrapes and rule evaluations
    every ``interval_s`` seconds when given (whole seconds: Prometheus reads no "0.5s"). Same jobs, same rules as in
    docker-compose.

    >>> config = prometheus_config({"recstream-worker": "127.0.0.1:1", "recstream-reader": "127.0.0.1:2"}, 1)
    >>> config["scrape_configs"][1]["static_configs"], config["global"]["scrape_interval"]
    ([{'targets': ['127.0.0.1:2']}], '1s')
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(targets):
        raise InfraError(f"Prometheus needs a target for each of {sorted(jobs)}, got {sorted(targets)}")
    config["rule_files"] = [str(path) for path in prometheus_rule_files()]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    if interval_s is not None:
        config["global"] = {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"}
    return config


def prometheus_answers(port: int) -> bool:
    try:
        with urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:  # refused, or an HTTP error: not ready
        return False


def prometheus_up(settings: Settings, targets: Mapping[str, str], port: int, interval_s: int | None = None) -> str:
    """Start Prometheus on ``port`` (loopback) scraping ``targets`` (:func:`prometheus_config`), with its own storage
    under the run folder; one started earlier for this run folder is stopped first (its targets may have moved)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise InfraError("prometheus is missing; install it: sudo apt-get install -y prometheus (./dev setup does)")
    service = prometheus_service(settings)
    stop(service)
    if port_open(port):
        raise _taken(service, port)
    shutil.rmtree(service.data_dir, ignore_errors=True)  # a run's series, not history: a start replays none
    service.home.mkdir(parents=True, exist_ok=True)
    config = service.home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, interval_s)))
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={service.data_dir}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    pid = _spawn(service, argv)
    try:
        _wait(service, lambda: prometheus_answers(port), "answer /-/ready")
    except BaseException:  # not ready in time, or Ctrl-C: its own session, so nothing else would stop it
        stop(service)
        raise
    return f"prometheus started (pid {pid}) on port {port}"


# --- both ----------------------------------------------------------------------------------


def stop(service: Service, timeout_s: float = 30.0, sig: signal.Signals = signal.SIGTERM) -> str:
    """Send ``sig`` to the recorded pid, SIGKILL (its whole process group) after ``timeout_s``; never touches any
    other process.

    ``sig=signal.SIGKILL`` is a crash (no shutdown, no final flush), for the fault tests.
    """
    return _stopped(service, _send(service, sig), timeout_s)


def stop_all(services: Sequence[Service], timeout_s: float = 30.0) -> list[str]:
    """:func:`stop` several at once: SIGTERM to every one first, then each waited for in turn, each wait run even
    when one before it is interrupted (a second Ctrl-C or a SIGTERM during Kafka's shutdown still stops Redis)."""
    sent = [(service, _send(service, signal.SIGTERM)) for service in services]
    report: list[str] = []
    with ExitStack() as waits:  # its callbacks run last pushed first, each one whatever the one before raised
        for service, record in reversed(sent):
            waits.callback(lambda s=service, r=record: report.append(_stopped(s, r, timeout_s)))
    return report


def _send(service: Service, sig: signal.Signals) -> tuple[int, int] | None:
    """Forget ``service``'s record and send ``sig`` to its process: its pid and start time, None when not running."""
    record = service.record()
    service.pid_file.unlink(missing_ok=True)
    return record if record is not None and _signal(*record, sig) else None


def _stopped(service: Service, record: tuple[int, int] | None, timeout_s: float) -> str:
    """Wait for the process :func:`_send` signalled to exit, SIGKILL it after ``timeout_s``, reap it if it is ours."""
    if record is None:
        return f"{service.name} not running"
    pid, started = record
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _start_time(pid) == started:
        time.sleep(0.1)
    _signal(pid, started, signal.SIGKILL)
    with suppress(ChildProcessError):  # reap it when this very process started it
        os.waitpid(pid, 0)
    return f"{service.name} stopped (pid {pid})"


def _signal(pid: int, started: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process that started at ``started``, checked before every signal
    (once it exits, its pid may be reused); False when it is gone, also when it goes between check and signal."""
    if _start_time(pid) != started:
        return False
    try:
        if sig == signal.SIGKILL:
            _kill_group(pid)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pid: int) -> None:
    """SIGKILL ``pid`` and, when it leads its process group (every process this module starts leads a session of
    its own), the whole group: uvicorn's worker processes (``serve --workers N``) outlive a SIGKILL of their parent."""
    if os.getpgid(pid) == pid:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def terminate(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Stop a child process we started: SIGTERM (a clean shutdown commits and flushes), SIGKILL to its process
    group after ``timeout_s``, and reap it (its pid stays ours until then, so no start time needs checking)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()


PORT_VARIABLES = {"worker": "RECSTREAM_WORKER_METRICS_PORT", "serve": "RECSTREAM_READER_PORT"}


CHILD_SUFFIX = ".child"  # a Child's pid is recorded in <log>.<pid>.child/pid until it is stopped


class Child:
    """A ``recstream worker`` or ``recstream serve`` child process with the settings in its environment, on
    ``port`` (its /metrics or HTTP port; a free one when not given), stopped or killed by its own pid.

    Its own session: Ctrl-C reaches only the parent, which stops its children itself. Every test,
    benchmark and the demo start the workers and readers they need through this one class."""

    def __init__(
        self,
        command: Literal["worker", "serve"],
        settings: Settings,
        log: Path,
        port: int | None = None,
    ) -> None:
        self.command, self.log = command, log
        self.port = port or free_port()
        full_env = {**settings.environment(os.environ), "OPENBLAS_NUM_THREADS": "1",  # many small solves
                    PORT_VARIABLES[command]: str(self.port)}  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recstream.shell.cli", command], env=full_env, start_new_session=True,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        name = f"{log.name}.{self.proc.pid}{CHILD_SUFFIX}"  # children may share a log
        self.record = Service(name, log.parent / name)
        record_pid(self.record, self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        """InfraError, naming the log, when the process has exited."""
        if not self.alive():
            raise InfraError(f"recstream {self.command} exited with {self.proc.returncode}; see {self.log}")

    def metrics(self) -> str:
        """Its Prometheus exposition text (the reader serves /metrics too)."""
        with urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until a reader's /readyz answers 200 (Redis and a model) or a worker's /metrics answers;
        InfraError, naming the log, when it exits or the time runs out first."""
        path = "/readyz" if self.command == "serve" else "/metrics"
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            with suppress(OSError), urlopen(f"{self.url}{path}", timeout=1) as response:  # 503, refused: not yet
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise InfraError(f"recstream {self.command} not ready in {timeout_s:.0f} s; see {self.log}")
            time.sleep(0.2)

    def kill(self) -> None:
        """A crash: SIGKILL to its process group (a reader's uvicorn workers too), no shutdown (for the fault
        tests)."""
        if self.proc.poll() is None:
            _kill_group(self.proc.pid)
        self.proc.wait()
        self.record.forget()

    def stop(self) -> None:
        terminate(self.proc)
        self.record.forget()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def logs_dir(settings: Settings) -> Path:
    """Where the demo's worker and reader log and record their pids, which :func:`down` stops."""
    return settings.local.run_dir.resolve() / "logs"


def stop_children(logs: Path) -> list[str]:
    """Stop the workers and readers whose records lie in ``logs`` itself (a :class:`Child` records its pid in
    ``<log>.<pid>.child/pid`` beside its log), by pid, and nothing else: not what is recorded in folders below it
    (another run's folder may be there), nor a file merely named ``pid``."""
    return [stop(service) for service in recorded(logs, f"*{CHILD_SUFFIX}/pid")]


def recorded(folder: Path, pattern: str) -> list[Service]:
    """The services whose pid files ``folder.glob(pattern)`` finds (``*/pid``: those of the folder itself;
    ``**/pid``: anywhere below it), in path order."""
    return [Service(pid_file.parent.name, pid_file.parent) for pid_file in sorted(folder.glob(pattern))]


def stop_recorded(root: Path) -> list[str]:
    """Stop every process whose pid is recorded anywhere under ``root``: workers and readers first, then Kafka and
    Redis (a worker stopping cleanly commits to Kafka). A sweep of a folder that holds nothing but one run's
    folders, for a run that ended before its own cleanup did, e.g. a pytest-xdist worker ended with ``os._exit``
    (tests/conftest.py): the processes it started each run in a session of their own."""
    services = sorted(recorded(root, "**/pid"), key=lambda service: not service.name.endswith(CHILD_SUFFIX))
    return [stop(service) for service in services]


def _stopper(settings: Settings) -> Callable[[], list[str]]:
    """Stops Kafka and Redis where they were started (or replaced) after this call: what a caller started itself."""
    services = (kafka_service(settings), redis_service(settings))
    before = {service: service.record() for service in services}
    return lambda: stop_all([service for service in services if service.record() != before[service]])


def up(settings: Settings) -> list[str]:
    """Start Redis and Kafka (each only if not already running) and create the topics. A failure, or an interrupt,
    stops what this call started (a Redis started before Kafka failed) before it propagates."""
    stop_started = _stopper(settings)
    try:
        report = [redis_up(settings), kafka_up(settings)]
        created = asyncio.run(ensure_topics(settings))
    except BaseException:
        stop_started()
        raise
    report.append(f"topics created: {', '.join(created)}" if created else "topics present")
    return report


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started and what the demo runs beside it, by their recorded pids: its worker and reader
    first (a worker stopping cleanly commits to Kafka), then Prometheus, Kafka and Redis. Benchmarks' services, in
    folders of their own under the run folder, are not its to stop."""
    return stop_children(logs_dir(settings)) + stop_all(
        [prometheus_service(settings), kafka_service(settings), redis_service(settings)]
    )


@contextmanager
def running(settings: Settings) -> Iterator[list[str]]:
    """Bring the services up for the block and stop what this call started (for tests and the demo): not a service
    that was running and answering before, but one ``up`` started in place of a recorded one that did not answer."""
    stop_started = _stopper(settings)
    try:
        yield up(settings)
    finally:  # also when the block was interrupted (up() stops what it started when it fails)
        stop_started()


def interrupt(signum: int, frame: object) -> None:
    """A handler of :data:`STOP_SIGNALS` that stops the process like Ctrl-C, so ``with`` blocks still stop what they
    started.

    Inside ``asyncio.run`` SIGINT cancels the main task cleanly; elsewhere it raises KeyboardInterrupt. A
    process started in the background by a script ignores SIGINT: then this raises KeyboardInterrupt itself."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.raise_signal(signal.SIGINT)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""``kill <pid>``, a CI runner giving up, the terminal closing: the workers, readers, Kafka and Redis run in sessions
of their own, so no terminal's SIGHUP reaches them; the process that started them must stop them."""


def route_stop_signals() -> dict[signal.Signals, object]:
    """Make each of :data:`STOP_SIGNALS` stop the process like Ctrl-C (:func:`interrupt`), except one it was started
    ignoring (``nohup`` ignores SIGHUP); returns the handlers replaced."""
    return {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """``kill <pid>`` (or SIGHUP) stops the block as cleanly as Ctrl-C (:func:`route_stop_signals`); the old handlers
    come back after."""
    previous = route_stop_signals()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- clusters: a replicated Kafka and a Redis Cluster (tests and benchmarks; issue 18) ---------------------------

CLUSTER_BROKERS = 3
REDIS_CLUSTER_NODES = 6
"""3 masters, each with one replica (``redis-cli --cluster create --cluster-replicas 1``)."""
REDIS_CLUSTER_SLOTS = 16_384
CLUSTER_START_TIMEOUT_S = 240.0
"""Three JVMs start at once on a shared machine: each broker gets longer than a single one (START_TIMEOUT_S)."""
REDIS_NODE_TIMEOUT_MS = 2000
"""How long a silent master is waited for before its replica takes over (``cluster-node-timeout``)."""


@dataclass(frozen=True)
class Clusters:
    """A KRaft Kafka of :data:`CLUSTER_BROKERS` combined brokers and a Redis Cluster on loopback, every node its own
    process and folder, started by :func:`running_clusters`.

    ``settings`` is what clients use: every broker in the bootstrap list, replication factor 3, the first Redis node
    with ``redis_cluster``. ``brokers`` and ``redis_nodes`` are each node's own settings (its port and run folder),
    which :func:`kafka_service`, :func:`redis_service` and :func:`stop` take, so a test stops one node by its pid.
    """

    settings: Settings
    brokers: tuple[Settings, ...]
    redis_nodes: tuple[Settings, ...]
    redis_buses: tuple[int, ...]
    voters: str
    cluster_id: str

    def start_broker(self, k: int) -> None:
        """Start broker ``k`` (again: its data folder is kept) and wait until it answers."""
        node = self.brokers[k]
        _kafka_start(node, k + 1, self.voters, self.cluster_id)
        _wait(kafka_service(node), lambda: kafka_answers(node), "answer an admin request", CLUSTER_START_TIMEOUT_S)

    def kill_broker(self, k: int) -> str:
        """A crash of broker ``k``: SIGKILL, no shutdown."""
        return stop(kafka_service(self.brokers[k]), sig=signal.SIGKILL)

    def start_redis(self, k: int) -> str:
        """Start Redis node ``k`` (again: it rejoins from its ``nodes.conf``, as a replica if it was replaced)."""
        node = self.redis_nodes[k]
        return redis_up(node, _cluster_node_args(self.redis_buses[k]))

    def kill_redis(self, k: int) -> str:
        """A crash of Redis node ``k``: SIGKILL; its replica takes over after :data:`REDIS_NODE_TIMEOUT_MS`."""
        return stop(redis_service(self.redis_nodes[k]), sig=signal.SIGKILL)

    def redis_roles(self) -> dict[int, str]:
        """Node index → ``master`` or ``replica``, as the live nodes see it (failed nodes left out)."""
        ports = {node.redis.port: k for k, node in enumerate(self.redis_nodes)}
        for node in self.redis_nodes:
            if redis_service(node).pid() is None:
                continue
            roles = {}
            for line in _redis_command(node, "CLUSTER", "NODES").splitlines():
                _, address, flags, *_ = line.split()
                port = int(address.split("@")[0].rpartition(":")[2])
                if "fail" not in flags and port in ports:
                    roles[ports[port]] = "master" if "master" in flags.split(",") else "replica"
            return roles
        raise InfraError("no Redis cluster node is running")

    def wait_redis_ok(self, replicated: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every running node says ``cluster_state:ok`` and, if ``replicated``, every master has a replica
        connected (a master whose replica took over has none until the old master is back)."""
        deadline = time.monotonic() + timeout_s
        while not self._redis_ok(replicated):
            if time.monotonic() > deadline:
                raise InfraError(f"the Redis cluster is not ok after {timeout_s:.0f} s: roles {self.redis_roles()}")
            time.sleep(0.3)

    def redis_master_of(self, key: str) -> int:
        """The index of the node serving ``key``'s hash slot now (a failover moves it to the old replica)."""
        slot = key_slot(key.encode())
        ports = {node.redis.port: k for k, node in enumerate(self.redis_nodes)}
        for node in self.redis_nodes:
            if redis_service(node).pid() is None:
                continue
            for line in _redis_command(node, "CLUSTER", "NODES").splitlines():
                fields = line.split()  # id, address, flags, master, ping, pong, epoch, link state, slot ranges...
                address, flags, ranges = fields[1], fields[2], [r for r in fields[8:] if not r.startswith("[")]
                if "master" not in flags.split(",") or "fail" in flags:
                    continue
                for served in ranges:
                    low, _, high = served.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return ports[int(address.split("@")[0].rpartition(":")[2])]
            break
        raise InfraError(f"no live master serves slot {slot} of {key!r}")

    def wait_replicated(self, timeout_s: float = 30.0) -> None:
        """Until every replica has every write its master acknowledged so far (replication is asynchronous: a
        master that crashes before its replica caught up loses the difference, which tests must not mistake)."""
        deadline = time.monotonic() + timeout_s
        while not all(_replicas_caught_up(node) for node in self.redis_nodes if redis_service(node).pid() is not None):
            if time.monotonic() > deadline:
                raise InfraError(f"the Redis replicas did not catch up in {timeout_s:.0f} s")
            time.sleep(0.1)

    def restore(self, timeout_s: float = CLUSTER_START_TIMEOUT_S) -> list[str]:
        """Bring the clusters back to what :func:`clusters_up` left, whatever a test killed or failed over: every
        broker and Redis node running, every node at ``cluster_state:ok`` with all 16,384 slots served, each master
        with a replica in sync with it, and every replica of every topic partition in sync. Returns the nodes it
        had to start again (a fault test that stopped early leaves one down)."""
        started = []
        for k, node in enumerate(self.brokers):
            if kafka_service(node).pid() is None:
                self.start_broker(k)
                started.append(f"broker {k + 1}")
        for k, node in enumerate(self.redis_nodes):
            if redis_service(node).pid() is None:
                self.start_redis(k)
                started.append(f"redis {node.redis.port}")
        self.wait_redis_ok(timeout_s=timeout_s)
        self.wait_replicated(timeout_s=timeout_s)
        if self.brokers:
            _wait_until(lambda: asyncio.run(_partitions_in_sync(self.settings)), timeout_s, "topic replicas in sync")
        return started

    def _redis_ok(self, replicated: bool) -> bool:
        running = [node for node in self.redis_nodes if redis_service(node).pid() is not None]
        try:
            for node in running:
                info = _redis_command(node, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_slots_ok:{REDIS_CLUSTER_SLOTS}" not in info:
                    return False
            if not replicated:
                return True
            masters = [running[k] for k, role in enumerate(self._roles(running)) if role == "master"]
            return all("connected_slaves:0" not in _redis_command(node, "INFO", "replication") for node in masters)
        except (OSError, subprocess.CalledProcessError):
            return False

    def _roles(self, nodes: list[Settings]) -> list[str]:
        return [_redis_command(node, "ROLE").split()[0] for node in nodes]

    def stop(self) -> list[str]:
        """Stop every node started (SIGTERM, then SIGKILL), by pid."""
        return [stop(kafka_service(node)) for node in self.brokers] + [stop(redis_service(n)) for n in self.redis_nodes]


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise InfraError(f"not {what} after {timeout_s:.0f} s")
        time.sleep(0.3)


async def _partitions_in_sync(settings: Settings) -> bool:
    """Every partition of every topic has all its replicas in sync (a restarted broker catches up after it answers:
    killing another one before that would leave partitions below ``min.insync.replicas``)."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=5000)
    try:
        await admin.start()
        topics = await admin.describe_topics()
    except Exception:
        return False
    finally:
        await admin.close()
    return all(sorted(p["isr"]) == sorted(p["replicas"]) for topic in topics for p in topic["partitions"])


def _replicas_caught_up(node: Settings) -> bool:
    """A replica, or a master whose every replica's offset reached the master's replication offset."""
    info = dict(line.split(":", 1) for line in _redis_command(node, "INFO", "replication").split() if ":" in line)
    if info.get("role") != "master":
        return True
    offset = int(info["master_repl_offset"])
    replicas = [
        dict(kv.split("=") for kv in v.split(",")) for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()
    ]
    return all(int(replica["offset"]) >= offset for replica in replicas)


def _cluster_node_args(bus: int) -> list[str]:
    return ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
            "--cluster-node-timeout", str(REDIS_NODE_TIMEOUT_MS)]  # fmt: skip


def _redis_command(node: Settings, *argv: str) -> str:
    """One command through ``redis-cli`` (a CLUSTER or INFO answer as text)."""
    cli = str(Path(redis_binary()).with_name("redis-cli"))
    return subprocess.run([cli, "-p", str(node.redis.port), *argv], capture_output=True, text=True, check=True,
                          timeout=10).stdout  # fmt: skip


def clusters_up(settings: Settings, kafka: bool = True, attempts: int = 3) -> Clusters:
    """Start the clusters in ``settings.local.run_dir`` on free loopback ports and create the topics (RF 3);
    ``kafka=False``: the Redis Cluster only (``settings``' Kafka stays what clients use).

    A port picked free can be taken by another process before a node binds it: a failed start stops what it
    started and tries again on fresh ports and folders, ``attempts`` times in all."""
    for attempt in range(1, attempts):
        with suppress(InfraError):
            return _clusters_up(settings.replace(run_dir=settings.local.run_dir / f"attempt-{attempt}"), kafka)
    return _clusters_up(settings.replace(run_dir=settings.local.run_dir / f"attempt-{attempts}"), kafka)


def _clusters_up(settings: Settings, kafka: bool) -> Clusters:
    """One attempt of :func:`clusters_up`; stops what it started before raising if any part fails."""
    base = settings.local.run_dir.resolve()
    kafka_ports = [free_port(2) for _ in range(CLUSTER_BROKERS)] if kafka else []  # free_port never repeats a port
    redis_ports = [free_port() for _ in range(2 * REDIS_CLUSTER_NODES)]
    brokers = tuple(
        settings.replace(kafka_bootstrap=f"127.0.0.1:{port}", run_dir=base / f"broker-{k + 1}")
        for k, port in enumerate(kafka_ports)
    )
    nodes = tuple(
        settings.replace(redis_url=f"redis://127.0.0.1:{port}/0", run_dir=base / f"redis-{port}")
        for port in redis_ports[:REDIS_CLUSTER_NODES]
    )
    clusters = Clusters(
        settings=settings.replace(
            **({"kafka_bootstrap": ",".join(f"127.0.0.1:{p}" for p in kafka_ports)} if kafka else {}),
            replication_factor=CLUSTER_BROKERS if kafka else settings.kafka.replication_factor,
            redis_url=nodes[0].redis.url,
            redis_cluster=True,
        ),
        brokers=brokers,
        redis_nodes=nodes,
        redis_buses=tuple(redis_ports[REDIS_CLUSTER_NODES:]),
        voters=",".join(f"{k + 1}@127.0.0.1:{port + 1}" for k, port in enumerate(kafka_ports)),
        cluster_id=uuid.uuid4().hex[:22],
    )
    try:
        for k in range(REDIS_CLUSTER_NODES):
            clusters.start_redis(k)
        cli = str(Path(redis_binary()).with_name("redis-cli"))
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{node.redis.port}" for node in nodes),
                  "--cluster-replicas", "1", "--cluster-yes"]  # fmt: skip
        result = subprocess.run(create, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise InfraError(f"redis-cli --cluster create failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        for k, node in enumerate(brokers):
            _kafka_start(node, k + 1, clusters.voters, clusters.cluster_id)
        for node in brokers:
            _wait(kafka_service(node), lambda node=node: kafka_answers(node), "answer an admin request",
                  CLUSTER_START_TIMEOUT_S)  # fmt: skip
        clusters.wait_redis_ok()
        if kafka:
            asyncio.run(ensure_topics(clusters.settings))
    except BaseException:
        clusters.stop()
        raise
    return clusters


@contextmanager
def running_clusters(settings: Settings, kafka: bool = True) -> Iterator[Clusters]:
    """:func:`clusters_up` for the block; every node it started is stopped after, by pid."""
    clusters = clusters_up(settings, kafka)
    try:
        yield clusters
    finally:
        clusters.stop()
