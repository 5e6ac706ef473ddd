"""A small multiplexed Redis client for the reader: one connection, commands pipelined as they come.

Why not redis-py on this path: its asyncio client spends ~55 µs of CPU per command (pool checkout,
retry and observability layers, Python-side packing), ~100 µs per script call; the feed makes two
calls per request and the reader is CPU-bound. Here a command is packed by hiredis (C), written
to the connection, and replies are parsed by hiredis and matched to callers in FIFO order (Redis
answers one connection's commands in order): ~10 µs for a GET, ~30 µs for the feed's read script.
Concurrent requests share the connection, and what they send within one loop iteration leaves in
one write: one syscall here and one read in Redis for a batch of feeds, not one per command.

Failure rules, which degraded mode relies on:

* a command times out when its reply has not been *read* ``timeout_s`` after it was sent: the
  timer fails the caller's future only if no reply completed it. An ``asyncio.timeout`` around the
  call would instead cancel the waiting task, which on a busy reader happens after the reply was
  read but before the task resumed (measured: a loop blocked 150 ms turns every in-flight reply
  into a timeout), so a CPU-saturated reader would call a healthy Redis slow and go degraded;
* a caller that gives up (timeout, cancellation) leaves its slot in the queue; its late reply is
  read and dropped, so every other caller still gets its own reply;
* a lost connection fails every waiting caller at once with ``ConnectionError`` and the next call
  reconnects; a connection whose oldest reply is DEAD_AFTER_S overdue (a hung Redis) is dropped;
* a new connection (TCP, TLS handshake, AUTH, SELECT) has its own budget, ``connect_timeout_s``: a
  TLS handshake alone can take longer than a feed's whole budget on a loaded machine, and a connect
  is rare (once per process, or after a loss), so it must not fail for want of the per-command time;
* the URL is parsed by redis-py (``redis://``, ``rediss://`` for TLS, ``unix://``, user, password,
  database, and redis-py's TLS query arguments, see :func:`tls_context`), and AUTH / SELECT go out
  first on every new connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

DEAD_AFTER_S = 2.0
Arg = str | bytes | int | float


@dataclass(frozen=True)
class Script:
    """A Lua script run by EVALSHA, re-sent with EVAL when Redis lost its script cache (a restart)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # surrogate escapes: a binary value (a ranker state) reads as a str that encodes back to its bytes,
        # and a value that is not UTF-8 can no longer break the parser
        self.parser = hiredis.Reader(encoding="utf-8", errors="surrogateescape", replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.lost = False
        self._outbox: list[bytes] = []
        self._sent: list[asyncio.Future] = []

    def send(self, futures: list[asyncio.Future], commands: Iterable[Sequence[Arg]], timeout_s: float) -> None:
        """Queue the commands; everything queued in this loop iteration goes out in one write (one syscall),
        and the batch's timeout runs from that write."""
        now = time.monotonic()
        self.waiting.extend((f, now) for f in futures)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush, timeout_s)
        self._outbox.extend(hiredis.pack_command(tuple(c)) for c in commands)
        self._sent.extend(futures)

    def _flush(self, timeout_s: float) -> None:
        if self._outbox and not self.lost:
            self.transport.write(b"".join(self._outbox))  # type: ignore[union-attr]
            asyncio.get_running_loop().call_later(timeout_s, _expire, self._sent, timeout_s)
        self._outbox, self._sent = [], []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not False:
            future, _ = self.waiting.popleft()
            if not future.done():  # a caller that gave up: drop its reply, keep the order
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            _fail(self.waiting.popleft()[0], error)


class RedisWire:
    """``await wire.execute(("GET", key), ("HGET", h, f))`` → one write, one reply per command."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float | None = None) -> None:
        """``timeout_s`` bounds every command; ``connect_timeout_s`` (default: the same) a new connection."""
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "127.0.0.1")
        self._port: int = options.get("port", 6379)
        self._tls = tls_context(options) if options.get("connection_class") is SSLConnection else None
        hello: list[tuple[Arg, ...]] = []
        if options.get("password") is not None:
            user = options.get("username")
            hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        self._hello = hello
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, *commands: Sequence[Arg]) -> list[Any]:
        """Send the commands in one write and return their replies; the first error reply is raised."""
        protocol = await self._connected()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.send(futures, commands, self.timeout_s)
        replies = [await f for f in futures]
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def call(self, *command: Arg) -> Any:
        return (await self.execute(command))[0]

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            if not protocol.waiting or time.monotonic() - protocol.waiting[0][1] <= DEAD_AFTER_S:
                return protocol
            protocol.lost = True  # hung: aborting fails its waiting callers; this call reconnects
            protocol.transport.abort()  # type: ignore[union-attr]
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect at a time; the callers queued behind it reuse it
            if self._protocol is None or self._protocol.lost:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        """A new connection, authenticated and on the right database before anyone else may use it, within
        ``connect_timeout_s`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(_Protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._tls)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc!r}") from exc
        futures = [loop.create_future() for _ in self._hello]
        protocol.send(futures, self._hello, max(deadline - loop.time(), 0.0))
        for future in futures:
            reply = await future
            if isinstance(reply, ResponseError):
                protocol.transport.close()
                raise ConnectionError(f"Redis refused the connection setup: {reply}")
        return protocol


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a ``rediss://`` URL, from the query arguments redis-py reads too (so the worker
    and the reader accept the same URL): ``ssl_ca_certs`` (a CA bundle to trust besides the system's),
    ``ssl_cert_reqs`` (``required``, the default, ``optional`` or ``none``), ``ssl_check_hostname``,
    ``ssl_certfile`` and ``ssl_keyfile`` (a client certificate, for ``tls-auth-clients yes``).

    >>> tls_context({"ssl_cert_reqs": "none"}).verify_mode
    <VerifyMode.CERT_NONE: 0>
    """
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs not in {"required", "optional", "none"}:
        raise ValueError(f"ssl_cert_reqs must be required, optional or none, got {reqs!r}")
    context.check_hostname = reqs != "none" and options.get("ssl_check_hostname", True)
    context.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[reqs]
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


def _expire(futures: list[asyncio.Future], timeout_s: float) -> None:
    for future in futures:
        _fail(future, TimeoutError(f"Redis did not answer within {timeout_s * 1000:.0f} ms"))


def _fail(future: asyncio.Future, error: Exception) -> None:
    """Fail a waiting caller; ``exception()`` marks the error as seen, so a caller that already gave up
    (or a later command of a batch whose first one failed) is not logged as an unhandled error."""
    if not future.done():
        future.set_exception(error)
        future.exception()
