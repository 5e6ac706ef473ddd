"""Kafka with SASL over TLS: every client of the project connects through it, and nothing connects without it.

A broker of this module's own, started by the project's ``infra`` with a SASL_SSL client listener (PLAIN
users and a PEM keystore appended through ``RECSTREAM_KAFKA_SERVER_PROPERTIES``), a CA and a server
certificate made here with ``openssl``; stopped by its pid. Redis is the session's, under a prefix of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from recstream.contracts.events import Event, ItemEvent, UserEvent
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings, load_settings
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.shell import infra
from tests.conftest import REPO, wait_until
from tests.serving.conftest import LiveReader
from tests.streams.scenario import T0

pytestmark = pytest.mark.integration  # real Redis (and Kafka): out of a `-m 'not integration'` run

PASSWORD = "app-secret-7c1d"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _certificates(folder: Path) -> tuple[Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 it signed, as Kafka's PEM keystore (PKCS#8 key + chain)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", ca_key, "-out", ca,
             "-subj", "/CN=recstream test CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
             "-out", cert, "-extfile", folder / "san.ext")  # fmt: skip
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", key, "-out", folder / "server.pk8")
    keystore = folder / "keystore.pem"
    keystore.write_text((folder / "server.pk8").read_text() + cert.read_text())
    return ca, keystore


@pytest.fixture(scope="module")
def secured(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the certificates")
    folder = tmp_path_factory.mktemp("secured-kafka")
    ca, keystore = _certificates(folder)
    server = folder / "server-extra.properties"
    server.write_text(
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={keystore}\n"
        "sasl.enabled.mechanisms=PLAIN\n"
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        f'org.apache.kafka.common.security.plain.PlainLoginModule required user_app="{PASSWORD}";\n'
    )
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{infra.free_port(span=3)}",
        redis_url=services.redis.url,
        redis_prefix=f"sec{uuid.uuid4().hex[:6]}",
        run_dir=folder / "run",
        cache_dir=REPO / ".cache",
        security_protocol="SASL_SSL",
        sasl_username="app",
        sasl_password=PASSWORD,
        ssl_cafile=ca,
        kafka_server_properties=server,
        worker_group="secured-workers",
    )
    try:
        infra.kafka_up(settings)
        asyncio.run(infra.ensure_topics(settings))
        yield settings
    finally:
        infra.stop(infra.kafka_service(settings))


async def _refused(topic: str, **options: object) -> bool:
    producer = AIOKafkaProducer(request_timeout_ms=3000, **options)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(producer.start(), timeout=8)
        await asyncio.wait_for(producer.send_and_wait(topic, b"x"), timeout=8)
    except (KafkaError, TimeoutError, OSError):
        return True
    finally:
        await producer.stop()
    return False


async def test_a_client_without_tls_or_with_a_wrong_password_is_refused(secured):
    """Refused for the TLS and the password alone: the same send with the right options gets through."""
    from recstream.eventlog.connection import client_options

    topic = secured.kafka.events_topic
    assert not await _refused(topic, **client_options(secured.kafka))
    assert await _refused(topic, bootstrap_servers=secured.kafka.bootstrap)
    assert await _refused(topic, **client_options(secured.replace(sasl_password="wrong").kafka))


async def test_producer_worker_log_reader_and_reader_all_work_over_sasl_ssl(secured, tmp_path):
    """The worker applies what the project's producer and the reader's POST /v1/events published; the log reader
    of ``recstream train`` reads the same events back."""
    async with EventProducer(secured) as producer:
        await producer.send_user(UserEvent(user_id="u1", ts=T0, attributes={"age": 30}))
        await producer.send_item(ItemEvent(op="new", item_id="i1", ts=T0, created_ts=T0, categories=["news"]))
        await producer.send_events([Event(type="view", user_id="u1", item_id="i1", ts=T0 + 1)])
        await producer.flush()
    client = redis.Redis.from_url(secured.redis.url)
    views = Keys(secured.redis.prefix)("views")
    writes = secured.replace(open_writes=True)  # the route is under test here, not its key
    with infra.Child("worker", secured, tmp_path / "worker.log") as worker, LiveReader(writes) as reader:
        worker.wait_ready()
        wait_until(lambda: client.hget(views, "i1") == b"1", timeout_s=90, what="the producer's view applied")
        body = [{"type": "view", "user_id": "u1", "item_id": "i1", "ts": T0 + 2}]
        async with httpx.AsyncClient(base_url=reader.url, timeout=10) as http:
            answer = await http.post("/v1/events", json=body)
        assert answer.status_code == 202, answer.text
        wait_until(lambda: client.hget(views, "i1") == b"2", timeout_s=60, what="the reader's view applied")
    records = [record async for chunk in training.read_log(secured) for record in chunk]
    assert sum(r.kind == "event" for r in records) == 2
