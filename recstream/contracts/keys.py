"""The Redis key layout: the one place the writers (workers) and the reader agree on names.

Ids reach these functions only after :mod:`recstream.contracts.events` validated them (bounded length,
``[A-Za-z0-9_.-]``, no ``:``), so a key can never be spliced from hostile input, nor can one
item's key name another's (``item:<id>`` vs ``item:<id>:similar``). Every key starts with
a configurable prefix, so several deployments (or test runs) can share one Redis.

===========================  ======  ==========================================================
key                          type    holds
===========================  ======  ==========================================================
``wm``                       hash    ``topic:partition`` → last applied offset (the watermark)
``totals``                   hash    ``views``, ``clicks``; ``views:<seg>``, ``clicks:<seg>``
``views`` / ``clicks``       hash    item → all-time count
``seg:<s>:views|clicks``     hash    item → count within segment ``s``
``segments``                 set     every segment seen
``prior``                    string  the quantized global CTR every score was computed with
``rescore``                  string  the HSCAN cursor over ``views`` of an unfinished rescore pass (the prior moved)
``rank`` / ``rank:<s>``      zset    item → smoothed CTR (global / within segment); available items
``segments:rescore``         set     items whose scores in ``rank:<s>`` wait for a batch that ranks segments
``trend:<v|c>:<epoch>``      zset    item → fixed-point decayed views/clicks (models.ctr.trend_*)
``pool``                     zset    new-item pool: item → created_ts, or its first event if earlier (Thompson)
``graduated``                set     items that left the pool (by views, age or a standing clock)
``clock``                    string  the largest event timestamp applied (event time)
``clock:events``             string  events applied at ``clock``'s instant (a standing clock graduates the pool)
``counted``                  hash    events partition (its number) → the events applied from it
``first``                    hash    item → its first event as a count of all events, estimated: the least over events
                                     partitions p of P × p's ``counted`` before its first event there (P partitions)
``item:<i>``                 hash    ``categories`` (comma list), ``created_ts``, ``available``, ``features`` (JSON)
``unavailable``              set     items hidden from every ranking and list
``user:seg``                 hash    user → segment
``user:<u>:hist``            string  JSON ``[[item, weight], …]``, most recent first, capped
``user:<u>:vec``             string  float32 user vector (little endian)
``user:<u>:cand``            string  JSON ``[[item, score, because_item], …]`` personal candidates
``user:<u>:bcand``           string  the same by the fit's user vector, longer; only users the model version knows
``user:<u>:seen``            zset    item → last shown/clicked ts, capped, most recent first
``user:<u>:prefs``           string  JSON ``{"categories": [...], "not_interested": [...]}``
``erased``                   set     users erased (``DELETE /v1/users/{id}``): the workers write nothing under their
                                     ids; one per slot on a cluster (the shared one, the user's); from ``erasures``
``erased:count``             string  erasures made so far: a worker that sees it move drops its cached histories
``erased:checked``           hash    ``topic:partition`` of ``erasures`` → the offset up to which (exclusive) every
                                     erasure is in ``erased``; one per slot on a cluster (recstream/store/erasure.py)
``item:<i>:similar``         string  JSON ``[[item, score], …]`` nearest neighbours, best first
``eids:<topic>:<p>``         zset    ``user:event_id`` → arrival ms, a partition's de-duplication window
``foldin:pending``           set     graduated items whose fold-in is not stored yet
``foldin:users:<i>``         hash    user → summed event weight on new item ``i``, until its fold-in (capped)
``foldin:<version>``         hash    item → float32 fold-in vector under that model version
``foldin:log``               stream  ``version``, ``item``, ``vec`` per stored fold-in, which every worker tails
``user:<u>:feed:<session>``  list    the reader's infinite-scroll session: JSON ``[[item, source], …]`` pages, TTL
``user:<u>:sessions``        zset    the user's scroll sessions by last use (at most ``sessions_per_user``)
``sessions:anonymous``       zset    session keys of ids nothing is stored for, by last use (capped)
``model:current``            string  the model version the workers serve
``ranker:<v>:<topic>:<p>``   string  the online ranker's FTRL state learned from partition ``p`` (models.ranker
                                     bytes), written with that partition's watermark; the reader averages them.
                                     ``v`` is contracts.ranking.FEATURE_VERSION: a changed feature set
                                     starts new states, never learns on or averages weights of other features
===========================  ======  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from recstream.contracts.events import partition_for
from recstream.contracts.ranking import FEATURE_VERSION

if TYPE_CHECKING:
    from recstream.contracts.settings import Settings

USER_KEYS = ("hist", "vec", "cand", "bcand", "seen", "prefs", "sessions")
"""The fixed per-user keys ``user:<u>:<what>``. With the scroll sessions (:data:`USER_SESSIONS`), the
``user:seg`` entry and the user's fields in ``foldin:users:<i>`` they are everything stored under a user's
id, which an erasure deletes at once (recstream/store/erasure.py); tests/contracts/test_keys.py keeps this
list equal to the table above."""
USER_SESSIONS = "feed:*"
"""The pattern of a user's scroll sessions, ``user:<u>:feed:<session>``."""

NOT_DERIVED = ("model:current", "user:*:feed:*", "user:*:sessions", "sessions:anonymous", "erased:count")
"""Key patterns (after the prefix) that are not a function of the Kafka log: the model pointer (set by
``recstream train``), the reader's scroll sessions and their indexes (deleted, the sessions outlived their caps
until their TTL) and the erasure count. ``recstream rebuild`` deletes every other key and recomputes it from the
log (``item:<i>:similar`` from the current model and the items topic)."""


def pointed_version(raw: bytes) -> str:
    """The model version a ``model:current`` value names. Bytes that are not UTF-8 (another writer's) stay visible
    as ``\\xNN``: such a name matches no version folder, so it is refused as any broken version is (a worker keeps
    the model it serves, the rebuild stops) instead of raising at every read.

    >>> pointed_version(b"20261205T110000Z-0a1b2c"), pointed_version(b"\\xff")
    ('20261205T110000Z-0a1b2c', '\\\\xff')
    """
    return raw.decode(errors="backslashreplace")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; ``Keys("rs").user("u1", "vec") == "rs:user:u1:vec"``.

    On a Redis Cluster (``partitions``: the events topic's partition count) every key carries a hash tag, so that
    each of the worker's atomic scripts touches one slot (ARCHITECTURE.md, "Redis Cluster"): what a user owns, and
    what an events partition owns (its watermarks, event ids, ranker state), under ``{p<N>}``, N the user's
    partition (Kafka's murmur2 partitioner, :func:`partition_for`, fixed for the topic's life); everything shared
    (counters, rankings, items, the pool, the model pointer) under ``{shared}``.

    >>> keys = Keys("rs", partitions=4)
    >>> keys.user("u1", "vec"), keys("rank"), keys.watermarks(2)
    ('rs:{p0}:user:u1:vec', 'rs:{shared}:rank', 'rs:{p2}:wm')
    >>> Keys("rs").watermarks(2) == Keys("rs").watermarks(None) == "rs:wm"
    True
    """

    prefix: str = "rs"
    partitions: int | None = None

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The layout ``settings`` use: hash-tagged when ``redis.cluster`` is set."""
        return cls(settings.redis.prefix, settings.kafka.events_partitions if settings.redis.cluster else None)

    def __call__(self, *parts: str) -> str:
        """A shared key (``{shared}`` slot on a cluster)."""
        return ":".join((self.slot(None), *parts))

    def slot(self, partition: int | None) -> str:
        """The prefix of events partition ``partition``'s slot (None: the shared one); the prefix alone on one Redis."""
        if self.partitions is None:
            return self.prefix
        return f"{self.prefix}:{{shared}}" if partition is None else f"{self.prefix}:{{p{partition}}}"

    def slots(self) -> list[str]:
        """Every slot's prefix: the shared one, then each events partition's (the one prefix on one Redis)."""
        return list(dict.fromkeys(self.slot(s) for s in (None, *range(self.partitions or 0))))

    def home(self, user_id: str) -> int | None:
        """The events partition whose slot holds the user's keys (None on one Redis, where there are no slots)."""
        return None if self.partitions is None else partition_for(user_id, self.partitions)

    def user(self, user_id: str, what: str) -> str:
        return f"{self.slot(self.home(user_id))}:user:{user_id}:{what}"

    def user_segments(self, user_id: str) -> str:
        """``user:seg``, the hash of user → segment; one per slot on a cluster (the user's)."""
        return f"{self.slot(self.home(user_id))}:user:seg"

    def erased(self, user_id: str | None = None) -> str:
        """``erased``: the set of erased users of the user's slot (None: the shared one). On one Redis both are the
        one set; on a cluster a script may read its own slot only, so the worker's batch script checks the slot it
        writes and an erasure marks the user in both."""
        return f"{self.slot(None if user_id is None else self.home(user_id))}:erased"

    def watermarks(self, partition: int | None) -> str:
        """``wm``: the watermarks of the writes in a slot (every slot keeps its own on a cluster)."""
        return f"{self.slot(partition)}:wm"

    def event_ids(self, topic: str, partition: int) -> str:
        return f"{self.slot(partition)}:eids:{topic}:{partition}"

    def anonymous_sessions(self, user_id: str) -> str:
        """``sessions:anonymous``: one per slot on a cluster, so a session and its index share the user's slot."""
        return f"{self.slot(self.home(user_id))}:sessions:anonymous"

    def item(self, item_id: str) -> str:
        return self(f"item:{item_id}")

    def rank(self, segment: str | None = None) -> str:
        return self("rank") if segment is None else self(f"rank:{segment}")

    def seg(self, segment: str, what: str) -> str:
        return self(f"seg:{segment}:{what}")

    def trend(self, what: str, epoch_ms: int) -> str:
        return self(f"trend:{what}:{epoch_ms}")

    def ranker(self, topic: str, partition: int) -> str:
        return f"{self.slot(partition)}:ranker:{FEATURE_VERSION}:{topic}:{partition}"
