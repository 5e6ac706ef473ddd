"""Session-scoped real services: one Kafka broker and one Redis on free loopback ports.

They are started with the project's own ``infra`` code (the same as ``recstream infra up``)
in a temporary run folder and stopped, by the pids recorded at start, when the session
ends. Tests isolate themselves with their own topics and Redis database
(``isolated_settings``), never by mocking either service.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recstream import infra
from recstream.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
MOVIELENS = REPO.parent / "shared" / "data" / "ml-100k"


def free_port(span: int = 1) -> int:
    """A loopback port with ``span`` consecutive free ports (Kafka needs two: broker and controller)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + span < 65535 and not any(infra.port_open(port + k) for k in range(span)):
            return port
    raise RuntimeError("no free loopback port")


@pytest.fixture(scope="session")
def movielens() -> Path:
    if not (MOVIELENS / "u.data").is_file():
        pytest.skip(f"MovieLens 100K is not at {MOVIELENS}")
    return MOVIELENS


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Kafka + Redis for the whole session; yields the settings that point at them."""
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        run_dir=tmp_path_factory.mktemp("run"),
        cache_dir=REPO / ".cache",
    )
    with infra.running(settings):
        yield settings


@pytest.fixture
def isolated_settings(services: Settings) -> Iterator[Settings]:
    """Fresh topics (unique names) and an empty Redis database for one test."""
    suffix = uuid.uuid4().hex[:8]
    settings = services.model_copy(
        update={
            "events_topic": f"events-{suffix}",
            "items_topic": f"items-{suffix}",
            "users_topic": f"users-{suffix}",
            "dlq_topic": f"events-dlq-{suffix}",
            "redis_url": services.redis_url.rsplit("/", 1)[0] + "/1",
        }
    )
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    asyncio.run(infra.ensure_topics(settings))
    yield settings
    client.flushdb()
    client.close()
