"""The reader on serving/redis_wire.py (the hand-written multiplexed client) instead of redis-py
(serving/redis_client.py): bench/feeds.py's contender, so that the hand-written client's advantage is measured in
the same run (issue 18: it stays only while it wins by at least 1.5× on warm feeds/s or on p99 at the fixed rate).

    .venv/bin/python -m bench.redis_wire serve    # the settings from RECSTREAM_*, as `recstream serve`

The same reader, process and settings: only the two clients FeedService builds (feeds, snapshot loader) differ.
"""

from __future__ import annotations

from recstream.serving import service
from recstream.serving.redis_wire import RedisWire
from starlette.types import ASGIApp

from recstream.contracts.settings import load_settings
from recstream.shell import reader


def client(url: str, timeout_s: float, connections: int, connect_timeout_s: float | None = None) -> RedisWire:
    """RedisWire in RedisClient's place: one multiplexed connection whatever the pool size."""
    return RedisWire(url, timeout_s, connect_timeout_s)


def app() -> ASGIApp:
    """recstream.shell.reader.app with FeedService's clients on serving/redis_wire.py (each process's factory)."""
    service.RedisClient = client  # type: ignore[misc,assignment]  # the name service.py builds both clients with
    named = reader.app()
    feeds = named.app.state.service  # type: ignore[attr-defined]
    if not isinstance(feeds.redis, RedisWire) or not isinstance(feeds.loader.redis, RedisWire):
        raise RuntimeError("FeedService no longer builds its Redis clients as service.RedisClient: update the bench")
    return named


def main() -> None:
    settings = load_settings()
    reader.serve(settings.reader.host, settings.reader.port, settings.reader.workers, "warning", f"{__name__}:app")


if __name__ == "__main__":
    main()
