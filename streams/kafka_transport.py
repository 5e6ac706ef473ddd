"""faust's aiokafka transport with a short broker-side fetch wait.

Why: faust 0.15 builds its consumer with ``fetch_max_wait_ms=1500`` (hard-coded), and one
consumer fetches every topic the worker reads. aiokafka leaves a partition out of the next
fetch while records fetched for it are still waiting to be consumed; when the agent is busy
with a batch for more than aiokafka's prefetch backoff (100 ms), every ``events`` partition
is in that state and the next fetch asks only for the idle ``items``/``users`` partitions.
The broker then holds that fetch for up to 1.5 s, and fresh events cannot be fetched until
it returns. Under a steady live load that stall recurred every few batches: batches alternated
tiny and huge, and p99 freshness was seconds. With a short wait an idle fetch returns quickly
and costs the broker at most a few dozen empty fetches a second.

``fetch_min_bytes``: with aiokafka's default (1 byte) a busy consumer fetches again as soon as a
response arrives, a few records at a time. Under a live load of 5,000 events/s that loop took 13%
of the worker's samples (its consumer thread competes with the agent for the GIL) and the broker
36% of a core; letting the broker gather 16 KiB per fetch (or wait ``fetch_max_wait_ms``) measured
6% and 28%. It delays an event by at most ``fetch_max_wait_ms``, and only while the agent is idle.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # both read by AIOKafkaConsumer.start()
        consumer._fetch_min_bytes = transport.fetch_min_bytes
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ShortFetchTransport(driver.Transport):
    """The aiokafka transport whose consumer's fetch waits for ``fetch_min_bytes`` or ``fetch_max_wait_ms``."""

    Consumer = _Consumer

    def __init__(self, url: list[Any], app: faust.App, fetch_max_wait_ms: int, fetch_min_bytes: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
