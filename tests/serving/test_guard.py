"""The Redis circuit breaker (serving/guard.py) against a real Redis and a port nobody listens on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import redis
from prometheus_client import REGISTRY
from recstream.serving import guard as guard_module
from recstream.serving.errors import RedisUnavailable
from recstream.serving.feed_query import FEED_ROUTE
from recstream.serving.guard import COOLDOWN_S, TRIP_AFTER, RedisGuard
from recstream.serving.redis_client import RedisClient
from recstream.serving.service import FeedService

from recstream.shell.infra import free_port
from tests.serving.test_redis_client import block_redis

pytestmark = pytest.mark.integration


async def test_the_guard_skips_redis_for_the_cooldown_once_trip_after_failures_come_in_a_row(
    isolated_settings, monkeypatch
):
    """On the guard's own clock, moved by hand: an asyncio.sleep of 0.8 × COOLDOWN_S overshot the last 0.2 under a
    loaded CI run, and the request meant to fall inside the cooldown came after it."""
    clock = SimpleNamespace(now=1_000.0)
    monkeypatch.setattr(guard_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
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
        clock.now += 0.8 * COOLDOWN_S
        await fail(1, "skipped")  # still skipping most of the cooldown after the trip
        assert attempts == 2 * (TRIP_AFTER - 1) + 1, "a skipped request makes no connection attempt"
        clock.now += 0.2 * COOLDOWN_S
        assert guard.ok and await guard(lambda: live.call("PING")) == "PONG"
    finally:
        await live.close()
        await dead.close()


async def test_round_trips_that_overlapped_one_stall_count_as_one_failure(isolated_settings):
    """2 × TRIP_AFTER requests in flight while a script holds Redis for 300 ms all time out, and the guard still
    tries Redis: one stall is one failure, not a reason to degrade every feed of the next COOLDOWN_S. Stalls one
    after another count: TRIP_AFTER − 1 in a row keep it trying, TRIP_AFTER trip it."""
    client = redis.Redis.from_url(isolated_settings.redis.url)
    feeds = RedisClient(isolated_settings.redis.url, timeout_s=0.05, connections=2 * TRIP_AFTER)
    guard = RedisGuard()

    async def stall(requests: int) -> list[str]:
        busy = await block_redis(client, 300_000)
        await asyncio.sleep(0.05)  # the script runs
        outcomes = await asyncio.gather(*(guard(lambda: feeds.call("PING")) for _ in range(requests)),
                                        return_exceptions=True)  # fmt: skip
        await busy
        return [o.cause if isinstance(o, RedisUnavailable) else repr(o) for o in outcomes]

    try:
        assert await stall(2 * TRIP_AFTER) == ["timeout"] * (2 * TRIP_AFTER)
        assert guard.ok, "one stall, one failure"
        for _ in range(TRIP_AFTER - 2):
            assert await stall(1) == ["timeout"]
        assert guard.ok, "TRIP_AFTER - 1 failures in a row"
        assert await stall(1) == ["timeout"]
        assert not guard.ok, "the TRIP_AFTER-th in a row trips it"
    finally:
        await feeds.close()
        client.close()


async def test_a_feed_the_guard_answers_without_trying_redis_counts_no_round_trip(isolated_settings):
    """The round trips histogram observed 1 for every degraded feed, also when the guard skipped Redis (no round
    trip made): during an outage it counted round trips that never happened."""

    def observed(le: str) -> float:
        labels = {"route": FEED_ROUTE, "le": le}
        return REGISTRY.get_sample_value("recstream_reader_redis_round_trips_bucket", labels) or 0.0

    service = FeedService(isolated_settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        before = observed("0.0"), observed("1.0")
        for _ in range(TRIP_AFTER):
            assert (await service.feed("u1", 10, None, None))["degraded"]
        assert not service.guard.ok
        assert (await service.feed("u1", 10, None, None))["degraded"]
        assert (observed("0.0") - before[0], observed("1.0") - before[1]) == (1, TRIP_AFTER + 1)
    finally:
        await service.close()
