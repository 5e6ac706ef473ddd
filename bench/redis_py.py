"""The reader on redis-py's asyncio client (hiredis parser) instead of serving/redis_wire.py: bench/feeds.py's
contender, so that the hand-written client's advantage is measured in every run (issue 18: it stays only while
it wins by at least 1.5× on warm feeds/s or on p99 at the fixed rate).

    .venv/bin/python -m bench.redis_py serve    # the settings from RECSTREAM_*, as `recstream serve`

The same reader, process and settings: only the two clients FeedService builds (feeds, snapshot loader) differ.
redis-py is given its most favourable setup for this path: RESP2 and raw replies (no response callbacks, as
the callers read the wire's), no retries (a failed round trip degrades the feed), the reader's timeout as its
socket timeout, and its connection pool (one connection per concurrent command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recstream.serving import service
from recstream.serving.redis_wire import Arg, Script
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from starlette.types import ASGIApp

from recstream.contracts.settings import load_settings
from recstream.shell import reader


class RedisPy:
    """serving.redis_wire.RedisWire's interface (execute, call, run, close) on redis-py."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        self._redis.response_callbacks.clear()

    async def execute(self, *commands: Sequence[Arg]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def call(self, *command: Arg) -> Any:
        return await self._redis.execute_command(*command)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        await self._redis.aclose()


def app() -> ASGIApp:
    """recstream.shell.reader.app with FeedService's clients on redis-py (the factory of each reader process)."""
    service.RedisWire = RedisPy  # type: ignore[misc,assignment]  # the name service.py builds both clients with
    named = reader.app()
    feeds = named.app.state.service  # type: ignore[attr-defined]
    if not isinstance(feeds.wire, RedisPy) or not isinstance(feeds.loader.wire, RedisPy):
        raise RuntimeError("FeedService no longer builds its Redis clients as service.RedisWire: update bench/redis_py")
    return named


def main() -> None:
    settings = load_settings()
    reader.serve(settings.reader.host, settings.reader.port, settings.reader.workers, "warning", f"{__name__}:app")


if __name__ == "__main__":
    main()
