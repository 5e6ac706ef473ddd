"""faust's aiokafka transport with a short broker-side fetch wait.

Why: faust 0.15 builds its consumer with ``fetch_max_wait_ms=1500`` (hard-coded), and one
consumer fetches every topic the worker reads. aiokafka leaves a partition out of the next
fetch while records fetched for it are still waiting to be consumed; when the agent is busy
with a batch for more than aiokafka's prefetch backoff (100 ms), every ``events`` partition
is in that state and the next fetch asks only for the idle ``items``/``users`` partitions.
The broker then holds that fetch for up to 1.5 s, and fresh events cannot be fetched until
it returns. Under a steady live load that stall recurred every few batches: batches alternated
tiny and huge, and p99 freshness was seconds. With a short wait an idle fetch returns quickly
and costs the broker a few empty fetches a second.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # read by AIOKafkaConsumer.start()
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ShortFetchTransport(driver.Transport):
    """The aiokafka transport whose consumer lets the broker hold a fetch ``fetch_max_wait_ms`` at most."""

    Consumer = _Consumer

    def __init__(self, url: list[Any], app: faust.App, fetch_max_wait_ms: int) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
