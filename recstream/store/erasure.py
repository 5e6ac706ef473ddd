"""A user's erasure in Redis: every key and field stored under the user's id deleted in one atomic step.

What is stored under a user's id (recstream/contracts/keys.py): the keys ``user:<u>:<what>`` of
:data:`~recstream.contracts.keys.USER_KEYS`, the scroll sessions ``user:<u>:feed:<session>``, the
user's entry in ``user:seg`` and the user's field in ``foldin:users:<i>`` of every new item they
touched. The sessions and the new items' hashes are found with SCAN (incremental: it never blocks
Redis), then one script deletes everything and adds the id to ``erased``, so a reader never sees
half an erased user.

What stays: the user's share of aggregates keyed by item or segment (view and click counters, CTR
rankings, trend counts, the pool's bandit counts, fold-in vectors already computed) and of the
model's item factors. Those are sums over many users and name nobody; ``recstream rebuild`` recomputes
them without the user's events, ``recstream train`` refits the model without them (both read the
``erasures`` topic, recstream/eventlog/erasures.py).

Events of the user still in flight when the script runs (published, not yet applied) bring keys back;
erase once the user's client stopped sending, or erase again after the workers caught up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from recstream.contracts.keys import USER_KEYS, USER_SESSIONS, Keys

Execute = Callable[..., Awaitable[list[Any]]]
"""Sends commands (tuples) in one round trip and returns their replies: the reader's ``RedisClient.execute``."""

SCAN_COUNT = 1_000
ERASE = """
-- KEYS: erased, user:seg, then the keys to delete, then the hashes holding a field named after the user
-- ARGV: the user id, how many keys to delete
local user, n = ARGV[1], tonumber(ARGV[2])
local removed = redis.call('HDEL', KEYS[2], user)
for k = 3, 2 + n do removed = removed + redis.call('DEL', KEYS[k]) end
for k = 3 + n, #KEYS do removed = removed + redis.call('HDEL', KEYS[k], user) end
redis.call('SADD', KEYS[1], user)
return removed
"""


async def erase_user(execute: Execute, keys: Keys, user_id: str) -> int:
    """Delete everything stored under ``user_id`` and add it to ``erased``; how many keys and fields went."""
    sessions = await scan(execute, keys.user(user_id, USER_SESSIONS))
    new_items = await scan(execute, keys("foldin:users:*"))
    doomed = [keys.user(user_id, what) for what in USER_KEYS] + sessions
    names = [keys("erased"), keys.user_segments(user_id), *doomed, *new_items]
    [removed] = await execute(("EVAL", ERASE, len(names), *names, user_id, len(doomed)))
    return int(removed)


async def scan(execute: Execute, pattern: str) -> list[str]:
    """Every key matching ``pattern``, by SCAN (ids hold no glob characters, recstream.contracts.events.ID_PATTERN)."""
    found: list[str] = []
    cursor = "0"
    while True:
        [(cursor, names)] = await execute(("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT))
        found += [name.decode() if isinstance(name, bytes) else name for name in names]
        if cursor in ("0", b"0"):
            return list(dict.fromkeys(found))  # SCAN may return a key twice
