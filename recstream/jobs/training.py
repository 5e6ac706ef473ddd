"""``recstream train``: the event log → iALS → a versioned model the workers hot-swap to.

The log is the source of truth: training re-reads the ``events`` and ``items`` topics from
the earliest offset up to where they end when training starts (or reads a file source),
fits :mod:`models.als`, the content map and the HNSW index, writes a version atomically
(:mod:`models.artifacts`), precomputes item-to-item neighbours for the reader, and only
then points ``model:current`` at it, so no worker or reader ever sees half a model. The events
of erased users (the ``erasures`` topic) are left out of what it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from redis.asyncio import Redis

from recstream.contracts.events import Event, ItemEvent, decode
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.erasures import erased_users
from recstream.eventlog.log import open_log, read, whole_topic
from recstream.jobs.sources import Record
from recstream.models.als import ALSConfig, event_weights, interaction_matrix, train_als
from recstream.models.ann import ItemIndex
from recstream.models.artifacts import ModelArtifacts, write_model
from recstream.models.content_map import fit_content_map
from recstream.models.ranking_metrics import hit_rate_at_k
from recstream.streams.personalize import SIMILAR_K, encode_similar

Progress = Callable[[int], None]


@dataclass
class TrainingLog:
    """Interactions as parallel arrays plus the latest content of every item."""

    user_ids: dict[str, int] = field(default_factory=dict)
    item_ids: dict[str, int] = field(default_factory=dict)
    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    clicks: list[bool] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    content: dict[str, ItemEvent] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        value = record.value
        if isinstance(value, Event):
            self.users.append(self.user_ids.setdefault(value.user_id, len(self.user_ids)))
            self.items.append(self.item_ids.setdefault(value.item_id, len(self.item_ids)))
            self.clicks.append(value.type == "click")
            self.ts.append(value.ts)
        elif isinstance(value, ItemEvent):
            self.content[value.item_id] = value


def collect(records: Iterable[Record], progress: Progress | None = None) -> TrainingLog:
    log = TrainingLog()
    for n, record in enumerate(records, start=1):
        log.add(record)
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    return log


async def read_log(settings: Settings) -> list[Record]:
    """Every valid record on ``items`` and ``events``, from the earliest offset to the end as of now, but the
    events of erased users."""
    now_ms = 2**53  # replay: no future-timestamp check against the wall clock
    records: list[Record] = []
    async with open_log(settings) as consumer:
        erased = await erased_users(consumer, settings.kafka.erasures_topic)
        for topic, kind in ((settings.kafka.items_topic, "item"), (settings.kafka.events_topic, "event")):
            async for chunk in read(consumer, await whole_topic(consumer, topic), 10_000):
                for message in chunk:
                    valid = decode(message.value, kind, now_ms)[0]
                    records.extend(Record(kind, v) for v in valid if getattr(v, "user_id", None) not in erased)
    return records


def _split(log: TrainingLog, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Train mask and the held-out tail: the last ``holdout`` share of events by time."""
    order = np.argsort(np.asarray(log.ts, dtype=np.int64), kind="stable")
    train = np.ones(len(order), dtype=bool)
    train[order[int(len(order) * (1 - holdout)) :]] = False
    return train, ~train


def offline_hit_rate(log: TrainingLog, holdout: float, cfg: ALSConfig, k: int = 10) -> float | None:
    """HR@k of a model trained on the head, over the tail's clicks by users known in the head."""
    if holdout <= 0:
        return None
    train, tail = _split(log, holdout)
    users, items, clicks = (np.asarray(a) for a in (log.users, log.items, log.clicks))
    fit = _fit(users[train], items[train], clicks[train], len(log.user_ids), len(log.item_ids), cfg)
    seen: dict[int, set[int]] = {}
    for u, i in zip(users[train].tolist(), items[train].tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    ranked, relevant = [], []
    for u, i in zip(users[tail & clicks].tolist(), items[tail & clicks].tolist(), strict=True):
        if u in seen:
            scores = fit.item_factors @ fit.user_factors[u]
            scores[list(seen[u])] = -np.inf
            ranked.append(np.argsort(-scores)[:k].tolist())
            relevant.append(i)
    return hit_rate_at_k(ranked, relevant, k) if ranked else None


def _fit(users: np.ndarray, items: np.ndarray, clicks: np.ndarray, n_users: int, n_items: int, cfg: ALSConfig):
    r = interaction_matrix(users, items, event_weights(clicks, cfg), n_users, n_items)
    return train_als(r, cfg)


def train(log: TrainingLog, cfg: ALSConfig, holdout: float = 0.1) -> tuple[ModelArtifacts, dict]:
    """Fit on the whole log (after measuring HR@10 on a held-out tail) and build every artifact."""
    if not log.users:
        raise ValueError("the log holds no events to train on")
    hr = offline_hit_rate(log, holdout, cfg)
    users, items, clicks = (np.asarray(a) for a in (log.users, log.items, log.clicks))
    fit = _fit(users, items, clicks, len(log.user_ids), len(log.item_ids), cfg)
    item_ids = list(log.item_ids)
    content = [log.content.get(i) for i in item_ids]
    content_map = fit_content_map(
        [c.categories if c else [] for c in content], fit.item_factors, [c.features if c else {} for c in content]
    )
    index = ItemIndex(dim=cfg.factors, capacity=len(item_ids))
    index.add(item_ids, fit.item_factors)
    for item_id, event in zip(item_ids, content, strict=True):
        if event is not None and (not event.available or event.op == "remove"):
            index.mark_deleted(item_id)
    report = fit.report
    metrics = {"users": report.users, "items": report.items, "nnz": report.nnz, "seconds": report.seconds,
               "loss": report.loss, "events": len(log.users), "offline_hr10": hr, "holdout": holdout}  # fmt: skip
    artifacts = ModelArtifacts(
        item_ids=item_ids,
        item_factors=fit.item_factors,
        user_gram=fit.user_gram,
        content_map=content_map,
        index=index,
        config=cfg,
        metrics=metrics,
    )
    return artifacts, metrics


def similar_items(index: ItemIndex, item_ids: list[str], factors: np.ndarray) -> dict[str, bytes]:
    """Each item's nearest neighbours by the model's score, as the reader's JSON value."""
    out: dict[str, bytes] = {}
    for start in range(0, len(item_ids), 1024):
        chunk = item_ids[start : start + 1024]
        rows = factors[start : start + len(chunk)]
        found = index.query_batch(rows, SIMILAR_K, exclude_per_row=[{i} for i in chunk])
        out.update({item_id: encode_similar(neighbours) for item_id, neighbours in zip(chunk, found, strict=True)})
    return out


async def publish(settings: Settings, artifacts: ModelArtifacts) -> str:
    """Write the version, its item neighbours, then switch ``model:current`` to it (last)."""
    version = write_model(settings.model.dir, artifacts)
    await activate(settings, artifacts, version)
    return version


async def activate(settings: Settings, artifacts: ModelArtifacts, version: str) -> None:
    """Write a written version's item neighbours, then point ``model:current`` at it (also used by the rebuild)."""
    keys = Keys(settings.redis.prefix)
    redis = Redis.from_url(settings.redis.url)
    try:
        similar = similar_items(artifacts.index, artifacts.item_ids, artifacts.item_factors)
        pipe = redis.pipeline(transaction=False)
        for item_id, value in similar.items():
            pipe.set(keys(f"item:{item_id}:similar"), value)
        await pipe.execute()
        await redis.set(keys("model:current"), version)
    finally:
        await redis.aclose()
