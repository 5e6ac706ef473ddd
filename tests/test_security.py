"""Security: Redis with a password (and over TLS) for the worker and the reader, and no secret in reprs or logs.

The secured Redis is private to this module: a ``redis-server`` with ``requirepass`` and a TLS port with a
self-signed certificate generated here with ``openssl``; started on free loopback ports and stopped by its
pid. Only a ``redis-server`` built without TLS (Debian's has it) gets a password-only server and the TLS
case skips; any other failure to start it with TLS fails the tests.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import SecretStr
from recstream.serving.app import create_app

from recstream.contracts.events import Event, ItemEvent
from recstream.contracts.settings import Settings, load_settings
from recstream.shell.infra import free_port
from tests.conftest import wait_until
from tests.serving.conftest import reader_client
from tests.streams.scenario import T0, applied_events, publish

PASSWORD = "pw-9f3c1e7d"
API_KEY = "key-5b8e2a40"


def test_settings_print_no_secret():
    settings = load_settings(redis_url=f"rediss://app:{PASSWORD}@redis.internal:6380/0", api_key=API_KEY)
    for text in (repr(settings), str(settings), f"{settings}"):
        assert PASSWORD not in text and API_KEY not in text
        assert "rediss://app:***@redis.internal:6380/0" in text
    assert settings.redis.url.endswith(f"{PASSWORD}@redis.internal:6380/0"), "the value itself is intact"
    assert settings.to_env()["RECSTREAM_API_KEY"] == API_KEY, "child processes still get the real values"


@dataclass(frozen=True)
class SecuredRedis:
    port: int
    tls_port: int | None
    ca_file: Path

    def url(self, tls: bool, password: str = PASSWORD) -> str:
        if tls:
            return f"rediss://:{password}@127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca_file}"
        return f"redis://:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl")
    folder = tmp_path_factory.mktemp("secured-redis")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port, tls_port = free_port(), free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
           "--tls-auth-clients", "no"]  # fmt: skip
    base = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--requirepass", PASSWORD, "--save", "",
            "--appendonly", "no", "--dir", folder]  # fmt: skip
    log = folder / "redis.log"

    def start(argv: list) -> subprocess.Popen:
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    client = redis.Redis.from_url(SecuredRedis(port, tls_port, cert).url(tls=False))
    proc = start([*base, *tls])
    try:
        wait_until(lambda: proc.poll() is not None or _answers(client), timeout_s=10, what="the secured redis-server")
        if proc.poll() is not None:
            if not built_without_tls(log.read_text(errors="replace")):
                pytest.fail(f"redis-server with TLS exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            proc, tls_port = start(base), None
            wait_until(lambda: _answers(client), timeout_s=10, what="the password-only redis-server")
        yield SecuredRedis(port, tls_port, cert)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def built_without_tls(log: str) -> bool:
    """Whether redis-server refused its TLS options for want of TLS support, not for another reason (a bad
    certificate, a port in use): up to 7.0 a build without TLS knows no ``tls-*`` directive; from 7.2, built
    with TLS as a module, it lacks the TLS connection type until the module is loaded."""
    return "Missing implement of connection type tls" in log or bool(
        re.search(r"^>>> 'tls-[a-z-]+ .*'\nBad directive or wrong number of arguments$", log, re.MULTILINE)
    )


@pytest.mark.parametrize(
    ("log", "without_tls"),
    [
        ("\n*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***\nReading the configuration file, at line 9\n"
         ">>> 'tls-port \"6380\"'\nBad directive or wrong number of arguments\n", True),
        ("1:M 01 Jan 2026 00:00:00.000 # Missing implement of connection type tls\n", True),
        ("\n*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***\nReading the configuration file, at line 3\n"
         ">>> 'requirepass'\nBad directive or wrong number of arguments\n", False),
        ("1:M 01 Jan 2026 00:00:00.000 # Failed to configure TLS. Check logs for more info.\n", False),
        ("1:M 01 Jan 2026 00:00:00.000 # Warning: Could not create server TCP listening socket *:6380: bind: "
         "Address already in use\n", False),
    ],
    ids=["7.0-without-tls", "7.2-without-tls-module", "another-bad-directive", "bad-certificate", "port-in-use"],
)  # fmt: skip
def test_only_a_build_without_tls_makes_the_secured_redis_password_only(log: str, without_tls: bool):
    assert built_without_tls(log) is without_tls


def test_the_secured_redis_refuses_a_client_without_the_password(secured_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"redis://127.0.0.1:{secured_redis.port}/0").set("k", "v")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(secured_redis.url(tls=False, password="wrong")).ping()


@pytest.mark.integration
@pytest.mark.parametrize("tls", [False, True], ids=["password", "password+tls"])
async def test_a_worker_and_the_reader_work_through_a_password_and_tls(
    isolated_settings: Settings, worker_factory, secured_redis: SecuredRedis, tls: bool, tmp_path: Path, caplog
):
    if tls and secured_redis.tls_port is None:
        pytest.skip("this redis-server was built without TLS")
    caplog.set_level(logging.INFO)
    url = secured_redis.url(tls)
    client = redis.Redis.from_url(url)
    client.flushdb()
    secrets = {"redis_url": url, "api_key": SecretStr(API_KEY)}  # the default feed budget: connects have their own
    settings = isolated_settings.replace(**secrets)
    worker_factory(settings)
    events = [Event(type="click", user_id=f"u{k % 3}", item_id="i-hot", ts=T0 + k) for k in range(30)]
    hot = ItemEvent(op="new", item_id="i-hot", ts=T0, created_ts=T0, categories=["news"])  # only announced items show
    await publish(settings, items=[hot])
    wait_until(lambda: client.zscore("rs:pool", "i-hot") is not None, what="the item announced")
    await publish(settings, events=events)
    wait_until(
        lambda: applied_events(client, "rs") == len(events), what="the worker's writes through the secured Redis"
    )
    assert int(client.hget("rs:clicks", "i-hot")) == len(events)

    async with reader_client(settings) as reader:
        page = (await reader.get("/v1/feed/u-new")).json()
        assert page["degraded"] is False and "i-hot" in [i["item_id"] for i in page["items"]]
        assert (await reader.put("/v1/users/u-new/preferences", json={})).status_code == 401
    wrong = settings.replace(redis_url=secured_redis.url(tls, password="wrong"))
    app = create_app(wrong)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reader") as reader,
    ):
        resp = await reader.get("/v1/feed/u-new")
        assert resp.status_code == 200 and resp.json()["degraded"] is True, "a refused AUTH degrades, never a 5xx"

    logs = (tmp_path / "worker.log").read_text(errors="replace") + caplog.text
    assert PASSWORD not in logs and API_KEY not in logs


@asynccontextmanager
async def slow_proxy(port: int, delay_s: float) -> AsyncIterator[int]:
    """A TCP proxy to ``127.0.0.1:port`` that holds every new connection ``delay_s`` before passing bytes on: a
    TLS handshake (and AUTH) as slow as on a loaded machine, every time. Yields its port."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    async def handle(client: asyncio.StreamReader, back: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay_s)
        upstream, forth = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(client, forth), pipe(upstream, back), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.integration
async def test_a_slow_tls_handshake_gets_the_connect_budget_not_the_feed_budget(isolated_settings, secured_redis):
    """A connect that takes 300 ms (six feed budgets of 50 ms) succeeds within reader_redis_connect_timeout_s (1 s),
    and the connect budget is a real bound: at 100 ms the same connect fails and the feed degrades."""
    if secured_redis.tls_port is None:
        pytest.skip("this redis-server was built without TLS")
    async with slow_proxy(secured_redis.tls_port, delay_s=0.3) as port:
        url = secured_redis.url(tls=True).replace(f":{secured_redis.tls_port}/", f":{port}/")
        settings = isolated_settings.replace(redis_url=url)
        assert settings.reader.redis_timeout_s == 0.05 and settings.reader.redis_connect_timeout_s == 1.0
        for connect_s, degraded in ((1.0, False), (0.1, True)):
            async with reader_client(settings.replace(reader_redis_connect_timeout_s=connect_s)) as reader:
                page = (await reader.get("/v1/feed/u-slow")).json()
            assert page["degraded"] is degraded, connect_s
