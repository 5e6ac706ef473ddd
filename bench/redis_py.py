"""The reader on redis-py (serving/redis_client.py) instead of serving/redis_wire.py: bench/feeds.py's contender,
so that the hand-written client's advantage is measured in the same run (issue 18: it stays only while it wins
by at least 1.5× on warm feeds/s or on p99 at the fixed rate).

    .venv/bin/python -m bench.redis_py serve    # the settings from RECSTREAM_*, as `recstream serve`

The same reader, process and settings: only the two clients FeedService builds (feeds, snapshot loader) differ.
The contender is the client the reader would switch to: redis-py's connections and hiredis parser, a pool of
``reader_redis_connections`` per process, the reader's own deadline per round trip.
"""

from __future__ import annotations

from recstream.serving import service
from recstream.serving.redis_client import RedisClient
from starlette.types import ASGIApp

from recstream.contracts.settings import load_settings
from recstream.shell import reader


def app() -> ASGIApp:
    """recstream.shell.reader.app with FeedService's clients on redis-py (the factory of each reader process)."""
    connections = load_settings().reader.redis_connections

    def client(url: str, timeout_s: float, connect_timeout_s: float | None = None) -> RedisClient:
        return RedisClient(url, timeout_s, connections, connect_timeout_s)

    service.RedisWire = client  # type: ignore[misc,assignment]  # the name service.py builds both clients with
    named = reader.app()
    feeds = named.app.state.service  # type: ignore[attr-defined]
    if not isinstance(feeds.wire, RedisClient) or not isinstance(feeds.loader.wire, RedisClient):
        raise RuntimeError("FeedService no longer builds its Redis clients as service.RedisWire: update bench/redis_py")
    return named


def main() -> None:
    settings = load_settings()
    reader.serve(settings.reader.host, settings.reader.port, settings.reader.workers, "warning", f"{__name__}:app")


if __name__ == "__main__":
    main()
