"""A user's erasure in Redis: every key and field stored under the user's id deleted in one atomic step.

What is stored under a user's id (recstream/contracts/keys.py): the keys ``user:<u>:<what>`` of
:data:`~recstream.contracts.keys.USER_KEYS`, the scroll sessions ``user:<u>:feed:<session>``, the
user's entry in ``user:seg`` and the user's field in ``foldin:users:<i>`` of every new item they
touched, and the names of the user's sessions listed in ``sessions:anonymous`` (a session that began before
the user was known; the name spells the id, and it outlives the session it names until the index evicts it). The
sessions, the new items' hashes and those index entries are found with SCAN and ZSCAN (incremental: they never
block Redis), then a script deletes everything and adds the id to ``erased``. On one Redis that is one script
call, so nothing of the erasure is ever half done. On a Redis Cluster a script may touch one hash slot, and
the user's keys and ``user:seg`` are in the user's slot, the new items' hashes and ``erased`` in the shared
one: one call per slot, the user's first, ``erased`` last. A reader still never sees half an erased user
(it reads a user's keys from the user's slot only, and they go at once); a failure between the two calls
leaves the fold-in fields and ``erased`` until the erasure is repeated (it is idempotent).

What stays: the user's share of aggregates keyed by item or segment (view and click counters, CTR
rankings, trend counts, the pool's bandit counts, fold-in vectors already computed) and of the
model's item factors. Those are sums over many users and name nobody; ``recstream rebuild`` recomputes
them without the user's events, ``recstream train`` refits the model without them (both read the
``erasures`` topic, recstream/eventlog/erasures.py).

Events of the user still in flight when the script runs (published, not yet applied, or a worker's batch whose
script is running) bring keys back; erase once the user's client stopped sending, or erase again after the workers
caught up. The workers cache histories: ``erased:count`` moves with each erasure, and a worker that sees it move
drops its cache, so the erased history does not come back with the user's next event. On a Redis Cluster it moves
with the second call: an event of the user between the two calls (or after a failure between them) may bring the
history back, and repeating the erasure removes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from recstream.contracts.keys import USER_KEYS, USER_SESSIONS, Keys


class Client(Protocol):
    """The reader's Redis client (serving/redis_client.py): commands in one round trip, and SCAN by pattern."""

    async def execute(self, *commands: Sequence[Any]) -> list[Any]: ...

    async def scan(self, pattern: str) -> list[str]: ...


ERASE = """
-- KEYS: ARGV[2] keys to delete, then, if ARGV[3] > 0, the index listing the last ARGV[3] of them as members, then the
-- hashes holding a field named after the user, then `erased` and `erased:count` if ARGV[4] is 1 (all in one hash slot)
local user, n, listed, mark = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local hashes_end = mark and #KEYS - 2 or #KEYS
local removed = 0
for k = 1, n do removed = removed + redis.call('DEL', KEYS[k]) end
for k = n - listed + 1, n do removed = removed + redis.call('ZREM', KEYS[n + 1], KEYS[k]) end
for k = listed > 0 and n + 2 or n + 1, hashes_end do removed = removed + redis.call('HDEL', KEYS[k], user) end
if mark then
  redis.call('SADD', KEYS[#KEYS - 1], user)
  redis.call('INCR', KEYS[#KEYS])  -- the workers drop their cached histories (recstream/store/state.py)
end
return removed
"""


async def erase_user(client: Client, keys: Keys, user_id: str) -> int:
    """Delete everything stored under ``user_id`` and add it to ``erased``; how many keys, fields and index entries
    went."""
    pattern, index = keys.user(user_id, USER_SESSIONS), keys.anonymous_sessions(user_id)
    sessions = list(dict.fromkeys([*await client.scan(pattern), *await _members(client, index, pattern)]))
    new_items = await client.scan(keys("foldin:users:*"))
    doomed = [keys.user(user_id, what) for what in USER_KEYS] + sessions
    own_hashes = [*([index] if sessions else []), keys.user_segments(user_id)]  # the index first, if it lists any
    own, shared = keys.slot(keys.home(user_id)), keys.slot(None)
    calls = [(doomed, len(sessions), own_hashes, False), ([], 0, new_items, True)]  # the user's slot, the shared one
    if own == shared:  # one Redis: one call
        calls = [(doomed, len(sessions), [*own_hashes, *new_items], True)]
    removed = 0
    for deleted, listed, others, mark in calls:
        names = [*deleted, *others, *([keys("erased"), keys("erased:count")] if mark else [])]
        [n] = await client.execute(("EVAL", ERASE, len(names), *names, user_id, len(deleted), listed, int(mark)))
        removed += int(n)
    return removed


async def _members(client: Client, key: str, pattern: str) -> list[str]:
    """The members of the sorted set ``key`` matching ``pattern``, by ZSCAN (each step O(COUNT), like SCAN)."""
    found: list[str] = []
    cursor = "0"
    while True:
        [(cursor, page)] = await client.execute(("ZSCAN", key, cursor, "MATCH", pattern, "COUNT", 1000))
        found += page[::2]  # member, score, member, score, …
        if str(cursor) == "0":
            return found
