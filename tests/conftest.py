"""Session-scoped real services: one Kafka broker and one Redis on free loopback ports.

They are started with the project's own ``infra`` code (the same as ``recstream infra up``)
in a temporary run folder and stopped, by the pids recorded at start, when the session
ends. Tests isolate themselves with their own topics and Redis database
(``isolated_settings``), never by mocking either service.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bench.common import movielens_dir
from recstream.contracts.settings import Settings
from recstream.shell import infra

REPO = Path(__file__).resolve().parent.parent
MOVIELENS = movielens_dir()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clusters",
        action="store_true",
        help="also run the tests on a 3-broker Kafka and a 6-node Redis Cluster (slow: four JVMs and six Redis)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (``timeout``, a CI runner giving up) and SIGHUP (the terminal closing) end the run like Ctrl-C, so
    the session fixtures still stop the Kafka and Redis they started instead of leaving them running."""
    infra.route_stop_signals()
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, …: each picks its ports from a slice of its own
    if worker is not None:
        infra.use_port_slice(int(worker.removeprefix("gw")), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))


def pytest_unconfigure(config: pytest.Config) -> None:
    """In the process that ran the session (the controller under pytest-xdist): stop every worker, reader, Kafka and
    Redis a test started that is still running, by the pid (and start time) recorded under the session's temporary
    folder.

    After a normal run this finds nothing. It matters when a parallel run is interrupted: xdist gives a worker about
    10 s to finish (then execnet calls ``os._exit``), and stopping a test's workers and then Kafka can take longer,
    so the worker's own fixtures may not reach its Redis. Every worker's folder is under the controller's (xdist
    hands each ``<basetemp>/popen-gwN`` from ``config._tmp_path_factory``, as read here)."""
    factory = getattr(config, "_tmp_path_factory", None)
    if hasattr(config, "workerinput") or factory is None:
        return
    infra.stop_recorded(factory.getbasetemp())


@pytest.fixture(scope="session")
def movielens() -> Path:
    if not (MOVIELENS / "u.data").is_file():
        pytest.skip(f"MovieLens 100K is not at {MOVIELENS} (set MOVIELENS_DIR)")
    return MOVIELENS


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Kafka + Redis for the whole session; yields the settings that point at them."""
    settings = infra.private_settings(tmp_path_factory.mktemp("run"), REPO / ".cache")
    with infra.running(settings):
        yield settings


@pytest.fixture(scope="session")
def cluster_nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Clusters]:
    """A 3-broker KRaft Kafka (replication factor 3, ``min.insync.replicas`` 2) and a Redis Cluster of 3 masters
    and 3 replicas for the whole session, only with ``--clusters``; every node is stopped by its pid after."""
    if not request.config.getoption("--clusters"):
        pytest.skip("needs --clusters (a replicated Kafka and a Redis Cluster)")
    settings = infra.private_settings(tmp_path_factory.mktemp("clusters"), REPO / ".cache")
    with infra.running_clusters(settings) as running:
        yield running


@pytest.fixture
def clusters(cluster_nodes: infra.Clusters) -> Iterator[infra.Clusters]:
    """The session's clusters, whole before and after each test (:meth:`infra.Clusters.restore`: killed nodes
    started again, every slot served, replicas in sync), so a fault test that stopped halfway leaves the next
    test, whichever it is, what a fresh start would."""
    cluster_nodes.restore()
    yield cluster_nodes
    cluster_nodes.restore()


@pytest.fixture
def isolated_settings(services: Settings) -> Iterator[Settings]:
    """Fresh topics (unique names) and an empty Redis database for one test."""
    suffix = uuid.uuid4().hex[:8]
    settings = services.on_topics(
        suffix, worker_group=f"worker-{suffix}", redis_url=services.redis.url.rsplit("/", 1)[0] + "/1"
    )
    client = redis.Redis.from_url(settings.redis.url)
    client.flushdb()
    asyncio.run(infra.ensure_topics(settings))
    yield settings
    client.flushdb()
    client.close()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], infra.Child]]:
    """Start workers (real ``recstream worker`` processes, so a test can SIGKILL one at any instant); every one
    this test started is stopped (by its own pid) at the end."""
    started: list[infra.Child] = []

    def start(settings: Settings) -> infra.Child:
        started.append(infra.Child("worker", settings, tmp_path / "worker.log"))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)
