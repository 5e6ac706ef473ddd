"""``recstream train``: the event log → iALS → a versioned model the workers hot-swap to.

The log is the source of truth: training re-reads the ``events`` and ``items`` topics from
the earliest offset up to where they end when training starts (or reads a file source),
fits :mod:`models.als`, the content map and the HNSW index, writes a version atomically
(:mod:`models.artifacts`), precomputes item-to-item neighbours for the reader, and only
then points ``model:current`` at it, so no worker or reader ever sees half a model. The events
of erased users (the ``erasures`` topic) are left out of what it reads, and an event id is counted once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import numpy as np
import scipy.sparse as sp

from recstream.contracts.events import Event, ItemEvent, Rejected, decode
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.erasures import erased_users
from recstream.eventlog.log import open_log, read, whole_topic
from recstream.jobs.sources import Record
from recstream.models.als import ALSConfig, ALSFit, event_weights, interaction_matrix, train_als
from recstream.models.ann import ItemIndex
from recstream.models.artifacts import ModelArtifacts, prune_versions, write_model
from recstream.models.content_map import fit_content_map
from recstream.models.ranking_metrics import hit_rate_at_k
from recstream.store.connection import connect
from recstream.streams.personalize import SIMILAR_K, encode_similar

log = logging.getLogger(__name__)
Progress = Callable[[int], None]
Fit = Callable[[sp.csr_matrix, ALSConfig], ALSFit]
"""An engine: r (users × items summed event weights) → factors (:func:`models.als.train_als`, or Spark's)."""

Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""The columns and each event's id key (:func:`id_key`)."""

EVENTS_PER_CHUNK = 65_536  # events held as Python objects before they become compact columns
MESSAGES_PER_READ = 100  # Kafka messages fetched at a time; each holds up to producer_batch_events events


REJECTIONS_KEPT = 20


class EmptyLog(ValueError):
    """No valid event to train on (an empty topic, or a file whose every line the contract refused)."""


class TrainingLog:
    """The interactions as compact columns, grown a chunk at a time, and the catalogue.

    An event is kept as 37 bytes (user and item index int32, signed iALS weight float32, whether its type is
    positive bool, ts int64, its id key 16 bytes), never as an object, so a log of N events costs about 37·N bytes
    plus the id maps and the latest content of every item, which are small beside the events. The weights come from
    :func:`models.als.event_weights` under ``feedback``, the function the workers' user step uses.

    A user's event id is counted once, its first event kept: a retried POST or a file imported twice puts the same
    ids on the log again, which the workers drop only within their de-duplication window (RECSTREAM_DEDUP_WINDOW_S).
    """

    def __init__(self, feedback: FeedbackTypes = DEFAULT_FEEDBACK) -> None:
        self.feedback = feedback
        self.user_ids: dict[str, int] = {}
        self.item_ids: dict[str, int] = {}
        self.content: dict[str, ItemEvent] = {}
        self._chunks: list[Chunk] = []
        self._pending: tuple[list[int], list[int], list[str], list[float | None], list[int], list[bytes]] = (
            [], [], [], [], [], []
        )  # fmt: skip
        self._unchecked = False  # whether a chunk was sealed since repeated ids were last dropped
        self.repeated = 0  # events dropped as a repeat of an event id
        self.rejected = 0  # records of a file the contract refused (a Kafka log holds valid ones only)
        self.rejections: list[str] = []  # the first REJECTIONS_KEPT of them, "line N: reason"

    def add(self, record: Record) -> None:
        value = record.value
        if isinstance(value, Rejected):
            self.rejected += 1
            if len(self.rejections) < REJECTIONS_KEPT:
                self.rejections.append(record.refusal)
        elif isinstance(value, Event):
            users, items, types, values, ts, keys = self._pending
            users.append(self.user_ids.setdefault(value.user_id, len(self.user_ids)))
            items.append(self.item_ids.setdefault(value.item_id, len(self.item_ids)))
            types.append(value.type)
            values.append(value.value)
            ts.append(value.ts)
            keys.append(id_key(value))
            if len(users) >= EVENTS_PER_CHUNK:
                self._seal()
        elif isinstance(value, ItemEvent):
            self.content[value.item_id] = value

    def _seal(self) -> None:
        """The pending events as one more chunk of columns."""
        users, items, types, values, ts, keys = self._pending
        if users:
            weights = event_weights(types, values, self.feedback).astype(np.float32)
            positive = np.array([self.feedback.role(t) == "positive" for t in types], dtype=bool)
            self._chunks.append((np.array(users, dtype=np.int32), np.array(items, dtype=np.int32), weights, positive,
                                 np.array(ts, dtype=np.int64), np.frombuffer(b"".join(keys), KEY)))  # fmt: skip
            self._pending = ([], [], [], [], [], [])
            self._unchecked = True

    def columns(self) -> Columns:
        """(users, items, weights, positive, ts) of every event so far, in arrival order, each user's event id once;
        chunks are merged once."""
        self._seal()
        if not self._chunks:
            return _NO_EVENTS
        if self._unchecked:
            chunks = self._chunks
            merged = chunks[0] if len(chunks) == 1 else tuple(np.concatenate(c) for c in zip(*chunks, strict=True))
            first = first_uses(merged[5])
            if not first.all():
                self.repeated += len(first) - int(first.sum())
                merged = self._numbered(tuple(column[first] for column in merged))  # type: ignore[arg-type]
            self._chunks = [merged]  # type: ignore[list-item]
            self._unchecked = False
        return self._chunks[0][:5]  # type: ignore[return-value]

    def _numbered(self, chunk: Chunk) -> Chunk:
        """The chunk with the items renumbered if a dropped repeat was the only event of one (an id reused for
        another item), so the model holds no item without an event, in the order of first use."""
        used = np.zeros(len(self.item_ids), dtype=bool)
        used[chunk[1]] = True
        if used.all():
            return chunk
        number = (np.cumsum(used) - 1).astype(np.int32)
        self.item_ids = {item: int(number[k]) for item, k in self.item_ids.items() if used[k]}
        return (chunk[0], number[chunk[1]], *chunk[2:])  # type: ignore[return-value]

    @property
    def users(self) -> np.ndarray:
        return self.columns()[0]

    @property
    def items(self) -> np.ndarray:
        return self.columns()[1]

    @property
    def weights(self) -> np.ndarray:
        """Each event's signed iALS weight (models/als.event_weights)."""
        return self.columns()[2]

    @property
    def positive(self) -> np.ndarray:
        """Whether each event's type has the positive role (a click, a like, a purchase, …)."""
        return self.columns()[3]

    @property
    def ts(self) -> np.ndarray:
        return self.columns()[4]

    def __len__(self) -> int:
        """The events counted: each user's event id once."""
        return len(self.columns()[0])


_NO_EVENTS = (
    np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, bool), np.empty(0, np.int64)
)  # fmt: skip
KEY = np.dtype("V16")
NO_ID = bytes(KEY.itemsize)


def id_key(event: Event) -> bytes:
    """16 bytes standing for the event's user and id, the pair the workers de-duplicate on (``user:event_id``), or
    :data:`NO_ID` when it has none (then it is always counted; so is the 2⁻¹²⁸ chance of a pair hashing to it)."""
    if event.event_id is None:
        return NO_ID
    return hashlib.blake2b(f"{event.user_id}\t{event.event_id}".encode(), digest_size=KEY.itemsize).digest()


def first_uses(keys: np.ndarray) -> np.ndarray:
    """Which events to keep: those without an id, and the first of each key (np.unique's indices are first uses)."""
    keep = keys == np.void(NO_ID)
    keep[np.unique(keys, return_index=True)[1]] = True
    return keep


def collect(
    records: Iterable[Record], progress: Progress | None = None, feedback: FeedbackTypes = DEFAULT_FEEDBACK
) -> TrainingLog:
    log = TrainingLog(feedback)
    for n, record in enumerate(records, start=1):
        log.add(record)
        if progress is not None and n % 10_000 == 0:
            progress(10_000)
    return log


async def read_log(settings: Settings) -> AsyncIterator[list[Record]]:
    """Every valid record on ``items``, then ``events``, from the earliest offset to the end as of now (both ends
    taken first: a missing topic is :class:`~recstream.eventlog.log.MissingTopic` before anything is read), but the
    events of erased users, one Kafka message's records at a time."""
    now_ms = 2**53  # replay: no future-timestamp check against the wall clock
    async with open_log(settings) as consumer:
        topics = {"item": settings.kafka.items_topic, "event": settings.kafka.events_topic}
        ranges = {kind: await whole_topic(consumer, topic) for kind, topic in topics.items()}
        erased = await erased_users(consumer, settings.kafka.erasures_topic)
        for kind in topics:
            async for chunk in read(consumer, ranges[kind], MESSAGES_PER_READ):
                for message in chunk:
                    valid = decode(message.value, kind, now_ms, settings.model.feedback_types)[0]
                    yield [Record(kind, v) for v in valid if getattr(v, "user_id", None) not in erased]


async def collect_log(settings: Settings, progress: Progress | None = None) -> TrainingLog:
    """:func:`read_log` streamed into a :class:`TrainingLog`: the records of the whole log never exist at once."""
    log = TrainingLog(settings.model.feedback_types)
    async for records in read_log(settings):
        for record in records:
            log.add(record)
        if progress is not None:
            progress(len(records))
    return log


def _split(log: TrainingLog, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Train mask and the held-out tail: the last ``holdout`` share of events by time."""
    order = np.argsort(log.ts, kind="stable")
    train = np.ones(len(order), dtype=bool)
    train[order[int(len(order) * (1 - holdout)) :]] = False
    return train, ~train


def offline_hit_rate(
    log: TrainingLog, holdout: float, cfg: ALSConfig, k: int = 10, fit: Fit = train_als
) -> float | None:
    """HR@k of a model trained on the head, over the tail's positive events by users known in the head."""
    if holdout <= 0:
        return None
    train, tail = _split(log, holdout)
    users, items, _, clicks, _ = log.columns()
    head = fit(interactions(log, train), cfg)
    seen: dict[int, set[int]] = {}
    for u, i in zip(users[train].tolist(), items[train].tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    ranked, relevant = [], []
    for u, i in zip(users[tail & clicks].tolist(), items[tail & clicks].tolist(), strict=True):
        if u in seen:
            scores = head.item_factors @ head.user_factors[u]
            scores[list(seen[u])] = -np.inf
            ranked.append(np.argsort(-scores)[:k].tolist())
            relevant.append(i)
    return hit_rate_at_k(ranked, relevant, k) if ranked else None


def interactions(log: TrainingLog, rows: np.ndarray | None = None) -> sp.csr_matrix:
    """r over the events ``rows`` selects (all by default), with every user and item of the log as a row and column."""
    users, items, weights, _, _ = log.columns()
    if rows is not None:
        users, items, weights = users[rows], items[rows], weights[rows]
    return interaction_matrix(users, items, weights, len(log.user_ids), len(log.item_ids))


def train(log: TrainingLog, cfg: ALSConfig, holdout: float = 0.1, fit: Fit = train_als) -> tuple[ModelArtifacts, dict]:
    """Fit on the whole log (after measuring HR@10 on a held-out tail) and build every artifact."""
    if not len(log):
        raise EmptyLog(f"the log holds no valid events to train on ({log.rejected:,} records refused)")
    hr = offline_hit_rate(log, holdout, cfg, fit=fit)
    whole = fit(interactions(log), cfg)
    item_ids = list(log.item_ids)
    content = [log.content.get(i) for i in item_ids]
    content_map = fit_content_map(
        [c.categories if c else [] for c in content], whole.item_factors, [c.features if c else {} for c in content]
    )
    index = ItemIndex(dim=cfg.factors, capacity=len(item_ids))
    index.add(item_ids, whole.item_factors)
    for item_id, event in zip(item_ids, content, strict=True):
        if event is not None and (not event.available or event.op == "remove"):
            index.mark_deleted(item_id)
    report = whole.report
    metrics = {"users": report.users, "items": report.items, "nnz": report.nnz, "seconds": report.seconds,
               "loss": report.loss, "events": len(log), "offline_hr10": hr, "holdout": holdout}  # fmt: skip
    artifacts = ModelArtifacts(
        item_ids=item_ids,
        item_factors=whole.item_factors,
        user_gram=whole.user_gram,
        content_map=content_map,
        index=index,
        config=cfg,
        metrics=metrics,
        user_ids=list(log.user_ids),
        user_factors=whole.user_factors,
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
    """Write the version, its item neighbours, then switch ``model:current`` to it (last); then remove all but the
    ``RECSTREAM_MODEL_KEEP`` newest versions, never the one it replaced."""
    version = write_model(settings.model.dir, artifacts)
    replaced = await activate(settings, artifacts, version)
    try:
        prune_versions(settings.model.dir, settings.model.keep, protect={version, replaced})
    except OSError as exc:  # the version is live: a folder that cannot be cleaned fails no training
        log.warning("model %s published; removing old versions failed (the next publish tries again): %s", version, exc)
    return version


async def activate(settings: Settings, artifacts: ModelArtifacts, version: str) -> str | None:
    """Write a written version's item neighbours, then point ``model:current`` at it (also used by the rebuild);
    returns the version it pointed at before (None: none)."""
    keys = Keys.of(settings)
    redis = connect(settings)
    try:
        similar = similar_items(artifacts.index, artifacts.item_ids, artifacts.item_factors)
        pipe = redis.pipeline(transaction=False)
        for item_id, value in similar.items():
            pipe.set(keys(f"item:{item_id}:similar"), value)
        await pipe.execute()
        replaced = await redis.set(keys("model:current"), version, get=True)
    finally:
        await redis.aclose()
    return None if replaced is None else replaced.decode()
