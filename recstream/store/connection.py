"""The Redis client the settings ask for: one server, or a Redis Cluster (``RECSTREAM_REDIS_CLUSTER``).

Every process of the project builds its asyncio client here, so a cluster needs no code of its own elsewhere:
the store's keys carry hash tags on a cluster (recstream/contracts/keys.py) and redis-py's cluster client routes
each command, pipeline and script call to the node of its key's slot, following a failover's redirects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from recstream.contracts.settings import Settings


def connect(settings: Settings, **options: Any) -> Redis | RedisCluster:
    """An asyncio client of ``settings.redis`` (``options`` as ``from_url`` takes them, e.g. ``socket_timeout``)."""
    if settings.redis.cluster:
        return RedisCluster.from_url(settings.redis.url, **options)
    return Redis.from_url(settings.redis.url, **options)


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
