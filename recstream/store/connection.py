"""The Redis client the settings ask for: one server, or a Redis Cluster (``RECSTREAM_REDIS_CLUSTER``).

Every process of the project builds its asyncio client here, so a cluster needs no code of its own elsewhere:
the store's keys carry hash tags on a cluster (recstream/contracts/keys.py) and redis-py's cluster client routes
each command, pipeline and script call to the node of its key's slot, following a failover's redirects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection

from recstream.contracts.settings import Settings

_TEXT = {str}
UNLINK_BATCH = 1_000
"""Keys one UNLINK of :func:`unlink_scanned` deletes at most, and SCAN's COUNT hint."""


class _HiredisPacking:
    """A connection that packs a command of text arguments with hiredis (C) instead of redis-py's per-argument
    Python loop (its asyncio client has no other packer): a worker's batch sends tens of thousands of them (the event
    ids it looks up, the users it reads), which cost ~0.7 µs each in Python against ~0.08 in C (13.8 against 1.6 ms
    for 20,000). Only when every argument is ``str``: hiredis writes the same bytes for text (UTF-8), but it copies a
    ``bytes`` argument into the packed command (9 ms for a batch script's 5 MB of payload and values), where
    redis-py sends a large one as it is; an int, a float (printed otherwise), a bool or None (refused) go to redis-py
    too. Not redis-py's sync ``HiredisRespSerializer``: it walks every argument once more in Python (for bytearrays),
    which is the per-argument cost this saves."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if set(map(type, args)) != _TEXT:
            return super().pack_command(*args)  # type: ignore[misc]
        # "CONFIG GET": Redis expects the words as separate arguments, as redis-py splits them
        return [hiredis.pack_command((*args[0].split(), *args[1:]))]


@cache
def _packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` (plain TCP, TLS or a Unix socket, as the URL chose) packing with hiredis."""
    return type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})


def connect(settings: Settings, **options: Any) -> Redis | RedisCluster:
    """An asyncio client of ``settings.redis`` (``options`` as ``from_url`` takes them, e.g. ``socket_timeout``).
    On one Redis its connections pack commands with hiredis (:class:`_HiredisPacking`); a cluster's client builds its
    nodes' connections itself, with redis-py's own packing."""
    if settings.redis.cluster:
        return RedisCluster.from_url(settings.redis.url, **options)
    client = Redis.from_url(settings.redis.url, **options)
    pool = client.connection_pool  # no connection made yet: each one is made of this class
    pool.connection_class = _packing(pool.connection_class)
    return client


def _tag(key: str) -> str:
    """The hash tag of ``key``, its first non-empty ``{...}`` (what Redis Cluster hashes); "" when it has none, as
    every key on one Redis, where all keys are one group.

    >>> _tag("rs:{p3}:user:u1:vec"), _tag("rs:user:u1:vec")
    ('p3', '')
    """
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else ""


def queue_mget(pipe: Pipeline | ClusterPipeline, names: Sequence[str]) -> list[list[int]]:
    """Queue one MGET per hash tag of ``names`` (a cluster refuses a multi-key command across slots); returns the
    indices of each group, for :func:`gathered`."""
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(_tag(name), []).append(k)
    for group in groups.values():  # as a raw command: redis-py refuses pipe.mget on a cluster, even in one slot
        pipe.execute_command("MGET", *(names[k] for k in group))
    return list(groups.values())


def gathered(groups: list[list[int]], replies: Sequence[Sequence[bytes | None]], size: int) -> list[bytes | None]:
    """The replies of :func:`queue_mget`'s commands back in the order of its names."""
    out: list[bytes | None] = [None] * size
    for group, reply in zip(groups, replies, strict=True):
        for k, value in zip(group, reply, strict=True):
            out[k] = value
    return out


async def unlink_scanned(redis: Redis | RedisCluster, match: str, doomed: Callable[[str], bool]) -> list[str]:
    """Delete the keys SCAN finds for the glob ``match`` (on a cluster: every master's) that ``doomed`` accepts,
    UNLINK'd in batches of :data:`UNLINK_BATCH` as the scan goes (never KEYS or FLUSHDB: other keys share the
    database); returns them, decoded."""
    deleted: list[str] = []
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=match, count=UNLINK_BATCH):
        if doomed(name := key.decode(errors="replace")):
            deleted.append(name)
            batch.append(key)
        if len(batch) == UNLINK_BATCH:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)
    return deleted
