"""Fault injection against the real services: one harness for tests/reliability and bench/reliability.py.

A run (:class:`FaultRun`) has its own Redis prefix and consumer group on services the caller owns.
The workload's users and items are applied first (so every event counts in its user's segment, as in a
clean run), then its events are offered at a steady rate through the project's :class:`EventProducer`
while a fault is injected again and again (``kill_worker``, ``rebalance_kill``, ``restart_kafka``,
``kill_redis``, ``redis_loses_window``, ``poison``: messages at every size limit). Scoring needs no second
run: per-item view and click counters are exact sums of the events, so against the events the producer was handed

    lost = Σ_i max(0, expected_i − stored_i),   double-applied = Σ_i max(0, stored_i − expected_i)

over both counters (a lost batch and a doubled one of the same item would cancel only if they were the
same size, for the same items); seen sets (item → latest ts, capped) are compared too. Recovery time of
one injection: from the end of the fault (the process back, the broker or Redis answering) until Redis
holds as many events as had been offered at that moment. Stalled partitions: those of ``events``, ``items`` and
``users`` whose watermark did not reach the end of the log once the run is over.

Workers get a 6 s consumer session (``worker_session_timeout_s``, the broker's minimum; 10 s by default):
a killed worker's partitions wait for its session to expire before anyone else takes them, so the
recovery times below scale with that setting. Their stall limit is 15 s (``worker_stall_s``, 120 s by default):
an attempt to apply a batch that hangs is cancelled and retried after two of them, within a run's waits.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from aiokafka import AIOKafkaProducer
from recstream.models.als import ALSConfig
from recstream.streams.processor import DEAD_LETTER_MAX_BYTES

from bench.common import client_of
from recstream.contracts.events import MAX_MESSAGE_BYTES, Event, ItemEvent, UserEvent
from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.log import open_log, whole_topic
from recstream.eventlog.producer import EventProducer
from recstream.jobs import training
from recstream.jobs.sources import Record
from recstream.shell import infra
from recstream.shell.infra import Child
from recstream.sim.world import synthetic
from recstream.store.connection import connect
from recstream.store.state_dump import settled

ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.05


@dataclass(frozen=True)
class Workload:
    users: list[UserEvent]
    items: list[ItemEvent]
    events: list[Event]

    @classmethod
    def synthetic(cls, n_records: int, seed: int = 3) -> Workload:
        """The synthetic world's first ``n_records`` messages, split by kind."""
        by_kind: dict[str, list] = {"user": [], "item": [], "event": []}
        for record in synthetic(n_records, seed=seed):
            by_kind[record.kind].append(record.value)
        return cls(by_kind["user"], by_kind["item"], by_kind["event"])


async def model_keys(settings: Settings, workload: Workload) -> dict[str, bytes]:
    """Train on the first third of the events; the Redis keys (DUMP format, prefix removed) that make a
    prefix serve that model version (``model:current`` and the items' neighbours)."""
    records = [Record("item", i) for i in workload.items]
    records += [Record("event", e) for e in workload.events[: len(workload.events) // 3]]
    artifacts, _ = training.train(training.collect(records), ALSConfig(factors=16, iterations=10), holdout=0)
    scratch = settings.replace(redis_prefix="model")
    await training.publish(scratch, artifacts)
    client = connect(settings)
    shared = f"{Keys.of(scratch).slot(None)}:"  # the model's keys are all shared ones
    try:
        return {key.decode()[len(shared) :]: await client.dump(key) async for key in client.scan_iter("model:*")}
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Score:
    applied: int
    lost: int
    double: int
    seen_missing: int  # (user, item) pairs a seen set lacks or holds with another ts
    seen_extra: int


def expected_seen(events: Sequence[Event], cap: int) -> dict[str, dict[str, float]]:
    """Per user, item → latest ts, only the ``cap`` most recent (ties by item id, as a Redis zset ranks)."""
    seen: dict[str, dict[str, float]] = {}
    for e in events:
        user = seen.setdefault(e.user_id, {})
        user[e.item_id] = max(user.get(e.item_id, 0), e.ts)
    return {u: dict(sorted(items.items(), key=lambda kv: (kv[1], kv[0]))[-cap:]) for u, items in seen.items()}


def score(client: redis.Redis | redis.RedisCluster, keys: Keys, events: Sequence[Event], seen_cap: int) -> Score:
    """Compare the stored counters and seen sets with the ones ``events`` give (see the module docstring)."""
    lost = double = 0
    for kind in ("view", "click"):
        want = Counter(e.item_id for e in events if e.type == kind)
        have = {k.decode(): int(v) for k, v in client.hgetall(keys(f"{kind}s")).items()}
        for item in want.keys() | have.keys():
            diff = have.get(item, 0) - want.get(item, 0)
            lost, double = lost + max(0, -diff), double + max(0, diff)
    missing = extra = 0
    want_seen = expected_seen(events, seen_cap)
    pipe = client.pipeline(transaction=False)
    for user in want_seen:
        pipe.zrange(keys.user(user, "seen"), 0, -1, withscores=True)
    for want, stored in zip(want_seen.values(), pipe.execute(), strict=True):
        have = {k.decode(): s for k, s in stored}
        missing += sum(1 for item, ts in want.items() if have.get(item) != ts)
        extra += len(have.keys() - want.keys())
    return Score(applied(client, keys), lost, double, missing, extra)


def applied(client: redis.Redis | redis.RedisCluster, keys: Keys) -> int:
    totals = client.hmget(keys("totals"), ["views", "clicks"])
    return sum(int(v or 0) for v in totals)


@dataclass
class FaultRun:
    """One workload through one consumer group and Redis prefix while faults are injected."""

    settings: Settings
    logs: Path
    workers: list[Child] = field(default_factory=list)
    offered: int = 0  # events handed to the producer so far
    acked: int = 0  # of those, acknowledged by the broker
    total: int = 0  # events the stream offers in all
    planned: int = 0  # injections planned
    started: int = 0  # injections started
    injections: int = 0  # injections recovered from
    recoveries_s: list[float] = field(default_factory=list)
    offering: asyncio.Task | None = None  # the producer's task while a scenario runs
    rolled_back: int = 0  # applied events Redis lost in rollbacks (at least; re-applied from the log)
    clusters: infra.Clusters | None = None  # the replicated Kafka and Redis Cluster a cluster scenario runs on

    def __post_init__(self) -> None:
        self.redis = client_of(self.settings, socket_timeout=2, socket_connect_timeout=1)
        self.keys = Keys.of(self.settings)

    @classmethod
    async def open(
        cls, base: Settings, name: str, model: dict[str, bytes], logs: Path, clusters: infra.Clusters | None = None
    ) -> FaultRun:
        """A run on fresh topics, with its own consumer group and Redis prefix ``name`` serving ``model``; on
        ``clusters`` (then ``base`` is their settings) a scenario can kill their brokers and Redis masters."""
        suffix = uuid.uuid4().hex[:8]
        settings = base.on_topics(
            suffix, worker_group=f"{name}-{suffix}", redis_prefix=name, worker_session_timeout_s=6, worker_stall_s=15
        )
        await infra.ensure_topics(settings)
        run = cls(settings, logs, clusters=clusters)
        for key, value in model.items():
            run.redis.restore(run.keys(key), 0, value, replace=True)
        return run

    @property
    def prefix(self) -> str:
        return self.settings.redis.prefix

    def start_worker(self) -> Child:
        self.workers.append(Child("worker", self.settings, self.logs / f"{self.prefix}-worker.log"))
        return self.workers[-1]

    def log_tail(self, lines: int = 40) -> str:
        log = self.logs / f"{self.prefix}-worker.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def applied(self) -> int:
        """Events in Redis; -1 while Redis does not answer."""
        try:
            return applied(self.redis, self.keys)
        except redis.RedisError:
            return -1

    async def wait_applied(self, target: int, timeout_s: float, what: str) -> float:
        """Seconds until Redis holds ``target`` events (applied beyond it means double-applied: fails later)."""
        started = time.monotonic()
        while self.applied() < target:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{self.prefix}: {self.applied()} of {target} events applied after {what}:\n"
                                   f"{self.log_tail()}")  # fmt: skip
            if self.offering is not None and self.offering.done() and self.offering.exception():
                raise RuntimeError(f"{self.prefix}: the producer failed") from self.offering.exception()
            if not any(w.alive() for w in self.workers):
                raise RuntimeError(f"{self.prefix}: every worker exited:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def wait_settled(self, timeout_s: float = 30.0) -> None:
        """Until the rankings are final (:func:`~recstream.store.state_dump.settled`): an idle worker finishes them."""
        started = time.monotonic()
        while not settled(self.redis, self.keys):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{self.prefix}: rankings not final after {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def recovered(self, timeout_s: float = 90.0) -> None:
        """Record the recovery time of an injection that just ended: until Redis holds everything offered by
        now and the next event offered after it (the system is back, not merely caught up with what a killed
        process had applied), unless the stream is held at :meth:`cap` meanwhile."""
        target = self.offered + int(self.offered < self.cap())
        self.recoveries_s.append(await self.wait_applied(target, timeout_s, f"injection {self.injections + 1}"))
        self.injections += 1

    async def prelude(self, workload: Workload) -> None:
        """Users and items first, applied before any event (every event then counts in its user's segment)."""
        async with EventProducer(self.settings) as producer:
            for user in workload.users:
                await producer.send_user(user)
            for item in workload.items:
                await producer.send_item(item)
        deadline = time.monotonic() + 120
        segments = [f"{self.keys.slot(p)}:user:seg" for p in range(self.keys.partitions or 1)]
        while (sum(self.redis.hlen(key) for key in segments), self.redis.zcard(self.keys("pool"))) < (
            len(workload.users),
            len(workload.items),
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.prefix}: users and items not applied:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def cap(self) -> int:
        """Events the stream may have offered by now: (k + 1) / (n + 1) of them until the k-th of n planned
        injections starts (k from 1), so the stream still flows during every one however slow the machine."""
        if self.started >= self.planned:
            return self.total
        return self.total * (self.started + 1) // (self.planned + 1)

    async def offer(self, events: Sequence[Event], rate: float, injections: int = 0) -> None:
        """Offer ``events`` in order at ``rate`` events/s (ticks of 50 ms, at most :meth:`cap`), waiting for
        each tick's acknowledgements; the rest at once after the last injection's recovery."""
        self.total, self.planned = len(events), injections
        async with EventProducer(self.settings, batch_events=50) as producer:
            started = time.monotonic()
            while self.offered < len(events):
                due = min(self.cap(), int((time.monotonic() - started) * rate) + 1)
                if self.injections >= self.planned:
                    due = len(events)
                batch, self.offered = events[self.offered : due], max(self.offered, due)  # offered once handed over
                await producer.send_events(batch)
                self.acked = await producer.flush()
                await asyncio.sleep(TICK_S)

    async def stalled_partitions(self, timeout_s: float = 30.0) -> int:
        """Partitions of events, items and users whose watermark is not at the log's end (the last offset), after
        waiting up to ``timeout_s`` for them to get there."""
        topics = (self.settings.kafka.events_topic, self.settings.kafka.items_topic, self.settings.kafka.users_topic)
        async with open_log(self.settings) as consumer:
            ends = {tp: end for topic in topics for tp, (_, end) in (await whole_topic(consumer, topic)).items()}
        deadline = time.monotonic() + timeout_s
        while True:
            marks: dict[str, int] = {}  # on a cluster, each slot's: the lowest counts
            for slot in {self.keys.slot(p) for p in (None, *range(self.keys.partitions or 0))}:
                for k, v in self.redis.hgetall(f"{slot}:wm").items():
                    marks[k.decode()] = min(int(v), marks.get(k.decode(), int(v)))
            stalled = sum(1 for (t, p), end in ends.items() if end and marks.get(f"{t}:{p}", -1) != end - 1)
            if not stalled or time.monotonic() > deadline:
                return stalled
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()


Inject = Callable[[FaultRun, random.Random], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """A fault injected ``times`` times while ``rate`` events/s are offered to ``workers`` workers."""

    name: str
    inject: Inject
    times: int
    rate: float
    workers: int = 1


async def run_scenario(run: FaultRun, workload: Workload, scenario: Scenario, seed: int = 1) -> None:
    """Start the workers, apply users and items, then offer the events while the fault is injected ``times``
    times (each after a random pause, each followed by its recovery); return once every event is applied."""
    rng = random.Random(seed)
    for _ in range(scenario.workers):
        run.start_worker()
    await run.prelude(workload)
    run.offering = asyncio.ensure_future(run.offer(workload.events, scenario.rate, scenario.times))
    while run.injections < scenario.times:
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        run.started += 1
        await scenario.inject(run, rng)
    await run.offering
    await run.wait_applied(len(workload.events), 120, "the last event")
    await run.wait_settled()


# --- the faults ---------------------------------------------------------------------------------


async def kill_worker(run: FaultRun, rng: random.Random) -> None:
    """SIGKILL the (only) worker at a random instant of applying, start a new one at once."""
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    run.workers.pop(0).kill()
    run.start_worker()
    await run.recovered()


async def rebalance_kill(run: FaultRun, rng: random.Random) -> None:
    """With two workers: a third joins (a rebalance starts) and the oldest is SIGKILLed during it."""
    run.start_worker()
    await asyncio.sleep(rng.uniform(0.5, 3.0))
    run.workers.pop(0).kill()
    await run.recovered()


def kafka_fault(outage_s: float) -> Inject:
    """Stop the broker (SIGTERM: a clean shutdown), keep it down ``outage_s``, start it on the same log."""

    async def inject(run: FaultRun, rng: random.Random) -> None:
        service = infra.kafka_service(run.settings)
        await asyncio.to_thread(infra.stop, service)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(infra.kafka_up, run.settings)
        await run.recovered()

    return inject


def redis_fault(outage_s: float, lost_window_s: float = 0.0) -> Inject:
    """SIGKILL Redis, keep it down ``outage_s``, restart it on its append-only file.

    With ``lost_window_s`` the AOF is copied that long before the kill and the copy is what restarts:
    the last ``lost_window_s`` of acknowledged writes are gone, as after a machine crash with
    ``appendfsync everysec`` (there, up to a second). Kafka's committed offsets are then past the
    watermarks, and the worker must re-apply the gap from the log.
    """

    async def inject(run: FaultRun, rng: random.Random) -> None:
        service = infra.redis_service(run.settings)
        aof = service.data_dir / "appendonlydir"
        saved = service.home / "aof-copy"
        if lost_window_s:
            shutil.rmtree(saved, ignore_errors=True)
            in_copy = run.applied()  # at most: writes may land while the copy is taken
            await asyncio.to_thread(shutil.copytree, aof, saved)
            await asyncio.sleep(lost_window_s)
            run.rolled_back += run.applied() - in_copy
        infra.stop(service, sig=signal.SIGKILL)
        if lost_window_s:
            shutil.rmtree(aof)
            saved.rename(aof)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(infra.redis_up, run.settings)
        await run.recovered()

    return inject


async def kill_broker(run: FaultRun, rng: random.Random) -> None:
    """SIGKILL one of the replicated Kafka's 3 brokers (each leads some partitions), keep it down 3 s while the
    stream goes on (2 of 3 replicas in sync still take acks=all writes), restart it on its log."""
    clusters = run.clusters
    assert clusters is not None, "a cluster scenario runs on FaultRun.open(..., clusters=...)"
    k = rng.randrange(len(clusters.brokers))
    await asyncio.to_thread(clusters.kill_broker, k)
    await asyncio.sleep(3.0)
    await asyncio.to_thread(clusters.start_broker, k)
    await run.recovered()


async def fail_over_redis(run: FaultRun, rng: random.Random) -> None:
    """SIGKILL the Redis Cluster master of the shared slot (counters and rankings: every events batch writes it).
    Its replica takes over after ``cluster-node-timeout``, without the writes it had not received yet
    (replication is asynchronous), which the workers re-apply from the log; the old master comes back as a
    replica."""
    clusters = run.clusters
    assert clusters is not None, "a cluster scenario runs on FaultRun.open(..., clusters=...)"
    k = await asyncio.to_thread(clusters.redis_master_of, run.keys("totals"))
    await asyncio.to_thread(clusters.kill_redis, k)
    await asyncio.to_thread(clusters.wait_redis_ok, False)
    await asyncio.to_thread(clusters.start_redis, k)
    await asyncio.to_thread(clusters.wait_redis_ok)
    await run.recovered()


POISON_SIZES = [limit + d for limit in (DEAD_LETTER_MAX_BYTES, MAX_MESSAGE_BYTES) for d in (-1, 0, 1)]


async def poison(run: FaultRun, rng: random.Random) -> None:
    """On events, items and users: a message of no JSON at limit − 1, limit and limit + 1 of every size limit (a
    dead letter's excerpt, a message's largest size); each is dead-lettered and the stream goes on."""
    producer = AIOKafkaProducer(bootstrap_servers=run.settings.kafka.bootstrap, acks="all", max_request_size=2 << 20)
    await producer.start()
    try:
        for topic in (run.settings.kafka.events_topic, run.settings.kafka.items_topic, run.settings.kafka.users_topic):
            for size in POISON_SIZES:
                await producer.send_and_wait(topic, b"!" * size, key=b"poison")
    finally:
        await producer.stop()
    await run.recovered()


SCENARIOS = {  # rates: about 1/(times + 1) of the tests' 7,410 events per injection cycle (see FaultRun.cap)
    "worker-kill": Scenario("worker SIGKILLed at a random instant, restarted at once", kill_worker, 8, 100),
    "rebalance-kill": Scenario("2 workers: a 3rd joins, the oldest SIGKILLed mid-rebalance", rebalance_kill, 2, 250, 2),
    "kafka-restart": Scenario("Kafka broker stopped (SIGTERM) for 2 s, restarted", kafka_fault(2.0), 2, 300),
    "redis-kill": Scenario("Redis SIGKILLed for 1 s, restarted on its AOF", redis_fault(1.0), 2, 600),
    "redis-rollback": Scenario(
        "Redis SIGKILLed, restarted 2 s behind what it acknowledged", redis_fault(1.0, lost_window_s=2.0), 1, 600
    ),
    "poison": Scenario("poison message at every size limit", poison, 1, 600),
}

CLUSTER_SCENARIOS = {  # on infra.running_clusters: a 3-broker Kafka (RF 3, min ISR 2) and 3 Redis masters + 3 replicas
    "broker-kill": Scenario("2 workers; 1 of 3 Kafka brokers SIGKILLed for 3 s, restarted", kill_broker, 2, 300, 2),
    "redis-failover": Scenario(
        "2 workers; the shared slot's Redis master SIGKILLed, its replica takes over", fail_over_redis, 2, 300, 2
    ),
}


# --- the reader -----------------------------------------------------------------------------------


@dataclass
class ReaderLoad:
    """Feed requests offered at a fixed rate; what came back."""

    offered: int = 0
    ok: int = 0
    degraded: int = 0
    failed: Counter = field(default_factory=Counter)  # status code or exception name → count
    answers: list[tuple[float, bool]] = field(default_factory=list)  # (monotonic time, degraded) of each 200, in order

    def recovery_s(self, since: float) -> float | None:
        """From ``since`` until the first normal (not degraded) answer after it."""
        return next((t - since for t, degraded in self.answers if t >= since and not degraded), None)


async def load_reader(url: str, users: Sequence[str], rate: float, stop: asyncio.Event, load: ReaderLoad) -> None:
    """GET /v1/feed/{user} at ``rate`` requests/s until ``stop`` (open loop: a slow answer delays no one)."""

    async def one(client: httpx.AsyncClient, user: str) -> None:
        try:
            response = await client.get(f"/v1/feed/{user}", params={"limit": 10})
        except httpx.HTTPError as exc:
            load.failed[type(exc).__name__] += 1
            return
        if response.status_code != 200:
            load.failed[str(response.status_code)] += 1
            return
        degraded = bool(response.json()["degraded"])
        load.ok += 1
        load.degraded += degraded
        load.answers.append((time.monotonic(), degraded))

    # waiting for a pooled connection is the load generator's queue, not the reader's latency
    # idle connections dropped before the reader's keep-alive (uvicorn: 5 s) closes them under a new request
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5.0, pool=None), limits=limits) as client:
        pending: set[asyncio.Task] = set()
        started = time.monotonic()
        while not stop.is_set():
            for _ in range(int((time.monotonic() - started) * rate) + 1 - load.offered):
                task = asyncio.ensure_future(one(client, users[load.offered % len(users)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                load.offered += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)


async def reader_redis_outage(
    url: str, settings: Settings, users: Sequence[str], rate: float = 40, outage_s: float = 2.0, times: int = 2
) -> tuple[ReaderLoad, list[float | None]]:
    """Load the reader while its Redis is SIGKILLed and restarted ``times`` times; each recovery time
    (Redis answering → the first normal feed), None if there was none within 10 s."""
    load, stop = ReaderLoad(), asyncio.Event()
    loading = asyncio.ensure_future(load_reader(url, users, rate, stop, load))
    recoveries: list[float | None] = []
    for _ in range(times):
        await asyncio.sleep(2.0)
        infra.stop(infra.redis_service(settings), sig=signal.SIGKILL)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(infra.redis_up, settings)
        back = time.monotonic()
        while load.recovery_s(back) is None and time.monotonic() - back < 10:
            await asyncio.sleep(0.05)
        recoveries.append(load.recovery_s(back))
    stop.set()
    await loading
    return load, recoveries
