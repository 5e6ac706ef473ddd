"""The reader's Redis client against a real Redis: deadlines, late replies, lost connections, scripts, the pool."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
import uvloop
from recstream.serving.redis_client import ClusterRedisClient, RedisClient, Script
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from recstream.shell.infra import free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
BUSY = """
local start = redis.call('TIME')
repeat local now = redis.call('TIME') until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])
return 1
"""


@pytest.fixture
def client(isolated_settings):
    client = redis.Redis.from_url(isolated_settings.redis.url, decode_responses=True)
    client.mset({"a": "A", "b": "B"})
    yield client
    client.close()


async def block_redis(client: redis.Redis, micros: int) -> asyncio.Future:
    """Keep Redis busy in a Lua loop for ``micros`` µs (from a thread: redis-py is synchronous here)."""
    return asyncio.get_running_loop().run_in_executor(None, client.eval, BUSY, 0, micros)


def connections(client: redis.Redis) -> int:
    """Connections Redis has open, the test's own included."""
    return int(client.info("clients")["connected_clients"])


async def test_a_late_reply_is_never_read_as_the_answer_to_the_next_round_trip(isolated_settings, client):
    """One connection: the GET that timed out gets its reply after the deadline, on that connection; the next
    round trip must not take it for its own (it would read "A" for "b")."""
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=0.05, connections=1)
    assert await feeds.call("GET", "a") == "A"
    busy = await block_redis(client, 300_000)
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await feeds.call("GET", "a")  # queued behind the busy script
    await busy
    assert await feeds.execute(("GET", "b"), ("GET", "a")) == ["B", "A"]
    await feeds.close()


async def test_a_cancelled_round_trip_closes_its_connection(isolated_settings, client):
    """A caller cancelled from outside (a client that hung up) leaves no reply behind for the next one."""
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=1.0, connections=1)
    assert await feeds.call("GET", "a") == "A"
    busy = await block_redis(client, 200_000)
    await asyncio.sleep(0.05)
    cancelled = asyncio.ensure_future(feeds.call("GET", "a"))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await busy
    assert await feeds.call("GET", "b") == "B"
    await feeds.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_busy_reader_does_not_time_out_a_reply_that_already_arrived(isolated_settings, client, run):
    """Timers may run before I/O in a loop iteration: the deadline must let the loop read the socket first."""

    async def blocked_past_the_deadline() -> str:
        feeds = RedisClient(isolated_settings.redis.url, timeout_s=0.05, connections=1)
        await feeds.call("PING")
        pending = asyncio.ensure_future(feeds.call("GET", "a"))
        for _ in range(5):  # the command is written (its replies awaited) within a few steps
            await asyncio.sleep(0)
        time.sleep(0.15)  # the loop is blocked well past the deadline; Redis answered meanwhile
        try:
            return await pending
        finally:
            await feeds.close()

    assert run(blocked_past_the_deadline()) == "A"


@pytest.mark.parametrize("concurrent", [1, 2, 3])
async def test_the_pool_opens_at_most_its_size_of_connections(isolated_settings, client, concurrent):
    before = connections(client)
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=2.0, connections=2)
    busy = await block_redis(client, 200_000)
    await asyncio.sleep(0.05)
    replies = await asyncio.gather(*(feeds.call("GET", "a") for _ in range(concurrent)))  # all wait on Redis
    await busy
    assert replies == ["A"] * concurrent
    assert connections(client) - before == min(concurrent, 2)
    await feeds.close()


async def test_waiting_for_a_free_connection_counts_against_the_deadline(isolated_settings, client):
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=0.1, connections=1)
    assert await feeds.call("GET", "a") == "A"
    busy = await block_redis(client, 300_000)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    first, second = await asyncio.gather(feeds.call("GET", "a"), feeds.call("GET", "b"), return_exceptions=True)
    assert isinstance(first, TimeoutError) and isinstance(second, TimeoutError)
    assert time.monotonic() - started < 0.2, "the second waited for the first's connection, within its own deadline"
    await busy
    await feeds.close()


async def test_a_killed_connection_fails_its_caller_and_the_next_call_reconnects(isolated_settings, client):
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=1.0, connections=1)
    my_id = await feeds.call("CLIENT", "ID")
    client.client_kill_filter(_id=my_id)
    with pytest.raises(ConnectionError):
        for _ in range(50):  # the close may take a moment to reach this side
            await feeds.call("GET", "a")
            await asyncio.sleep(0.01)
    assert await feeds.call("GET", "b") == "B"
    await feeds.close()


async def test_scripts_are_resent_when_redis_lost_its_script_cache(isolated_settings, client):
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=1.0, connections=1)
    script = Script("return redis.call('GET', KEYS[1])")
    assert await feeds.run(script, ["a"]) == "A"
    client.script_flush()
    assert await feeds.run(script, ["b"]) == "B"
    with pytest.raises(ResponseError):
        await feeds.execute(("NOSUCHCOMMAND",), ("GET", "b"))
    assert await feeds.call("GET", "a") == "A", "an error reply does not upset the order"
    await feeds.close()


async def test_binary_values_read_back_to_their_bytes(isolated_settings, client):
    raw = bytes(range(256))
    redis.Redis.from_url(isolated_settings.redis.url).set("bin", raw)
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=1.0, connections=1)
    assert (await feeds.call("GET", "bin")).encode("utf-8", "surrogateescape") == raw
    await feeds.close()


async def test_an_unreachable_redis_is_a_connection_error_not_a_hang(isolated_settings):
    feeds = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05, connections=1)
    started = time.monotonic()
    for _ in range(3):  # the slot of a failed connect is free again
        with pytest.raises(ConnectionError):
            await feeds.call("PING")
    assert time.monotonic() - started < 1.0
    await feeds.close()


@pytest.mark.parametrize(
    "arg",
    ["plain", "é", b"\xff\x00", "a\udcff", 0, -7, 2**70, 0.1, 1 / 3, -0.0, 1e-300, float("inf"), "x" * 70_000],
)
def test_packed_commands_are_the_bytes_redis_py_would_send(arg):
    """hiredis packs (serving/redis_client.pack), redis-py packs what hiredis refuses (the surrogate-escaped str):
    either way Redis gets redis-py's bytes."""
    from recstream.serving.redis_client import pack
    from redis.asyncio.connection import Connection

    connection = Connection(decode_responses=True, encoding_errors="surrogateescape")
    commands = [("SET", "k", arg), ("ZMSCORE", "z", arg, "b", 3)]
    assert pack(commands, connection) == b"".join(connection.pack_commands(commands))


async def fail_over(clusters, master_port: int, client: ClusterRedisClient, key: str) -> int:
    """Hand the master on ``master_port`` over to its replica (CLUSTER FAILOVER), then read ``key`` (holding its name
    in upper case) through ``client`` until it answers: a redirect fails a round trip and marks the slot map stale,
    the next reads it again. Returns the new master's port."""
    replica = next(k for k, role in clusters.redis_roles().items() if role == "replica"
                   and redis.Redis(port=clusters.redis_nodes[k].redis.port).info("replication")["master_port"]
                   == master_port)  # fmt: skip
    redis.Redis(port=clusters.redis_nodes[replica].redis.port).execute_command("CLUSTER", "FAILOVER")
    wait_until(lambda: clusters.redis_roles().get(replica) == "master", 90, "the replica's takeover")
    deadline = time.monotonic() + 60
    while True:
        try:
            if await client.call("GET", key) == key.upper():
                return clusters.redis_nodes[replica].redis.port
        except (ResponseError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "the client never followed the failover"
        await asyncio.sleep(0.1)


async def test_a_cluster_round_trip_answers_in_command_order_across_nodes_and_follows_a_failover(clusters):
    """``--clusters``: one round trip's commands on keys of every master come back in the order sent (scripts on the
    node of their first key, SCAN on the node of its pattern's slot); after the master of a slot fails over, a round
    trip may fail (the guard answers it degraded) and the next ones read the new slot map and answer again."""
    url = clusters.settings.redis.url
    keys = [f"rc{{t{k}}}" for k in range(30)]  # 30 hash tags: keys on all three masters
    seeded = redis.RedisCluster.from_url(url, decode_responses=True)
    for key in keys:
        seeded.set(key, key.upper())
    masters = {seeded.get_node_from_key(key).name for key in keys}
    assert len(masters) == 3
    script = Script("return redis.call('GET', KEYS[1]) .. ARGV[1]")
    client = ClusterRedisClient(url, timeout_s=2.0, connections=4)
    try:
        commands = [("GET", key) for key in keys] + [("PING",), ("EVALSHA", script.sha, 1, keys[7], "!")]
        with pytest.raises(ResponseError):  # NOSCRIPT: the script is sent whole by run(), not by execute()
            await client.execute(*commands)
        assert await client.run(script, [keys[7]], ["!"]) == "RC{T7}!"
        assert await client.execute(*commands) == [key.upper() for key in keys] + ["PONG", "RC{T7}!"]
        assert await client.scan("rc{t3}*") == [keys[3]]

        victim = seeded.get_node_from_key(keys[0])
        port = await fail_over(clusters, victim.port, client, keys[0])
        assert client._node(keys[0]) == f"{victim.host}:{port}"
    finally:
        await client.close()
        seeded.close()


async def test_a_cluster_client_closes_the_connections_of_a_node_that_left_the_slot_map(clusters):
    """``--clusters``: a master its replica replaced serves no slot any more (as one back at a new address, the old
    address serves none): its client, kept for good, held that node's connections open for the reader's life. The
    refresh of the slot map that follows the failover closes them and drops the client; the other masters' stay."""
    tag = f"rc-gone-{uuid.uuid4().hex[:8]}"
    url = f"{clusters.settings.redis.url}?client_name={tag}"  # every connection of the client under test is named
    keys = [f"gone{{t{k}}}" for k in range(30)]
    seeded = redis.RedisCluster.from_url(clusters.settings.redis.url, decode_responses=True)
    for key in keys:
        seeded.set(key, key.upper())
    victim = seeded.get_node_from_key(keys[0])

    def named_connections(port: int) -> int:
        with redis.Redis(port=port) as node:
            return sum(1 for c in node.client_list() if c["name"] == tag)

    client = ClusterRedisClient(url, timeout_s=2.0, connections=4)
    try:
        assert await client.execute(*(("GET", key) for key in keys)) == [key.upper() for key in keys]
        masters = set(client._nodes)
        assert len(masters) == 3 and named_connections(victim.port) == 1

        await fail_over(clusters, victim.port, client, keys[0])
        assert set(client._nodes) == masters - {victim.name} | {client._node(keys[0])}
        wait_until(lambda: named_connections(victim.port) == 0, 10, "the old master's connections to close")
        assert await client.execute(*(("GET", key) for key in keys)) == [key.upper() for key in keys]
    finally:
        await client.close()
        seeded.close()
