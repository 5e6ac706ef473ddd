"""The worker's Kafka consumer: faust's hard-coded 1.5 s fetch wait is replaced (see streams/kafka_transport.py)."""

from __future__ import annotations

from recstream.streams.app import create_app

from recstream.contracts.settings import load_settings


async def test_the_worker_consumer_lets_the_broker_hold_a_fetch_only_briefly():
    app = create_app(load_settings(fetch_max_wait_ms=20, fetch_min_bytes=4096))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:  # what AIOKafkaConsumer.start() hands its Fetcher
        assert (consumer._fetch_max_wait_ms, consumer._fetch_min_bytes) == (20, 4096)
    finally:
        await consumer._client.close()
