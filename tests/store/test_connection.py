"""The Redis client's command packing (recstream/store/connection.py): hiredis must put on the wire the very bytes
redis-py's own packer writes, leave to redis-py what it would write differently or refuses, and never copy a large
binary value into the packed command."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from recstream.contracts.settings import load_settings
from recstream.store.connection import _packing, connect

COMMANDS = [
    ("ZMSCORE", "rs:eids:events:0", *(f"u{k}:e{k}" for k in range(5_000))),
    ("HMGET", "rs:user:seg", "u1", "ü-ñ", ""),  # text beyond ASCII, an empty field
    ("SET", "k", "x" * 100_000),  # text larger than redis-py's chunk
    (b"EVALSHA", "0" * 40, 1, "rs:wm", b"{}", b"\x00\xff" * 70_000),  # bytes and an int: redis-py's packing
    ("SET", "k", -(2**62)),
    ("CONFIG GET", "maxmemory"),  # a command name of two words: sent as two arguments
    (b"CONFIG GET", b"maxmemory"),
    ("ZADD", "k", 1.5, "a", 1e20, "b", 0.1, "c"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: str(args[0]))
def test_commands_are_packed_to_the_bytes_redis_py_writes(args: tuple) -> None:
    ours, theirs = _packing(Connection)(), Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


def test_a_large_binary_value_is_sent_as_it_is_not_copied() -> None:
    values = b"\x00" * 5_000_000  # a batch script's values (ARGV[2]) are megabytes
    packed = _packing(Connection)().pack_command("EVALSHA", "0" * 40, "1", "rs:wm", "{}", values)
    assert any(chunk is values for chunk in packed)


@pytest.mark.parametrize("value", [True, None, object()])
def test_an_argument_redis_py_refuses_is_still_refused(value: object) -> None:
    with pytest.raises(DataError):
        _packing(Connection)().pack_command("SET", "k", value)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_the_client_keeps_the_connection_kind_its_url_asks_for(url: str, kind: type, tmp_path) -> None:
    settings = load_settings(redis_url=url, run_dir=tmp_path, cache_dir=tmp_path)
    connection_class = connect(settings).connection_pool.connection_class
    assert issubclass(connection_class, kind) and connection_class is _packing(kind)
