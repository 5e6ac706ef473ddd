"""Derived state in Redis, written once per batch together with its offset watermarks.

The effectively-once argument
-----------------------------
* Every Kafka message has a (topic, partition, offset). For each partition Redis keeps a
  watermark: the highest offset whose effect is in Redis (key ``wm``).
* A batch's whole effect and the new watermarks are applied by one Lua script
  (``apply_batch.lua``), which Redis runs atomically: after any crash, Redis holds either
  all of a batch or none of it, and the watermark says which.
* The worker drops every message at or below the watermark before computing anything. After
  a crash faust restarts from the last committed offset, which is never past the watermark
  (offsets are committed only after the batch was applied), so re-read messages are dropped
  and the first unapplied one is applied once.
* The script refuses a batch if a watermark is no longer the value the worker read (another
  worker took the partition in a rebalance and moved on, or a zombie wrote late). The worker
  then re-reads the watermarks, drops what is now covered and retries: no batch is applied
  twice even with two writers.
* Idempotent ingestion: an event whose user sent its ``event_id`` within ``dedup_window_s`` before
  (arrival = the record's timestamp) is dropped before anything is computed. The ids a batch applies
  are stored per partition (``eids:<topic>:<partition>``) by the same script as its watermarks, so a
  crash keeps both or neither, and a restarted worker drops a duplicate as the first one would have.
* Every stored value is a function of integer sums, maxima and per-user sequences, so the
  final state does not depend on where batches were cut (see recstream/store/aggregate.py and
  models/ctr.py for the rankings). The online ranker's state is kept per events partition
  (``ranker:<feature version>:<topic>:<p>``), read with the batch's users and written by the same script as that
  partition's watermark: a function of the partition's rows in offset order
  (streams/ranker_training.py), so each row is learned exactly once.

On a Redis Cluster
------------------
A script may touch the keys of one hash slot only, so a batch is one script call per slot it writes, each with
that slot's own watermarks (:class:`~recstream.contracts.keys.Keys`): ``{shared}`` for the counters, rankings,
items and pool (events and items partitions), ``{p<N>}`` for events partition N's users, event ids and ranker
(events and users partition N; the users topic has as many partitions as the events topic, and a user record on
another partition than its user's is dead-lettered as an event is). Each call is all-or-nothing in its slot.
When the slots disagree (a crash between two calls of a batch, or a failed-over master that lost a window),
:meth:`StateStore.watermarks` reports, per partition, the offset every slot holds and, in :attr:`StateStore.ahead`,
the highest one some slot holds; the worker then applies the messages up to that offset as a batch of their own,
whose calls the slots that hold them already answer with "done" (their watermarks are at or past the batch's end)
and the others apply. A recomputed part never reads what it writes from a slot that is ahead: the shared part is a
function of the events and the users' segments, a partition's part of the events and its own slot's histories.
On one Redis every slot is the same prefix and a batch is the one call it always was.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from recstream.contracts.keys import Keys, pointed_version
from recstream.contracts.settings import Settings
from recstream.models.history import History, history_from_rows
from recstream.store.aggregate import CounterDeltas
from recstream.store.connection import gathered, queue_mget

SCRIPT = (Path(__file__).parent / "apply_batch.lua").read_text()
RESCORE_ITEMS = 1_000
"""About how many items a batch rescores of a pass after the quantized prior moved (apply_batch.lua, step 4), and how
many items' per-segment scores a call that ranks segments takes beyond its own batch's (step 4b): a whole rescore is
O(items × segments) inside one script, which blocks Redis (bench/scale.py measured it at 100,000 items); this many
items per call keeps a call's cost bounded whatever the catalogue."""
DELETE = b""
"""A blob of no bytes deletes its key (apply_batch.lua, step 8; no value the workers write is empty): a user's list
the current model version no longer gives must not outlive the version that gave it (streams/personalize.py)."""


REFUSED = "RECSTREAM_STATE"
"""How the batch script's refusals begin: a key of the wrong type, a number that is not finite (apply_batch.lua,
step 1b). The script checks before its first write because Redis keeps a script's writes when a later command
raises: a WRONGTYPE halfway left part of the batch without its watermark, and each retry applied that part again."""


class StaleWatermark(Exception):
    """Another writer moved a watermark since it was read; re-read and retry."""


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the batch script refusing what Redis holds or what the batch carries, with nothing written:
    no wait cures it (streams/processor.py counts it as the worker's own failure, so /healthz turns red).

    >>> refused(ResponseError("RECSTREAM_STATE rs:user:u1:seen is a string, expected a zset")), refused(ValueError())
    (True, False)
    """
    return isinstance(exc, ResponseError) and str(exc).startswith(REFUSED)


@dataclass
class Effect:
    """Everything one batch writes, besides the counters: item metadata, users, watermarks."""

    watermarks: dict[str, tuple[int, int]] = field(default_factory=dict)  # tp -> (expected, new)
    counters: CounterDeltas = field(default_factory=CounterDeltas)
    # item, categories, created, ts, available, features (JSON: PATCH /v1/items merges into them)
    meta: list[tuple[str, str, int | None, int, bool, str]] = field(default_factory=list)
    user_segments: dict[str, str] = field(default_factory=dict)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)  # key suffix, whole value (DELETE: delete the key)
    histories: dict[str, History] = field(default_factory=dict)  # users' new histories (also in blobs)
    item_users: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # new item → user → weights
    event_ids: dict[str, dict[str, int]] = field(default_factory=dict)  # tp → "user:event_id" → arrival ms
    rankers: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (topic, partition) → new ranker state
    # rescore the per-segment rankings of items waiting, as many as the batch touched and at least ``rescore_items``
    # (apply_batch.lua, step 4b); a batch that does not only adds its items to those waiting (streams/processor.py
    # asks about twice a second)
    rank_segments: bool = True
    # erased:count the histories were read under: once applied they are cached only if no erasure came since
    erasures: bytes | bool | None = False


@dataclass(frozen=True)
class UserContext:
    segments: dict[str, str]
    histories: dict[str, History]
    erasures: bytes | None  # erased:count as read with them (Effect.erasures)
    model_version: str | None
    rankers: dict[tuple[str, int], bytes] = field(default_factory=dict)  # the stored ones of the partitions asked for
    unreadable: dict[str, list[str]] = field(default_factory=dict)  # kind → what was read as absent, named and why


@dataclass(frozen=True)
class Applied:
    prior: float
    full_rescore: bool  # the prior moved: a rescore pass over every item started
    graduated: list[str]
    fold_ins: list[str]  # graduated items waiting for their fold-in (recstream/store/fold_ins.py)
    rescore_pending: bool = False  # a rescore pass is not finished: later batches (or empty ones) go on with it
    segments_pending: int = 0  # items whose per-segment scores wait for a call that ranks segments (step 4b)
    replayed: bool = False  # some slot had applied the batch already: its histories came from a slot that was ahead
    written: bool = True  # False: every slot had applied it already (another worker, a rebalance race): nothing now
    answered: bool = True  # the shared state's slot answered "ok": the pending figures above are its, not defaults
    standing: bool = False  # the event clock stood still for pool.graduate_standing_events: the pool graduates all


class StateStore:
    """Reads what a batch needs and applies its effect in one atomic round trip each."""

    def __init__(self, redis: Redis | RedisCluster, settings: Settings, rescore_items: int = RESCORE_ITEMS) -> None:
        self.redis = redis
        self.keys = Keys.of(settings)
        self.settings = settings
        self._script = redis.register_script(SCRIPT)
        self._histories: dict[str, History] = {}
        self._erasures: bytes | bool | None = False  # erased:count when the cache was last valid (False: never read)
        self.ahead: dict[str, int] = {}
        """``topic:partition`` → the highest offset some slot applied, where that is past what every slot applied."""
        self._prior = settings.model.ctr_default  # the last prior the shared slot answered (a users batch has none)
        self._cfg = {
            "m": settings.model.ctr_prior_mass,
            "default_ctr": settings.model.ctr_default,
            "default_mass": settings.model.ctr_default_mass,
            "log_step": math.log1p(settings.model.ctr_prior_step),
            "trend_ttl_s": 3 * settings.model.trend_half_life_s * settings.model.trend_epoch_half_lives,
            "graduate_views": settings.pool.graduate_views,
            "graduate_age_ms": settings.pool.graduate_age_s * 1000,
            "graduate_standing_events": settings.pool.graduate_standing_events,
            "events_partitions": settings.kafka.events_partitions,
            "seen_cap": settings.worker.seen_cap,
            "item_users_cap": settings.pool.fold_in_users,
            "dedup_window_ms": settings.worker.dedup_window_s * 1000,
            "require_announced": settings.model.require_announced_items,
            "rescore_items": rescore_items,
        }

    async def watermarks(self) -> dict[str, int]:
        """``topic:partition`` → the last offset every slot that partition writes to has applied; sets :attr:`ahead`."""
        slots = self.keys.slots()
        pipe = self.redis.pipeline(transaction=False)
        for slot in slots:
            pipe.hgetall(f"{slot}:wm")
        held: dict[str, dict[str, int]] = {}
        for slot, raw in zip(slots, await pipe.execute(), strict=True):
            for tp, offset in raw.items():
                held.setdefault(tp.decode(), {})[slot] = int(offset)
        applied, self.ahead = {}, {}
        for tp, offsets in held.items():
            values = [offsets.get(slot, -1) for slot in self._slots(tp)]
            applied[tp] = min(values)
            if max(values) > applied[tp]:
                self.ahead[tp] = max(values)
        return {tp: offset for tp, offset in applied.items() if offset >= 0}

    def _slots(self, tp: str) -> list[str]:
        """The slots (prefixes) a partition's batches write, each keeping its watermark: an events partition's are
        the shared one and its own, an items partition's the shared one, a users partition's its own."""
        topic, _, partition = tp.rpartition(":")
        kafka = self.settings.kafka
        if topic == kafka.users_topic:
            return [self.keys.slot(int(partition))]
        if topic == kafka.events_topic:
            return list(dict.fromkeys((self.keys.slot(None), self.keys.slot(int(partition)))))
        return [self.keys.slot(None)]

    async def read_users(
        self,
        users: Sequence[str],
        with_histories: bool = True,
        rankers: Sequence[tuple[str, int]] = (),
        pending: Effect | None = None,
    ) -> UserContext:
        """Segments and histories of a batch's users, the current model version and the ranker states of
        the ``rankers`` partitions: one round trip.

        Histories come from an in-process cache when they can: only the worker that owns a
        user's partition writes that user's history, so its own last write is current. The
        cache is dropped whenever ownership may have moved (:meth:`forget_histories`), and when an erasure was
        made (``erased:count`` moved: the reader deleted a history, and the cached one would have been written
        back with the user's next event); the histories taken from it are then read again, a second round trip.

        ``pending``: the effect of a script call in flight (streams/processor.py builds the next batch meanwhile).
        Its histories and ranker states are what Redis holds once it applied, whether it did yet or not, so they
        override the cache and Redis; it writes no segment and no model version.
        """
        overlay = pending.histories if pending is not None and with_histories else {}
        states = pending.rankers if pending is not None else {}
        seen = self._erasures  # what the cache is valid for, and the cache as of now: another processor sharing
        cache = {u: self._histories[u] for u in users if u in self._histories} if with_histories else {}  # this store
        missing = [u for u in users if u not in cache and u not in overlay] if with_histories else []  # may clear it
        by_slot: dict[str, list[str]] = {}
        for user in users:
            by_slot.setdefault(self.keys.user_segments(user), []).append(user)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys("model:current"))
        pipe.get(self.keys("erased:count"))
        for key, group in by_slot.items():
            pipe.hmget(key, group)
        history_keys = [self.keys.user(u, "hist") for u in missing]
        stored_rankers = [tp for tp in rankers if tp not in states]
        ranker_keys = [self.keys.ranker(topic, partition) for topic, partition in stored_rankers]
        history_groups, ranker_groups = queue_mget(pipe, history_keys), queue_mget(pipe, ranker_keys)
        version, erasures, *rest = await pipe.execute()
        segment_of = {
            u: s
            for group, found in zip(by_slot.values(), rest, strict=False)
            for u, s in zip(group, found, strict=True)
        }
        rest = rest[len(by_slot) :]
        fetched = gathered(history_groups, rest[: len(history_groups)], len(history_keys))
        found = gathered(ranker_groups, rest[len(history_groups) :], len(ranker_keys))
        histories = cache
        if erasures != seen:  # an erasure since the cache was valid: this batch's cached histories are read again
            if self._erasures == seen:  # (unless another processor's read saw it first and cleared the cache)
                self._erasures = erasures
                self.forget_histories()
            cached = [u for u in cache if u not in overlay]
            missing, fetched = [*missing, *cached], [*fetched, *await self._histories_of(cached)]
            histories = {}
        unreadable: dict[str, list[str]] = {}
        for user, raw in zip(missing, fetched, strict=True):
            if raw is not None:
                try:
                    histories[user] = history_from_rows(orjson.loads(raw), self.settings.model.history_cap)
                except ValueError as exc:  # not what a worker writes: the user starts again from this batch
                    unreadable.setdefault("history", []).append(f"history of {user} ({exc}), read as empty")
        segments: dict[str, str | None] = {}
        for user, raw in segment_of.items():
            try:
                segments[user] = raw.decode() if raw is not None else None
            except UnicodeDecodeError:  # no name a worker writes (segment_of): unknown, as a user without an entry
                unreadable.setdefault("segment", []).append(f"segment of {user} ({raw!r}), read as unknown")
        histories.update((u, overlay[u]) for u in users if u in overlay)
        held = {tp: state for tp, state in zip(stored_rankers, found, strict=True) if state is not None}
        return UserContext(
            segments={u: s for u, s in segments.items() if s is not None},
            histories=histories,
            erasures=erasures,
            model_version=pointed_version(version) if version else None,
            rankers={tp: states[tp] if tp in states else held[tp] for tp in rankers if tp in states or tp in held},
            unreadable=unreadable,
        )

    async def _histories_of(self, users: Sequence[str]) -> list[bytes | None]:
        """The stored histories of ``users``, in order (None: none stored)."""
        if not users:
            return []
        pipe = self.redis.pipeline(transaction=False)
        groups = queue_mget(pipe, [self.keys.user(u, "hist") for u in users])
        return gathered(groups, await pipe.execute(), len(users))

    async def event_arrivals(
        self, ids: Mapping[str, Sequence[str]], pending: Effect | None = None
    ) -> dict[tuple[str, str], int]:
        """When each stored ``"user:event_id"`` of ``ids`` (per ``topic:partition``) last arrived (ms), keyed
        ``(tp, "user:event_id")``; ids not stored are left out. One command per partition: a batch's ids in a
        few calls, where a key per user cost a call per user (and tripled the time to apply a batch).

        ``pending``: the effect of a script call in flight, counted as stored (the script keeps the latest arrival
        of an id, ``ZADD GT``), so an id in it and in the batch built meanwhile is applied once."""
        wanted = [(tp, list(dict.fromkeys(members))) for tp, members in ids.items() if members]
        pipe = self.redis.pipeline(transaction=False)
        for tp, members in wanted:
            topic, _, partition = tp.rpartition(":")
            pipe.zmscore(self.keys.event_ids(topic, int(partition)), members)
        found = {}
        for (tp, members), scores in zip(wanted, await pipe.execute(), strict=True):
            found.update({(tp, m): int(s) for m, s in zip(members, scores, strict=True) if s is not None})
        for tp, members in wanted:
            flying = pending.event_ids.get(tp, {}) if pending is not None else {}
            for member in members:
                if member in flying:
                    found[tp, member] = max(found.get((tp, member), flying[member]), flying[member])
        return found

    def remember_histories(self, histories: dict[str, History], erasures: bytes | bool | None = False) -> None:
        """Cache the histories a successfully applied batch wrote (least recently written evicted first), unless
        they were read under another ``erased:count`` than the cache is valid for (an erasure came in between: one
        of them may be the erased user's, which the next event would write back)."""
        if erasures != self._erasures:
            return
        for user, history in histories.items():
            self._histories.pop(user, None)
            self._histories[user] = history
        while len(self._histories) > self.settings.worker.history_cache_users:
            del self._histories[next(iter(self._histories))]

    def forget_histories(self) -> None:
        self._histories.clear()

    async def apply(self, effect: Effect) -> Applied:
        """Run the batch script, once per slot the batch writes (once on one Redis); raises
        :class:`StaleWatermark` if a watermark moved meanwhile, and a ``ResponseError`` that :func:`refused` names
        if the script refused the batch (nothing of it written in that slot)."""
        calls = [
            self._script(keys=[f"{slot}:wm"], args=[orjson.dumps(payload), values])
            for slot, (payload, values) in self._payloads(effect).items()
        ]
        results = await asyncio.gather(*calls)
        for result in results:
            if result[0] == b"stale":
                raise StaleWatermark(f"{result[1].decode()} is at {result[2].decode() or 'nothing'}")
        replayed = any(result[0] == b"done" for result in results)
        if replayed:  # the histories were computed from a slot that is ahead
            effect.histories.clear()
            self.forget_histories()
        for result in results:
            if result[0] == b"ok" and result[1]:  # the shared slot's answer (it also applied the batch now)
                self._prior = float(result[1])
                graduated, fold_ins = ([item.decode() for item in items] for items in result[3:5])
                return Applied(self._prior, bool(result[2]), graduated, fold_ins, bool(result[5]),
                               segments_pending=int(result[6]), replayed=replayed,
                               standing=bool(result[7]))  # fmt: skip
        written = any(result[0] == b"ok" for result in results)
        return Applied(self._prior, False, [], [], replayed=replayed, written=written, answered=False)

    def _payloads(self, effect: Effect) -> dict[str, tuple[dict, bytes]]:
        """Each slot's part of the effect: the JSON payload (ARGV[1]) and the binary values it refers to, all
        concatenated in ARGV[2] (the blobs first, each ending at its entry of ``blob_ends``, 1-based for
        ``string.sub``; then each ranker state by its first and last byte): the shared state to the shared slot, a
        user's to its user's slot, a partition's ids and ranker to the partition's, each slot with the watermarks it
        keeps (:meth:`_slots`). One part on one Redis.

        Why one binary argument and mappings as JSON objects: the payload is built per distinct user of a batch
        and per blob, and redis-py packs each argument in Python; as one bytes value and dicts orjson writes as
        they are, a batch of 10,000 users costs a few joins instead of tens of thousands of tuples and arguments.
        Why the blobs as two flat lists (key suffixes, ends) rather than a ``[key, first, last]`` per value: the
        script's ``cjson.decode`` builds a Lua table for each of those, two or three per distinct user of a batch.
        """
        c, keys = effect.counters, self.keys
        shared = keys.slot(None)
        parts: dict[str, tuple[dict, list[bytes]]] = {}

        def part(slot: str) -> tuple[dict, list[bytes]]:
            if slot not in parts:
                empty = ("wm", "meta", "items", "segs", "totals", "trend", "item_users", "blobs", "rankers", "counted")
                payload = {"prefix": slot, "cfg": self._cfg, "shared": slot == shared, "clock": 0, "at_clock": 0,
                           **{name: [] for name in empty}, "blob_ends": [], "seen": {}, "user_segments": {},
                           "eids": {}}  # fmt: skip
                parts[slot] = payload, []
            return parts[slot]

        for tp, (old, new) in effect.watermarks.items():
            for slot in self._slots(tp):
                part(slot)[0]["wm"].append((tp, _wm(old), str(new)))
        # an effect of no partition at all: an empty batch going on with a rescore pass (shared state)
        if any(len(p["wm"]) for p, _ in parts.values() if p["shared"]) or effect.meta or c.items or not parts:
            payload = part(shared)[0]
            payload["meta"] = [
                (i, cats, "" if created is None else str(created), str(ts), "1" if avail else "0", features)
                for i, cats, created, ts, avail, features in effect.meta
            ]
            payload["items"] = list(c.items.items())
            payload["counted"] = [
                (str(partition), n, list(c.firsts[partition]), list(c.firsts[partition].values()))
                for partition, n in c.counted.items()
            ]
            payload["segs"] = [(s, list(counts.items())) for s, counts in c.segments.items()]
            payload["totals"] = list(c.totals.items())
            payload["trend"] = [(suffix, list(increments.items())) for suffix, increments in c.trend.items()]
            payload["clock"], payload["at_clock"] = c.clock, c.at_clock
            payload["item_users"] = [(item, list(users.items())) for item, users in effect.item_users.items()]
            payload["rank_segments"] = effect.rank_segments
        for name, by_user in (("seen", c.seen), ("user_segments", effect.user_segments)):
            for slot, mapping in self._by_user_slot(by_user).items():
                part(slot)[0][name] = mapping
        for tp, ids in effect.event_ids.items():
            part(self._slots(tp)[-1])[0]["eids"][tp] = _by_arrival(ids)
        blobs_of: dict[str, tuple[list[str], list[bytes]]] = {}  # slot → (key suffixes, values), in the effect's order
        single = keys.partitions is None  # one Redis: one slot, no user to place
        for suffix, value in effect.blobs:
            slot = shared if single or not suffix.startswith("user:") else keys.slot(keys.home(suffix.split(":")[1]))
            if slot not in blobs_of:
                blobs_of[slot] = [], []
            blobs_of[slot][0].append(suffix)
            blobs_of[slot][1].append(value)
        size: dict[str, int] = {}  # slot → bytes of its values so far
        for slot, (suffixes, blob_values) in blobs_of.items():
            payload, values = part(slot)
            payload["blobs"], payload["blob_ends"] = suffixes, list(accumulate(len(value) for value in blob_values))
            values += blob_values
            size[slot] = payload["blob_ends"][-1]
        for (topic, partition), state in effect.rankers.items():
            slot = keys.slot(partition)
            payload, values = part(slot)
            first = size.get(slot, 0) + 1
            size[slot] = first + len(state) - 1
            payload["rankers"].append((keys.ranker(topic, partition), first, size[slot]))
            values.append(state)
        return {slot: (payload, b"".join(values)) for slot, (payload, values) in parts.items()}

    def _by_user_slot(self, by_user: dict[str, object]) -> dict[str, dict[str, object]]:
        """``by_user`` split by the slot that holds each user's keys (one Redis: itself, whole, in the one slot)."""
        if not by_user:
            return {}
        if self.keys.partitions is None:
            return {self.keys.slot(None): by_user}
        out: dict[str, dict[str, object]] = {}
        for user, value in by_user.items():
            out.setdefault(self.keys.slot(self.keys.home(user)), {})[user] = value
        return out


def _by_arrival(ids: Mapping[str, int]) -> list[tuple[str, list[str]]]:
    """``user:event_id → arrival ms`` as the script takes it: ``[(arrival ms as text, [user:event_id, …]), …]``, in
    the order each arrival first comes. A message's ids share its arrival, so the script passes ZADD one string per
    message instead of printing a number per id.

    >>> _by_arrival({"u1:a": 5, "u2:b": 5, "u1:c": 7})
    [('5', ['u1:a', 'u2:b']), ('7', ['u1:c'])]
    """
    groups: dict[int, list[str]] = {}
    for member, at in ids.items():
        groups.setdefault(at, []).append(member)
    return [(str(at), members) for at, members in groups.items()]


def _wm(offset: int) -> str:
    return "" if offset < 0 else str(offset)
