"""Redis killed under a running reader (`recstream serve`, a real process): 200s with `degraded: true`, then recovery.

The reader gets a Redis of its own (``own_redis`` in tests/serving/conftest.py: a separate redis-server
on a free port, started and killed by this test only), filled with a copy of the world the real worker built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recstream.contracts.settings import Settings
from recstream.shell import infra
from tests.serving.conftest import World, kill_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def served(own_redis: Settings, tmp_path: Path) -> Iterator[str]:
    """`recstream serve` as a child process; its base URL. Stopped by its own pid."""
    with infra.Child("serve", own_redis, tmp_path / "reader.log") as reader:
        reader.wait_ready()
        yield reader.url


async def test_valid_requests_get_200_degraded_while_redis_is_dead_and_normal_feeds_resume_by_themselves(
    world: World, own_redis: Settings, served: str
):
    user = world.warm[6]
    async with httpx.AsyncClient(base_url=served, timeout=5) as client:
        first = (await client.get(f"/v1/feed/{user}", params={"limit": 10})).json()
        assert not first["degraded"] and {i["source"] for i in first["items"]} >= {"personal", "popular"}
        kill_redis(own_redis)

        degraded = [await client.get(f"/v1/feed/{u}", params={"limit": 10}) for u in (user, *world.cold, "nobody")]
        assert [r.status_code for r in degraded] == [200] * len(degraded)
        bodies = [r.json() for r in degraded]
        assert all(b["degraded"] and len(b["items"]) == 10 for b in bodies)
        assert {i["source"] for b in bodies for i in b["items"]} == {"popular"}, "the last known popular list"
        scrolled = await client.get(f"/v1/feed/{user}", params={"limit": 10, "cursor": first["next_cursor"]})
        assert scrolled.status_code == 200 and scrolled.json()["next_cursor"] == first["next_cursor"]
        similar = await client.get("/v1/items/i010/similar")
        assert similar.status_code == 200 and similar.json()["degraded"] is True
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'recstream_reader_degraded_responses_total{cause="error",route="/v1/feed/{user_id}"}' in metrics

        infra.redis_up(own_redis)  # the same data directory: the append-only file brings the state back

        async def normal() -> bool:
            body = (await client.get(f"/v1/feed/{user}", params={"limit": 10})).json()
            return not body["degraded"] and any(i["source"] == "personal" for i in body["items"])

        for _ in range(100):
            if await normal():
                break
            await asyncio.sleep(0.1)
        assert await normal(), "normal feeds resumed without restarting the reader"
        page_two = (await client.get(f"/v1/feed/{user}", params={"limit": 10, "cursor": first["next_cursor"]})).json()
        assert not page_two["degraded"]
        assert not {i["item_id"] for i in page_two["items"]} & {i["item_id"] for i in first["items"]}
        assert (await client.get("/readyz")).status_code == 200
