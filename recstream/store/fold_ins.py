"""Graduated new items' fold-ins in Redis: who interacted with them, the stored vectors, the broadcast.

How an item's content vector is replaced (key names in recstream/contracts/keys.py):

1. Each event batch adds its new items' users (user → summed event weight) to ``foldin:users:<i>``,
   in the batch's own atomic script (apply_batch.lua), until the item graduates from the pool. The
   batch that graduates an item adds it to ``foldin:pending``, and every batch returns the pending items.
2. The worker that applied that batch computes the fold-in from those users' stored vectors
   (streams/live_model.py) and :meth:`FoldInStore.save` stores it under the model version, clears the
   item's users and its pending entry, refreshes its similar items and appends it to ``foldin:log``, in
   one script that does nothing for an item no longer pending: each fold-in is stored once, even when two
   workers computed it, and a worker killed between its batch and the save leaves the item pending for
   the next batch any worker applies.
3. Items are broadcast, so every worker tails ``foldin:log`` and replaces the item's vector in its own
   index; a worker loading a version (start, hot swap) first applies everything stored under it.

Only items the model version was not trained on are tracked, and tracking stops at graduation, so
the stored users of an item still in the pool are a function of the events alone (sums of weights)
and a restarted worker reproduces them, up to ``fold_in_users`` users (the first ones; above
``pool_graduate_views`` it is reached only by clicks without views). Which users got in past the cap,
and the fold-in itself, which reads the users' vectors as they are at graduation, depend on how the
partitions interleave.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from recstream.contracts.keys import Keys
from recstream.store.connection import gathered, queue_mget

LOG_LENGTH = 100_000  # fold-ins kept in the stream (approximately): a worker (re)loading reads the hash instead

SAVE = """
-- KEYS[1]: foldin:pending (where a cluster runs it: every key here is in the shared slot)
-- ARGV: the shared slot's prefix, version, log length, then (item, float32 vector or '', similar list or '') triples
local P = ARGV[1] .. ':'
local stored = 0
for k = 4, #ARGV, 3 do
  local item = ARGV[k]
  if redis.call('SREM', P .. 'foldin:pending', item) == 1 then
    redis.call('DEL', P .. 'foldin:users:' .. item)
    if ARGV[k + 1] ~= '' then
      redis.call('HSET', P .. 'foldin:' .. ARGV[2], item, ARGV[k + 1])
      if ARGV[k + 2] ~= '' then redis.call('SET', P .. 'item:' .. item .. ':similar', ARGV[k + 2]) end
      redis.call('XADD', P .. 'foldin:log', 'MAXLEN', '~', ARGV[3], '*',
                 'version', ARGV[2], 'item', item, 'vec', ARGV[k + 1])
      stored = stored + 1
    end
  end
end
return stored
"""


@dataclass(frozen=True, slots=True)
class ItemUsers:
    """The users of one graduated item that have a vector: their vectors (rows) and summed event weights."""

    vectors: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True, slots=True)
class FoldIn:
    version: str
    item: str
    vector: np.ndarray


class FoldInStore:
    """Reads and writes of the fold-in keys; a worker's :class:`~streams.live_model.LiveModel` owns one."""

    def __init__(self, redis: Redis | RedisCluster, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._save = redis.register_script(SAVE)

    async def users(self, items: list[str], dim: int) -> tuple[dict[str, ItemUsers], list[str]]:
        """Each item's stored users with a ``dim``-long finite vector (sorted by id: the solve's rounding is then
        a function of the set), in two round trips, and the fields no worker writes, named. A user without a
        vector would add nothing to the fold-in (x_u = 0 in both sums), so leaving them out is exact; a field whose
        user is not UTF-8 or whose weight is no finite number is left out too, as the batch script leaves it
        uncounted (it failed every later batch's fold-ins, the good items' with it)."""
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            pipe.hgetall(self.keys(f"foldin:users:{item}"))
        stored, unreadable = [], []
        for item, raw in zip(items, await pipe.execute(), strict=True):
            users = {}
            for user, weight in raw.items():
                try:
                    users[user.decode()] = _weight(weight)
                except (UnicodeDecodeError, ValueError) as exc:
                    unreadable.append(f"field {user!r} of foldin:users:{item} ({exc})")
            stored.append(users)
        everyone = sorted({user for users in stored for user in users})
        names = [self.keys.user(u, "vec") for u in everyone]
        pipe = self.redis.pipeline(transaction=False)
        groups = queue_mget(pipe, names)
        raw = gathered(groups, await pipe.execute(), len(names))
        vectors = {
            u: vector
            for u, v in zip(everyone, raw, strict=True)
            if v and len(v) == 4 * dim and np.isfinite(vector := np.frombuffer(v, "<f4")).all()
        }
        out = {}
        for item, users in zip(items, stored, strict=True):
            known = sorted(u for u in users if u in vectors)
            out[item] = ItemUsers(
                vectors=np.array([vectors[u] for u in known], dtype=np.float32).reshape(len(known), dim),
                weights=np.array([users[u] for u in known], dtype=np.float64),
            )
        return out, unreadable

    async def save(self, version: str, results: list[tuple[str, np.ndarray | None, bytes | None]]) -> int:
        """Store (item, vector, similar list) for the items still pending; a None vector only resolves the item
        (no user had a vector, or the model knows it). Returns how many vectors were stored."""
        args: list[str | bytes | int] = [self.keys.slot(None), version, LOG_LENGTH]
        for item, vector, similar in results:
            args += [item, b"" if vector is None else _encode(vector), similar or b""]
        return int(await self._save(keys=[self.keys("foldin:pending")], args=args))

    async def stored(self, version: str) -> tuple[dict[str, np.ndarray], list[str]]:
        """The fold-ins stored under ``version`` (item → vector), and the fields that could not be read, each named
        (a name that is not UTF-8, a value that is not :func:`vector_of`'s: another writer's)."""
        fold_ins, unreadable = {}, []
        for item, vector in (await self.redis.hgetall(self.keys(f"foldin:{version}"))).items():
            try:
                fold_ins[item.decode()] = vector_of(vector)
            except ValueError as exc:
                unreadable.append(f"item {item!r} of foldin:{version} ({exc})")
        return fold_ins, unreadable

    async def log_end(self) -> str:
        """The id of the last fold-in in the log ("0-0" when empty): where a new follower starts."""
        last = await self.redis.xrevrange(self.keys("foldin:log"), count=1)
        return last[0][0].decode() if last else "0-0"

    async def read_log(self, after: str) -> tuple[str, list[FoldIn], list[str]]:
        """Fold-ins logged after ``after`` (at once, none if none), the new position, and the entries that could not
        be read, each named (:func:`fold_in_of`: another writer's)."""
        reply = await self.redis.xread({self.keys("foldin:log"): after}, count=1_000)
        entries = reply[0][1] if reply else []
        fold_ins, unreadable = [], []
        for entry, fields in entries:
            try:
                fold_ins.append(fold_in_of(fields))
            except ValueError as exc:
                unreadable.append(f"foldin:log entry {entry.decode()} ({exc})")
        return (entries[-1][0].decode() if entries else after), fold_ins, unreadable


def _weight(raw: bytes) -> float:
    """A stored fold-in weight; ValueError unless a finite number.

    >>> _weight(b"2.5")
    2.5
    >>> _weight(b"nan")
    Traceback (most recent call last):
    ValueError: weight b'nan' is not finite
    """
    weight = float(raw)
    if not math.isfinite(weight):
        raise ValueError(f"weight {raw!r} is not finite")
    return weight


def fold_in_of(fields: Mapping[bytes, bytes]) -> FoldIn:
    """A fold-in from its stored fields, as :meth:`FoldInStore.save` writes them; ValueError naming what is wrong
    when another writer left something else (a field missing, a name that is not UTF-8, a vector that is not whole
    float32s). Whether the vector fits a model (its length, finite values) is the model's to check.

    >>> fold_in_of({b"version": b"v1", b"item": b"i1", b"vec": bytes(8)}).vector
    array([0., 0.], dtype=float32)
    >>> fold_in_of({b"version": b"v1", b"item": b"i1", b"vec": b"abc"})
    Traceback (most recent call last):
    ValueError: a vector of 3 bytes, not whole float32s
    >>> fold_in_of({b"version": b"v1", b"vec": bytes(8)})
    Traceback (most recent call last):
    ValueError: no item field
    """
    missing = [name.decode() for name in (b"version", b"item", b"vec") if name not in fields]
    if missing:
        raise ValueError(f"no {', '.join(missing)} field")
    return FoldIn(fields[b"version"].decode(), fields[b"item"].decode(), vector_of(fields[b"vec"]))


def vector_of(raw: bytes) -> np.ndarray:
    """A stored float32 vector (little endian); ValueError unless ``raw`` is whole float32s."""
    if len(raw) % 4:
        raise ValueError(f"a vector of {len(raw)} bytes, not whole float32s")
    return np.frombuffer(raw, "<f4")


def _encode(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()
