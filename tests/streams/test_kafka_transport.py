"""The worker's Kafka consumer: faust's hard-coded 1.5 s fetch wait is replaced (see streams/kafka_transport.py)."""

from __future__ import annotations

from recstream.settings import load_settings
from streams.app import create_app


async def test_the_worker_consumer_lets_the_broker_hold_a_fetch_only_briefly():
    app = create_app(load_settings(fetch_max_wait_ms=20))
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 20  # what AIOKafkaConsumer.start() hands its Fetcher
    finally:
        await consumer._client.close()
