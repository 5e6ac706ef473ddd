"""The Redis circuit breaker (serving/guard.py) against a real Redis and a port nobody listens on."""

from __future__ import annotations

import asyncio

import pytest
from recstream.serving.errors import RedisUnavailable
from recstream.serving.guard import COOLDOWN_S, TRIP_AFTER, RedisGuard
from recstream.serving.redis_client import RedisClient

from recstream.shell.infra import free_port

pytestmark = pytest.mark.integration


async def test_the_guard_skips_redis_for_the_cooldown_once_trip_after_failures_come_in_a_row(isolated_settings):
    live = RedisClient(isolated_settings.redis.url, timeout_s=1.0, connections=1)
    dead = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0, connections=1)
    guard, attempts = RedisGuard(), 0

    async def refused() -> str:
        nonlocal attempts
        attempts += 1
        return await dead.call("PING")

    async def fail(times: int, cause: str) -> None:
        for _ in range(times):
            with pytest.raises(RedisUnavailable) as failed:
                await guard(refused)
            assert failed.value.cause == cause

    try:
        await fail(TRIP_AFTER - 1, "error")
        assert guard.ok, "one failure short of the trip: still trying"
        assert await guard(lambda: live.call("PING")) == "PONG"
        await fail(TRIP_AFTER - 1, "error")
        assert guard.ok, "a success starts the count over"
        await fail(1, "error")
        assert not guard.ok and attempts == 2 * (TRIP_AFTER - 1) + 1
        await fail(1, "skipped")
        assert attempts == 2 * (TRIP_AFTER - 1) + 1, "a skipped request makes no connection attempt"
        await asyncio.sleep(COOLDOWN_S)
        assert guard.ok and await guard(lambda: live.call("PING")) == "PONG"
    finally:
        await live.close()
        await dead.close()
