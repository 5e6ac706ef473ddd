"""Producer throughput: events/s our client reaches against a local broker, vs a naive producer.

    .venv/bin/python -m bench.produce

~100-byte view events, acks=all. Baseline in the same run: aiokafka sending one event per
message (what a producer without micro-batching does). Writes `producer_events_per_s`.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from rich.table import Table

from bench.common import figure, machine, record, services, show
from recstream.contracts.events import Event, encode
from recstream.eventlog.producer import EventProducer
from recstream.shell.infra import ensure_topics

N_EVENTS, N_BASELINE = 400_000, 60_000
COMMAND = ".venv/bin/python -m bench.produce"


def events(n: int) -> list[Event]:
    t0 = 1_700_000_000_000
    return [
        Event(type="view", user_id=f"u{k % 5000:06d}", item_id=f"i{k % 2000:06d}", ts=t0 + k, event_id=f"e{k:08d}")
        for k in range(n)
    ]


async def ours(settings, batch: list[Event]) -> float:
    started = time.perf_counter()
    async with EventProducer(settings) as producer:
        await producer.send_events(batch)
        await producer.flush()
    return len(batch) / (time.perf_counter() - started)


async def naive(settings, batch: list[Event]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(settings.kafka.events_topic, encode(e), key=e.user_id.encode()) for e in batch]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(batch) / (time.perf_counter() - started)


def main() -> None:
    batch = events(N_EVENTS)
    size = sum(len(encode(e)) for e in batch[:1000]) / 1000
    with services() as settings:
        asyncio.run(ensure_topics(settings))
        baseline = asyncio.run(naive(settings, batch[:N_BASELINE]))
        rate = asyncio.run(ours(settings, batch))
    table = Table(title=f"producer → Kafka 3.9.1 on loopback ({machine()})")
    for column in ("client", "events", "bytes/event", "events/s"):
        table.add_column(column, justify="right")
    table.add_row("naive: one event per message", f"{N_BASELINE:,}", f"{size:.0f}", f"{baseline:,.0f}")
    table.add_row("recstream EventProducer (micro-batches of 100)", f"{N_EVENTS:,}", f"{size:.0f}", f"{rate:,.0f}")
    show(table)
    record({"producer_events_per_s": figure(rate, "events/s", COMMAND, baseline)})


if __name__ == "__main__":
    main()
