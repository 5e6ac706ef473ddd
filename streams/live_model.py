"""Which model version this worker serves, hot-swapped, and the item stream every worker follows.

Items are broadcast: each worker reads *all* partitions of ``items`` from the beginning
(a compacted topic, so that is one message per item) with its own group-less consumer, and
appends new items to its index at once. The faust ``items`` agent, by contrast, is
partitioned across the group and writes the shared Redis item state.

Hot swap: when ``model:current`` names a version other than the one served, the next batch
loads it in a thread (the event loop keeps running), replays the known items into it and
only then swaps, so a batch sees the old model or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.artifacts import ArtifactError, read_model
from recstream.events import ItemEvent, decode
from recstream.settings import Settings
from streams import metrics
from streams.heap import freeze_long_lived
from streams.personalize import Personalizer

log = logging.getLogger(__name__)


class LiveModel:
    """The current :class:`Personalizer` (None before the first model) and every item seen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Personalizer | None = None
        self.items: dict[str, ItemEvent] = {}
        self._failed: str | None = None
        self._loading = asyncio.Lock()  # three agents ask; one loads
        # Set once the item feed has applied every item that existed when the worker started:
        # until then a user step would miss items a clean run knows, so personalization waits.
        self.items_caught_up = asyncio.Event()

    def apply_item(self, item: ItemEvent) -> None:
        self.items[item.item_id] = item
        if self.current is not None:
            self.current.apply_item(item)
            metrics.INDEX_SIZE.set(len(self.current.index))

    async def ensure(self, version: str | None) -> None:
        """Serve ``version`` from now on (loaded off the event loop); a broken version is logged once."""
        async with self._loading:
            if version is None or version == self._failed or (self.current and self.current.version == version):
                return
            await self._load(version)

    async def _load(self, version: str) -> None:
        try:
            artifacts = await asyncio.to_thread(read_model, self.settings.model_dir, version)
        except (ArtifactError, OSError) as exc:
            log.error("cannot load model %s, keeping %s: %s", version, self.current and self.current.version, exc)
            self._failed = version
            metrics.MODEL_LOAD_FAILURES.inc()
            return
        fresh = Personalizer(version, artifacts, self.settings.history_cap, self.settings.candidates_m)
        for item in self.items.values():
            fresh.apply_item(item)
        self.current = fresh
        freeze_long_lived()  # after the swap: the old version is collected unless still referenced
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(version).set(1)
        metrics.INDEX_SIZE.set(len(fresh.index))
        log.warning("serving model %s (%d items in the index)", version, len(fresh.index))


async def follow_items(settings: Settings, model: LiveModel) -> None:
    """Apply every item event of every partition, from the beginning, for as long as the worker runs."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        # partitions_for_topic only knows subscribed topics; a full metadata fetch knows them all
        cluster = await consumer._client.fetch_all_metadata()
        topic = settings.items_topic
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        behind = {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end > 0}
        if not behind:
            model.items_caught_up.set()
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    valid, _ = decode(message.value, "item", 2**53)  # the items agent dead-letters the rest
                    for item in valid:
                        model.apply_item(item)
                if behind and messages and messages[-1].offset >= behind.get(tp, 0) - 1:
                    behind.pop(tp, None)
                    if not behind:
                        model.items_caught_up.set()
    finally:
        await consumer.stop()
