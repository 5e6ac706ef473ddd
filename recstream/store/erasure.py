"""A user's erasure in Redis: every key and field stored under the user's id deleted in one atomic step.

What is stored under a user's id (recstream/contracts/keys.py): the keys ``user:<u>:<what>`` of
:data:`~recstream.contracts.keys.USER_KEYS`, the scroll sessions ``user:<u>:feed:<session>``, the
user's entry in ``user:seg`` and the user's field in ``foldin:users:<i>`` of every new item they
touched, and the names of the user's sessions listed in ``sessions:anonymous`` (a session that began before
the user was known; the name spells the id, and it outlives the session it names until the index evicts it). The
sessions, the new items' hashes and those index entries are found with SCAN and ZSCAN (incremental: they never
block Redis), then a script deletes everything and adds the id to ``erased``. On one Redis that is one script
call, so nothing of the erasure is ever half done. On a Redis Cluster a script may touch one hash slot, and
the user's keys and ``user:seg`` are in the user's slot, the new items' hashes in the shared one: one call per
slot, the user's first, each adding the id to its slot's ``erased``. A reader still never sees half an erased user
(it reads a user's keys from the user's slot only, and they go at once); a failure between the two calls
leaves the fold-in fields until the erasure is repeated (it is idempotent) or a worker's check finds the shared
``erased`` without the id (below). What the SCAN cannot see: a new item's hash whose first field is the user's,
written by a batch between the SCAN and the script (a few milliseconds); repeating the erasure removes it.

What stays: the user's share of aggregates keyed by item or segment (view and click counters, CTR
rankings, trend counts, the pool's bandit counts, fold-in vectors already computed) and of the
model's item factors. Those are sums over many users and name nobody; ``recstream rebuild`` recomputes
them without the user's events, ``recstream train`` refits the model without them (both read the
``erasures`` topic, recstream/eventlog/erasures.py). The model versions on disk also hold the user's batch
vector under the id (models/artifacts.py ``user_factors.npy``: the online step's anchor; a step of an erased id is
never written, above) until a training writes a version without it and pruning removes the older ones.

An erased id stays erased, like a deleted account: the worker's batch script reads the slot's ``erased`` in the
same script that writes a batch's user state (apply_batch.lua, step 1c) and writes nothing under an erased id, so
an event of the user applied after the erasure, whether it was published before it (in flight, in a batch whose
script was waiting) or after it, brings nothing back; its views and clicks still count in the aggregates above,
until the next rebuild drops every event of the id (as it always did, wherever the event sits on the log). A
returning person comes back under a new id. Scripts run one at a time, so every batch is applied either before the
erasure's script (which deletes what it wrote) or after it (and writes nothing of the user): no window is left.
On a Redis Cluster each call marks its own slot's ``erased``: from the user's call on, no batch writes the user's
keys; from the shared call on, no fold-in field. The workers cache histories: ``erased:count`` moves with each
erasure, and a worker that sees it move drops its cache.

A Redis that loses an erasure (a crash inside the ``everysec`` fsync window, a failover) gets it back from the
``erasures`` topic, the source of truth: each slot's ``erased:checked`` holds, per partition of the topic, the
offset below which every erasure is in the slot's ``erased``, written after a check found them there
(:func:`unmarked`, :func:`note_checked`). A Redis that lost an erasure lost that offset with it (its writes are
lost from the end), so the worker's next check (at each partition assignment, and whenever it finds Redis lost
batches, streams/processor.py) reads the topic from there, finds the erasure missing and erases the user again
before it re-applies the lost batches. The common case reads the erasures made since the last check, a few.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from recstream.contracts.keys import USER_KEYS, USER_SESSIONS, Keys


class Client(Protocol):
    """The reader's Redis client (serving/redis_client.py): commands in one round trip, and SCAN by pattern."""

    async def execute(self, *commands: Sequence[Any]) -> list[Any]: ...

    async def scan(self, pattern: str) -> list[str]: ...


class Commands:
    """:class:`Client` over redis-py's asyncio client (a worker's connection), its replies as the reader's client
    gives them: strings decoded (surrogate escapes keep any byte)."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis

    async def execute(self, *commands: Sequence[Any]) -> list[Any]:
        return [_text(await self.redis.execute_command(*command)) for command in commands]

    async def scan(self, pattern: str) -> list[str]:  # on a cluster: every master's keys
        return [_text(key) async for key in self.redis.scan_iter(match=pattern, count=1000)]


ERASE = """
-- KEYS: ARGV[2] keys to delete, then, if ARGV[3] > 0, the index listing the last ARGV[3] of them as members, then the
-- hashes holding a field named after the user, then the slot's `erased`, then `erased:count` if ARGV[4] is 1 (all in
-- one hash slot)
local user, n, listed, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local erased = count and #KEYS - 1 or #KEYS
local removed = 0
for k = 1, n do removed = removed + redis.call('DEL', KEYS[k]) end
for k = n - listed + 1, n do removed = removed + redis.call('ZREM', KEYS[n + 1], KEYS[k]) end
for k = listed > 0 and n + 2 or n + 1, erased - 1 do removed = removed + redis.call('HDEL', KEYS[k], user) end
redis.call('SADD', KEYS[erased], user)  -- from now on the batch script writes nothing of the user in this slot
if count then redis.call('INCR', KEYS[#KEYS]) end  -- the workers drop their cached histories (store/state.py)
return removed
"""


async def erase_user(client: Client, keys: Keys, user_id: str) -> int:
    """Delete everything stored under ``user_id`` and add it to ``erased``; how many keys, fields and index entries
    went."""
    return await erase_users(client, keys, [user_id])


async def erase_users(client: Client, keys: Keys, users: Iterable[str]) -> int:
    """:func:`erase_user` for each of ``users``, in order, after one search for what all of them hold; how many keys,
    fields and index entries went.

    A SCAN walks the whole keyspace whatever its pattern, so the searches are shared: a worker re-erasing the many
    erasures a Redis lost (or a cluster's first check) pays two keyspace walks, not two a user, and keeps applying.
    For one user the patterns name the user, so only its own sessions cross the wire.
    """
    users = list(dict.fromkeys(users))
    if not users:
        return 0
    sessions = await _sessions(client, keys, users)
    new_items = await client.scan(keys("foldin:users:*"))
    shared = keys.erased()
    removed = 0
    for user_id in users:
        own_sessions, index, own = sessions[user_id], keys.anonymous_sessions(user_id), keys.erased(user_id)
        doomed = [keys.user(user_id, what) for what in USER_KEYS] + own_sessions
        own_hashes = [*([index] if own_sessions else []), keys.user_segments(user_id)]  # the index first, if any
        # (keys to delete, how many of them the index lists, hashes, the slot's `erased`, last call): the user's slot,
        # then the shared one
        calls = [(doomed, len(own_sessions), own_hashes, own, False), ([], 0, new_items, shared, True)]
        if own == shared:  # one Redis: one call
            calls = [(doomed, len(own_sessions), [*own_hashes, *new_items], shared, True)]
        for deleted, listed, others, erased, last in calls:
            names = [*deleted, *others, erased, *([keys("erased:count")] if last else [])]
            [n] = await client.execute(("EVAL", ERASE, len(names), *names, user_id, len(deleted), listed, int(last)))
            removed += int(n)
    return removed


async def _sessions(client: Client, keys: Keys, users: list[str]) -> dict[str, list[str]]:
    """Each user's scroll sessions: the keys ``user:<u>:feed:<session>`` and the names the ``sessions:anonymous``
    indexes of the users' slots list (a listed session may have expired: its name still spells the id).

    Ids hold no ``:`` (``ID_PATTERN``) and neither do session ids, so a name's text up to its last ``:`` names its
    user exactly; for many users one pattern matches every slot's sessions, and names of users not asked for are
    dropped.
    """
    owner = {keys.user(user, USER_SESSIONS).removesuffix("*"): user for user in users}
    pattern = keys.user(users[0], USER_SESSIONS) if len(users) == 1 else f"{keys.prefix}:*user:*:{USER_SESSIONS}"
    found = await client.scan(pattern)
    for index in dict.fromkeys(keys.anonymous_sessions(user) for user in users):
        found += await _members(client, index, pattern)
    sessions: dict[str, list[str]] = {user: [] for user in users}
    for name in dict.fromkeys(found):
        user = owner.get(name[: name.rfind(":") + 1])
        if user is not None:
            sessions[user].append(name)
    return sessions


MEMBERS = "return redis.call('ZSCAN', KEYS[1], ARGV[1], 'MATCH', ARGV[2], 'COUNT', 1000)"
"""One ZSCAN step, in a script: both clients answer a script with its raw reply (redis-py parses a bare ZSCAN's)."""


async def _members(client: Client, key: str, pattern: str) -> list[str]:
    """The members of the sorted set ``key`` matching ``pattern``, by ZSCAN (each step O(COUNT), like SCAN)."""
    found: list[str] = []
    cursor = "0"
    while True:
        [(cursor, page)] = await client.execute(("EVAL", MEMBERS, 1, key, cursor, pattern))
        found += page[::2]  # member, score, member, score, …
        if str(cursor) == "0":
            return found


async def mark_erased(redis: Redis | RedisCluster, keys: Keys, users: Iterable[str]) -> None:
    """Add ``users`` to the ``erased`` of their own slot and of the shared one (the rebuild refills them so)."""
    for key, group in _by_set(keys, users):
        await redis.sadd(key, *group)


async def checked_offsets(redis: Redis | RedisCluster, keys: Keys) -> dict[tuple[str, int], int]:
    """Per partition of the erasures topic, the offset below which every slot holds every erasure in its ``erased``
    (the least of the slots' ``erased:checked``); a partition some slot has none for is left out (read it whole)."""
    slots = keys.slots()
    pipe = redis.pipeline(transaction=False)
    for slot in slots:
        pipe.hgetall(f"{slot}:erased:checked")
    held: dict[tuple[str, int], list[int]] = {}
    for fields in await pipe.execute():
        for tp, offset in fields.items():
            topic, _, partition = tp.decode().rpartition(":")
            held.setdefault((topic, int(partition)), []).append(int(offset))
    return {tp: min(offsets) for tp, offsets in held.items() if len(offsets) == len(slots)}


async def unmarked(redis: Redis | RedisCluster, keys: Keys, users: Iterable[str]) -> list[str]:
    """The ``users`` that the ``erased`` of their own slot or of the shared one does not hold (sorted): erasures
    Redis lost, or not applied yet."""
    groups = _by_set(keys, users)
    pipe = redis.pipeline(transaction=False)
    for key, group in groups:
        pipe.smismember(key, group)
    missing: set[str] = set()
    for (_, group), found in zip(groups, await pipe.execute(), strict=True):
        missing.update(user for user, held in zip(group, found, strict=True) if not held)
    return sorted(missing)


async def note_checked(redis: Redis | RedisCluster, keys: Keys, ends: Mapping[tuple[str, int], int]) -> None:
    """Record in every slot that each erasure below ``ends`` is in its ``erased`` (checked, or erased again)."""
    if not ends:
        return
    pipe = redis.pipeline(transaction=False)
    for slot in keys.slots():
        pipe.hset(f"{slot}:erased:checked", mapping={f"{t}:{p}": end for (t, p), end in ends.items()})
    await pipe.execute()


def _by_set(keys: Keys, users: Iterable[str], size: int = 10_000) -> list[tuple[str, list[str]]]:
    """``users`` grouped by the ``erased`` sets that hold them (their own slot's and the shared one; one set on one
    Redis), in groups of at most ``size``: one command each, so none blocks Redis for long.

    >>> _by_set(Keys("rs"), ["a", "b", "c"], size=2)
    [('rs:erased', ['a', 'b']), ('rs:erased', ['c'])]
    >>> [len(_by_set(Keys("rs"), ["u"] * n, size=2)) for n in (1, 2, 3)]  # the limit - 1, the limit, the limit + 1
    [1, 1, 2]
    >>> _by_set(Keys("rs", partitions=4), ["u1"])
    [('rs:{p0}:erased', ['u1']), ('rs:{shared}:erased', ['u1'])]
    """
    by_set: dict[str, list[str]] = {}
    for user in users:
        for key in dict.fromkeys((keys.erased(user), keys.erased())):
            by_set.setdefault(key, []).append(user)
    return [(key, group[k : k + size]) for key, group in by_set.items() for k in range(0, len(group), size)]


def _text(reply: Any) -> Any:
    """A reply with every bytes value decoded (nested lists too)."""
    if isinstance(reply, bytes):
        return reply.decode(errors="surrogateescape")
    if isinstance(reply, list | tuple):
        return [_text(r) for r in reply]
    return reply
