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
  (``ranker:<topic>:<p>``), read with the batch's users and written by the same script as that
  partition's watermark: a function of the partition's rows in offset order
  (streams/ranker_training.py), so each row is learned exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from redis.asyncio import Redis

from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.models.history import History, history_from_rows
from recstream.store.aggregate import CounterDeltas

SCRIPT = (Path(__file__).parent / "apply_batch.lua").read_text()
ARRIVALS_SCRIPT = (Path(__file__).parent / "event_arrivals.lua").read_text()


class StaleWatermark(Exception):
    """Another writer moved a watermark since it was read; re-read and retry."""


@dataclass
class Effect:
    """Everything one batch writes, besides the counters: item metadata, users, watermarks."""

    watermarks: dict[str, tuple[int, int]] = field(default_factory=dict)  # tp -> (expected, new)
    counters: CounterDeltas = field(default_factory=CounterDeltas)
    # item, categories, created, ts, available, features (JSON: PATCH /v1/items merges into them)
    meta: list[tuple[str, str, int | None, int, bool, str]] = field(default_factory=list)
    user_segments: dict[str, str] = field(default_factory=dict)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)  # key suffix, whole value
    histories: dict[str, History] = field(default_factory=dict)  # users' new histories (also in blobs)
    item_users: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # new item → user → weights
    event_ids: dict[str, dict[str, int]] = field(default_factory=dict)  # tp → "user:event_id" → arrival ms
    rankers: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (topic, partition) → new ranker state


@dataclass(frozen=True)
class UserContext:
    segments: dict[str, str]
    histories: dict[str, History]
    model_version: str | None
    rankers: dict[tuple[str, int], bytes] = field(default_factory=dict)  # the stored ones of the partitions asked for


@dataclass(frozen=True)
class Applied:
    prior: float
    full_rescore: bool
    graduated: list[str]
    fold_ins: list[str]  # graduated items waiting for their fold-in (recstream/store/fold_ins.py)


class StateStore:
    """Reads what a batch needs and applies its effect in one atomic round trip each."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.redis.prefix)
        self.settings = settings
        self._script = redis.register_script(SCRIPT)
        self._arrivals = redis.register_script(ARRIVALS_SCRIPT)
        self._histories: dict[str, History] = {}
        self._cfg = {
            "m": settings.model.ctr_prior_mass,
            "default_ctr": settings.model.ctr_default,
            "default_mass": settings.model.ctr_default_mass,
            "log_step": math.log1p(settings.model.ctr_prior_step),
            "trend_ttl_s": 3 * settings.model.trend_half_life_s * settings.model.trend_epoch_half_lives,
            "graduate_views": settings.pool.graduate_views,
            "graduate_age_ms": settings.pool.graduate_age_s * 1000,
            "seen_cap": settings.worker.seen_cap,
            "item_users_cap": settings.pool.fold_in_users,
            "dedup_window_ms": settings.worker.dedup_window_s * 1000,
            "require_announced": settings.model.require_announced_items,
        }

    async def watermarks(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys("wm"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def read_users(
        self, users: Sequence[str], with_histories: bool = True, rankers: Sequence[tuple[str, int]] = ()
    ) -> UserContext:
        """Segments and histories of a batch's users, the current model version and the ranker states of
        the ``rankers`` partitions: one round trip.

        Histories come from an in-process cache when they can: only the worker that owns a
        user's partition writes that user's history, so its own last write is current. The
        cache is dropped whenever ownership may have moved (:meth:`forget_histories`).
        """
        missing = [u for u in users if u not in self._histories] if with_histories else []
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys("model:current"))
        pipe.hmget(self.keys("user:seg"), list(users) or ["-"])
        if missing:
            pipe.mget([self.keys.user(u, "hist") for u in missing])
        if rankers:
            pipe.mget([self.keys.ranker(topic, partition) for topic, partition in rankers])
        version, segments, *rest = await pipe.execute()
        fetched = rest.pop(0) if missing else []
        states = rest.pop(0) if rankers else []
        histories = {u: self._histories[u] for u in users if u in self._histories} if with_histories else {}
        for user, raw in zip(missing, fetched, strict=True):
            if raw is not None:
                histories[user] = history_from_rows(orjson.loads(raw), self.settings.model.history_cap)
        return UserContext(
            segments={u: s.decode() for u, s in zip(users, segments, strict=False) if s is not None},
            histories=histories,
            model_version=version.decode() if version else None,
            rankers={tp: state for tp, state in zip(rankers, states, strict=True) if state is not None},
        )

    async def event_arrivals(self, ids: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], int]:
        """When each stored ``"user:event_id"`` of ``ids`` (per ``topic:partition``) last arrived (ms), keyed
        ``(tp, "user:event_id")``; ids not stored are left out. One script call for the batch, its ids in one
        argument (``event_arrivals.lua``): a key per user cost a call per user (and tripled the time to apply a
        batch), and ZMSCORE with an argument per id cost redis-py a packing step per id."""
        wanted = [(tp, list(dict.fromkeys(members))) for tp, members in ids.items() if members]
        if not wanted:
            return {}
        replies = await self._arrivals(args=[orjson.dumps([(self.keys(f"eids:{tp}"), m) for tp, m in wanted])])
        found = {}
        for (tp, members), scores in zip(wanted, replies, strict=True):
            found.update({(tp, m): int(float(s)) for m, s in zip(members, scores, strict=True) if s is not None})
        return found

    def remember_histories(self, histories: dict[str, History]) -> None:
        """Cache the histories a successfully applied batch wrote (least recently written evicted first)."""
        for user, history in histories.items():
            self._histories.pop(user, None)
            self._histories[user] = history
        while len(self._histories) > self.settings.worker.history_cache_users:
            del self._histories[next(iter(self._histories))]

    def forget_histories(self) -> None:
        self._histories.clear()

    async def apply(self, effect: Effect) -> Applied:
        """Run the batch script; raises :class:`StaleWatermark` if a watermark moved meanwhile."""
        c = effect.counters
        payload = {
            "prefix": self.keys.prefix,
            "cfg": self._cfg,
            "wm": [(tp, _wm(old), str(new)) for tp, (old, new) in effect.watermarks.items()],
            "meta": [
                (i, cats, "" if created is None else str(created), str(ts), "1" if avail else "0", features)
                for i, cats, created, ts, avail, features in effect.meta
            ],
            "items": list(c.items.items()),
            "segs": [(s, list(counts.items())) for s, counts in c.segments.items()],
            "totals": list(c.totals.items()),
            "trend": [(suffix, list(increments.items())) for suffix, increments in c.trend.items()],
            "seen": [(u, list(items.items())) for u, items in c.seen.items()],
            "clock": c.clock,
            "user_segments": list(effect.user_segments.items()),
            "item_users": [(item, list(users.items())) for item, users in effect.item_users.items()],
            "eids": [(tp, list(ids.items())) for tp, ids in effect.event_ids.items()],
            "blobs": [(suffix, k + 2) for k, (suffix, _) in enumerate(effect.blobs)],  # ARGV[1] is the payload
            "rankers": [
                (self.keys.ranker(topic, partition), len(effect.blobs) + k + 2)
                for k, (topic, partition) in enumerate(effect.rankers)
            ],  # their states follow the blobs' values
        }
        values = [*(value for _, value in effect.blobs), *effect.rankers.values()]
        result = await self._script(args=[orjson.dumps(payload), *values])
        if result[0] == b"stale":
            raise StaleWatermark(f"{result[1].decode()} is at {result[2].decode() or 'nothing'}")
        graduated, fold_ins = ([item.decode() for item in items] for items in result[3:5])
        return Applied(float(result[1]), bool(result[2]), graduated, fold_ins)


def _wm(offset: int) -> str:
    return "" if offset < 0 else str(offset)
