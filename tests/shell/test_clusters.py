"""The clusters of ``--clusters`` work as the fault tests assume: a replicated Kafka keeps every acknowledged
message with a broker killed, and a Redis Cluster keeps its data through a failover and a master's crash."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from recstream.eventlog.connection import client_options
from recstream.shell import infra
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


async def _produce(settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=value) for value in values])
    finally:
        await producer.stop()


async def _read_all(settings, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(**client_options(settings.kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.events_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[bytes] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(r.value for r in records)
        return out
    finally:
        await consumer.stop()


async def _topic_replication(settings, topic: str) -> tuple[set[int], str]:
    """The replica counts of the topic's partitions and its ``min.insync.replicas``."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        for _ in range(50):  # the broker asked may not know a topic created a moment ago yet
            described = await admin.describe_topics([topic])
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            if described[0]["partitions"] and configs[0].resources[0][0] == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    replicas = {len(p["replicas"]) for p in described[0]["partitions"]}
    entries = {name: value for name, value, *_ in configs[0].resources[0][4]}
    return replicas, entries["min.insync.replicas"]


def test_kafka_keeps_every_acknowledged_message_with_a_broker_killed(clusters: infra.Clusters):
    settings = clusters.settings.on_topics(uuid.uuid4().hex[:8])
    asyncio.run(infra.ensure_topics(settings))
    topic = settings.kafka.events_topic
    assert asyncio.run(_topic_replication(settings, topic)) == ({3}, "2")
    before = [f"a{k}".encode() for k in range(500)]
    asyncio.run(_produce(settings, topic, before))
    clusters.kill_broker(0)
    try:
        after = [f"b{k}".encode() for k in range(500)]
        asyncio.run(_produce(settings, topic, after))  # 2 of 3 replicas in sync: acks=all still succeeds
        assert sorted(asyncio.run(_read_all(settings, topic))) == sorted(before + after)
    finally:
        clusters.start_broker(0)


def retrying_client(url: str) -> RedisCluster:
    """A cluster client that retries a command 10 times (redis-py's default backoff) while slots move."""
    return RedisCluster.from_url(url, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), retries=10))


def test_redis_cluster_keeps_its_data_through_a_failover_and_a_killed_master(clusters: infra.Clusters):
    client = retrying_client(clusters.settings.redis.url)
    prefix = uuid.uuid4().hex[:8]
    values = {f"{prefix}:{k}": str(k) for k in range(300)}  # keys in every master's slots
    for key, value in values.items():
        client.set(key, value)
    clusters.wait_replicated()  # replication is asynchronous: a master killed before its replica caught up loses writes
    roles = clusters.redis_roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["replica"] * 3
    replica = next(k for k, role in roles.items() if role == "replica")
    redis.Redis(port=clusters.redis_nodes[replica].redis.port).execute_command("CLUSTER", "FAILOVER")
    wait_until(lambda: clusters.redis_roles().get(replica) == "master", 90, "the replica's takeover")
    master = next(k for k, role in clusters.redis_roles().items() if role == "master" and k != replica)
    clusters.kill_redis(master)
    try:
        # the killed node counts as a master until the others flag it failed (cluster-node-timeout): wait for that
        wait_until(lambda: master not in (seen := clusters.redis_roles()) and list(seen.values()).count("master") == 3,
                   90, "a new master")  # fmt: skip
        clusters.wait_redis_ok(replicated=False)
        alive = next(node for k, node in enumerate(clusters.redis_nodes) if k != master)  # the first may be the killed
        client = retrying_client(alive.redis.url)
        assert {key: client.get(key).decode() for key in values} == values
    finally:
        clusters.start_redis(master)
        clusters.wait_redis_ok()
    # the restarted node claims its old role from nodes.conf until it learns of its replacement
    wait_until(lambda: clusters.redis_roles().get(master) == "replica", 60, "the old master to rejoin as a replica")
    client.close()
