"""The reader's multiplexed Redis client against a real Redis: ordering, timeouts, lost connections, scripts."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import uvloop
from recstream.serving.redis_wire import RedisWire, Script
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from recstream.shell.infra import free_port

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


async def test_replies_stay_matched_to_their_callers_after_a_timeout(isolated_settings, client):
    wire = RedisWire(isolated_settings.redis.url, timeout_s=0.05)
    assert await wire.call("GET", "a") == "A"
    busy = await block_redis(client, 300_000)
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await wire.call("GET", "a")  # queued behind the busy script
    await busy
    assert await wire.execute(("GET", "b"), ("GET", "a")) == ["B", "A"], (
        "the late reply to the timed-out GET was dropped"
    )
    await wire.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_busy_reader_does_not_time_out_a_reply_that_already_arrived(isolated_settings, client, run):
    """Timers run before I/O in a loop iteration: the wire must look at the socket before calling it a timeout."""

    async def blocked_past_the_timeout() -> str:
        wire = RedisWire(isolated_settings.redis.url, timeout_s=0.05)
        await wire.call("PING")
        pending = asyncio.ensure_future(wire.call("GET", "a"))
        await asyncio.sleep(0)  # the call queues its command...
        await asyncio.sleep(0)  # ...and the batch is written
        time.sleep(0.15)  # the loop is blocked well past the timeout; Redis answered meanwhile
        try:
            return await pending
        finally:
            await wire.close()

    assert run(blocked_past_the_timeout()) == "A"


async def test_a_killed_connection_fails_its_callers_and_the_next_call_reconnects(isolated_settings, client):
    wire = RedisWire(isolated_settings.redis.url, timeout_s=1.0)
    my_id = await wire.call("CLIENT", "ID")
    client.client_kill_filter(_id=my_id)
    with pytest.raises(ConnectionError):
        for _ in range(50):  # the close may take a moment to reach this side
            await wire.call("GET", "a")
            await asyncio.sleep(0.01)
    assert await wire.call("GET", "b") == "B"
    await wire.close()


async def test_scripts_are_resent_when_redis_lost_its_script_cache(isolated_settings, client):
    wire = RedisWire(isolated_settings.redis.url, timeout_s=1.0)
    script = Script("return redis.call('GET', KEYS[1])")
    assert await wire.run(script, ["a"]) == "A"
    client.script_flush()
    assert await wire.run(script, ["b"]) == "B"
    with pytest.raises(ResponseError):
        await wire.call("NOSUCHCOMMAND")
    assert await wire.call("GET", "a") == "A", "an error reply does not upset the order"
    await wire.close()


async def test_an_unreachable_redis_is_a_connection_error_not_a_hang(isolated_settings):
    wire = RedisWire(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await wire.call("PING")
    assert time.monotonic() - started < 1.0
