"""The reader's Redis client: redis-py's asyncio connections (hiredis parser) under the reader's own deadline.

Why redis-py (issue 18): a hand-written multiplexed client (serving/redis_wire.py until it was removed)
won by less than the 1.5× on warm feeds/s or p99 that would have paid for keeping a second client, in
the same run (BENCHMARKS.md, the reader; ARCHITECTURE.md). What is used of redis-py: its connections,
made by its connection pool from the URL (TCP, TLS, unix sockets, AUTH and SELECT, parsed as the workers
parse it) and hiredis (its reply parser and command packer). What is the reader's own, and why:

* **one deadline per round trip**, ``timeout_s`` from the moment the round trip asks for a connection
  (waiting for a free one counts) to its last reply; past it, :class:`Timeout`, which the guard answers
  degraded (serving/guard.py). redis-py's socket timeouts are off: nested in another timeout they could
  swallow a task's cancellation on Python 3.11, and they bound each read, not the round trip;
* **a new connection has its own budget**, ``connect_timeout_s``: a TLS handshake alone can take longer
  than a feed's whole budget on a loaded machine, and a connect is rare (first use, or after a loss);
* **a round trip that did not finish closes its connection**: one whose deadline expired, or that was
  cancelled, may still get its replies later, and a late reply read as the answer to the next command
  on a reused connection would serve another key's value. So it is closed, never pooled open, and the
  next round trip on that slot connects anew;
* **the deadline expires only after the loop has read what arrived**: when the loop was busy past the
  deadline (uvloop runs due timers before it polls the sockets), a reply already in the socket would be
  called a timeout, and a CPU-saturated reader would go degraded with Redis healthy. :class:`Deadline`
  lets the loop poll its sockets and resume the tasks they woke before it cancels;
* **the commands of a round trip leave in one write** and their replies are read in order (pipelining);
  an error reply is raised after every reply was read, so the connection stays in step. They are packed by
  hiredis's C packer (:func:`pack`): redis-py's asyncio connection packs argument by argument in Python, which
  was most of a snapshot reload's CPU (its ZMSCORE calls name hundreds of items);
* **raw replies**: RESP2 without redis-py's response callbacks (callers parse the replies), strings decoded
  as UTF-8 with surrogate escapes, so a binary value (a ranker state) reads as a str that encodes back to
  its bytes; no retries (a failed round trip is the guard's to count).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as Timeout

Arg = str | bytes | int | float
EXPIRY_HOPS = 2
"""Loop iterations a due deadline lets pass before it queues the cancellation. A loop blocked in a task's step
polls its sockets right after, so a cancellation queued behind the tasks that poll woke would do (plain
``asyncio.timeout`` cancels at once, and fails tests/serving/test_redis_client.py on both loops); a loop blocked
inside an I/O callback under uvloop runs its timers before it polls again: one hop to poll, one to run them."""


@dataclass(frozen=True)
class Script:
    """A Lua script run by EVALSHA, re-sent with EVAL when Redis lost its script cache (a restart)."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class Deadline:
    """``async with Deadline(s):`` raises TimeoutError when the block runs longer than ``s`` (``move`` restarts
    the count), like ``asyncio.timeout``, except that a due deadline waits EXPIRY_HOPS loop iterations before
    it cancels the task: what already arrived in a socket is read first. A deadline already due stays due:
    ``move`` then changes nothing, so a round trip that got its connection only in those iterations (another's
    timeout freed it) times out instead of being handed a fresh budget to connect and ask."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._timeout = asyncio.timeout(None)
        self._handle: asyncio.Handle | None = None
        self._due_at = math.inf

    async def __aenter__(self) -> Deadline:
        await self._timeout.__aenter__()
        self.move(self._timeout_s)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._handle.cancel()  # type: ignore[union-attr]
        return await self._timeout.__aexit__(kind, exc, tb)

    def move(self, timeout_s: float) -> None:
        """Due ``timeout_s`` from now, unless it is due already."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self._due_at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._due_at = loop.time() + timeout_s
        self._handle = loop.call_later(timeout_s, self._due, EXPIRY_HOPS)

    def _due(self, hops: int) -> None:
        loop = asyncio.get_running_loop()
        if hops:
            self._handle = loop.call_soon(self._due, hops - 1)
        else:
            self._timeout.reschedule(loop.time())  # the task is cancelled at its next step, as TimeoutError


SCAN_COUNT = 1_000
"""Keys a SCAN step looks at (its COUNT): a step is O(COUNT) inside Redis, the whole scan O(keys) in steps."""


class _Calls:
    """One command and one script over a client's ``execute`` (a script Redis has not cached is sent whole once)."""

    async def execute(self, *commands: Sequence[Arg]) -> list[Any]:
        raise NotImplementedError

    async def call(self, *command: Arg) -> Any:
        return (await self.execute(command))[0]

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def scan(self, pattern: str) -> list[str]:
        """Every key matching ``pattern``, by SCAN (incremental: it never blocks Redis), each once. On a Redis Cluster
        the pattern names one hash slot (its tag, ``rs:{p3}:user:u1:feed:*``) and the node serving it is scanned."""
        found: list[str] = []
        cursor = "0"
        while True:
            cursor, names = await self._scan_step(pattern, cursor)
            found += names
            if str(cursor) == "0":
                return list(dict.fromkeys(found))  # SCAN may return a key twice

    async def _scan_step(self, pattern: str, cursor: str) -> tuple[str, list[str]]:
        [(cursor, names)] = await self.execute(("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT))
        return cursor, names


def pack(commands: Sequence[Sequence[Arg]], connection: Any) -> bytes:
    """The commands in RESP, the bytes redis-py's ``connection.pack_commands`` gives, by hiredis in C (~30× faster on
    a 500-member ZMSCORE); what hiredis refuses (a str with surrogate escapes, a bool) goes to redis-py's packer.

    >>> pack([("GET", "k"), ("INCRBY", "n", 2)], None)
    b'*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n*3\\r\\n$6\\r\\nINCRBY\\r\\n$1\\r\\nn\\r\\n$1\\r\\n2\\r\\n'
    """
    try:
        return b"".join([hiredis.pack_command(tuple(command)) for command in commands])
    except (UnicodeEncodeError, TypeError):
        return b"".join(connection.pack_commands(commands))


class RedisClient(_Calls):
    """``await client.execute(("GET", key), ("HGET", h, f))`` → one write, one reply per command, in order.

    At most ``connections`` connections; a round trip waits for a free one within its deadline.
    """

    def __init__(self, url: str, timeout_s: float, connections: int, connect_timeout_s: float | None = None) -> None:
        """``timeout_s`` bounds every round trip; ``connect_timeout_s`` (default: the same) a new connection."""
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self._pool = ConnectionPool.from_url(
            url,
            max_connections=connections,
            decode_responses=True,
            encoding_errors="surrogateescape",
            protocol=2,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=None,
            socket_connect_timeout=None,
        )
        self._free = asyncio.Semaphore(connections)
        self._idle: list[AbstractConnection] = []
        """Connections not in a round trip, the last released on top. Kept here, not in the pool: the pool's
        release takes a lock and dispatches an event, ~5% of a feed's CPU for two round trips."""
        self._made: list[AbstractConnection] = []

    async def execute(self, *commands: Sequence[Arg]) -> list[Any]:
        """Send the commands in one write and return their replies; the first error reply is raised.

        Raises :class:`Timeout` past the deadline, redis-py's ConnectionError when Redis cannot be reached."""
        connection, acquired, finished = None, False, False
        try:
            async with Deadline(self.timeout_s) as deadline:
                await self._free.acquire()
                acquired = True
                connection = self._connection()
                if not connection.is_connected:
                    deadline.move(self.connect_timeout_s)
                    await connection.connect()
                    deadline.move(self.timeout_s)
                await connection.send_packed_command(pack(commands, connection), check_health=False)
                replies = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:  # read the rest: the connection stays in step
                        replies.append(exc)
                finished = True
        except TimeoutError as exc:
            raise Timeout(f"Redis did not answer within {self.timeout_s * 1000:.0f} ms") from exc
        finally:  # outside the deadline: giving the connection back must not be cut short
            if connection is not None:
                if not finished:  # its replies may still come: no later round trip may read them
                    await connection.disconnect(nowait=True)
                self._idle.append(connection)
            if acquired:
                self._free.release()
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def _connection(self) -> AbstractConnection:
        """An idle connection, else a new one (unconnected): the semaphore keeps them to ``connections``."""
        if self._idle:
            return self._idle.pop()
        connection = self._pool.make_connection()
        self._made.append(connection)
        return connection

    async def close(self, wait: bool = True) -> None:
        """Disconnect every connection; ``wait=False`` leaves out the wait for each socket's close to complete (a node
        that left the cluster may never complete it)."""
        for connection in self._made:
            await connection.disconnect(nowait=not wait)
        await self._pool.aclose()


class ClusterRedisClient(_Calls):
    """:class:`RedisClient`'s interface on a Redis Cluster (``RECSTREAM_REDIS_CLUSTER``): a :class:`RedisClient` per
    master, and a round trip's commands grouped by the node serving their key's slot, each group sent to its node at
    once (the reader's scripts touch one user's slot, recstream/contracts/keys.py).

    Why not redis-py's cluster pipeline: it spends ~15 µs of Python per command (slot lookup, a command object,
    response callbacks) where this spends ~1.5 (2,000 HMGETs of a snapshot reload: 31 against 3 ms of CPU), and a
    reader on it needed so much more CPU per feed that, at 32 connections, its round trips outlived their deadline
    and the guard (serving/guard.py) turned most pages degraded (`bench/feeds.py --cluster`). redis-py's cluster
    client keeps what it does well: the slot map (CLUSTER SLOTS from the startup nodes, then any node it learnt).
    A round trip that meets a redirect (a failover or a resharding moved a slot), CLUSTERDOWN or a node it cannot
    reach fails as a whole, which the guard answers degraded, and the next one re-reads the slot map first, and closes
    the clients of the nodes that no longer serve a slot in it (a master its replica replaced, one back at a new
    address): kept, each held its connections open for the reader's life. Each node's client has the same deadline,
    connection bound and raw replies as one Redis's."""

    def __init__(self, url: str, timeout_s: float, connections: int, connect_timeout_s: float | None = None) -> None:
        from redis.asyncio.cluster import RedisCluster

        self.timeout_s = timeout_s
        self._connections, self._connect_timeout_s = connections, connect_timeout_s
        self._url = urlsplit(url)
        self._cluster = RedisCluster.from_url(
            url, socket_connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s
        )
        self._nodes: dict[str, RedisClient] = {}
        self._mapped = False  # the slot map is current (False at first and after a round trip met a moved slot)

    async def execute(self, *commands: Sequence[Arg]) -> list[Any]:
        """The commands' replies in order; the first error is raised (a keyless command goes to any master)."""
        await self._map()
        groups: dict[str, list[int]] = {}
        try:
            for k, command in enumerate(commands):
                groups.setdefault(self._node(_key_of(command)), []).append(k)
        except RedisClusterException:  # a slot no node serves (its master failed, no replica took over yet)
            self._mapped = False
            raise
        results = await asyncio.gather(
            *(self._client(node).execute(*(commands[k] for k in ks)) for node, ks in groups.items()),
            return_exceptions=True,  # every group finishes (its connection stays in step) before one error is raised
        )
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, ResponseError) or isinstance(result, CLUSTER_ERRORS):
                    self._mapped = False
                raise result
        replies: list[Any] = [None] * len(commands)
        for ks, group in zip(groups.values(), results, strict=True):
            for k, reply in zip(ks, group, strict=True):  # type: ignore[arg-type]
                replies[k] = reply
        return replies

    async def _scan_step(self, pattern: str, cursor: str) -> tuple[str, list[str]]:
        """One SCAN on the node serving ``pattern``'s slot (its hash tag)."""
        await self._map()
        [(cursor, names)] = await self._client(self._node(pattern)).execute(
            ("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        )
        return cursor, names

    async def _map(self) -> None:
        if not self._mapped:
            try:
                async with asyncio.timeout(
                    self.timeout_s if self._connect_timeout_s is None else self._connect_timeout_s
                ):
                    await self._cluster.nodes_manager.initialize()
            except TimeoutError as exc:
                raise Timeout(
                    f"the Redis Cluster's slot map did not come within {self.timeout_s * 1000:.0f} ms"
                ) from exc
            self._mapped = True
            serving = {nodes[0].name for nodes in self._cluster.nodes_manager.slots_cache.values() if nodes}
            gone = [self._nodes.pop(node) for node in list(self._nodes) if node not in serving]
            for client in gone:  # a round trip still on one fails, as it would on the node it left
                await client.close(wait=False)

    def _node(self, key: Arg | None) -> str:
        """The ``host:port`` of the master serving ``key``'s slot (slot 0's for no key)."""
        slot = 0 if key is None else self._cluster.keyslot(key)
        return self._cluster.nodes_manager.get_node_from_slot(slot).name

    def _client(self, node: str) -> RedisClient:
        """The node's client: the cluster URL's scheme, credentials and options at the node's address."""
        if node not in self._nodes:
            credentials = self._url.netloc.rpartition("@")[0]
            netloc = f"{credentials}@{node}" if credentials else node
            self._nodes[node] = RedisClient(
                urlunsplit(self._url._replace(netloc=netloc)),
                self.timeout_s,
                self._connections,
                self._connect_timeout_s,
            )
        return self._nodes[node]

    async def close(self) -> None:
        for client in self._nodes.values():
            await client.close()
        await self._cluster.aclose()


CLUSTER_ERRORS = (MovedError, AskError, ClusterDownError, TryAgainError)
"""Error replies that mean the slot map moved (a failover, a resharding): the next round trip re-reads it."""


def _key_of(command: Sequence[Arg]) -> Arg | None:
    """The key that names a command's slot: a script call's first key, none for PING, else the first argument."""
    name = str(command[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) else None
    return None if name == "PING" else command[1]
