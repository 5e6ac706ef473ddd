"""A user's erasure through the real reader, Kafka, a worker and Redis: nothing of the user survives a rebuild."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis

from recstream.contracts.events import USER_RECORD_KEYS, Erasure, segment_of
from recstream.contracts.keys import USER_KEYS, Keys
from recstream.contracts.settings import Settings
from recstream.eventlog.erasures import without_users
from recstream.eventlog.log import Message, open_log, read, whole_topic
from recstream.jobs import rebuild as rebuild_module
from recstream.jobs import training
from recstream.jobs.rebuild import rebuild
from recstream.shell import infra
from recstream.store.state_dump import dump_state
from tests.conftest import wait_until
from tests.serving.conftest import reader_client
from tests.streams.scenario import publish, trained, world

pytestmark = pytest.mark.integration
NEWCOMER = "newcomer"
"""An id the world's users never were: only its scroll sessions are stored (in the anonymous index)."""


def traces(state: dict[str, object], user: str) -> list[str]:
    """Where ``user`` appears in a state dump, spelled whole in any text: a key's name, a string value, a hash field
    or value, a set, list, zset or stream member (a scroll session's name in ``sessions:anonymous``, say). One trace
    per key named after the user (deleted whole), else per field or member; binary values (vectors) are not text."""
    spelled = re.compile(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])")

    def spells(value: object) -> bool:
        if isinstance(value, bytes):
            try:
                return bool(spelled.search(value.decode()))
            except UnicodeDecodeError:
                return False
        if isinstance(value, dict):
            return any(spells(field) or spells(v) for field, v in value.items())
        return isinstance(value, tuple | list | set) and any(spells(v) for v in value)

    def name(member: object) -> str:
        member = member[0] if isinstance(member, tuple) else member  # a zset's are (member, score)
        return member.decode(errors="replace") if isinstance(member, bytes) else repr(member)

    found = []
    for key, value in state.items():
        if spelled.search(key):
            found.append(key)
        elif isinstance(value, dict):
            found += [f"{key}[{name(field)}]" for field, v in value.items() if spells(field) or spells(v)]
        elif isinstance(value, set | list):
            found += [f"{key} ∋ {name(member)}" for member in value if spells(member)]
        elif spells(value):
            found.append(f"{key} = {name(value)}")
    return found


def counted(events: list, segments: dict[str, str]) -> dict[str, dict[bytes, bytes]]:
    """The worker's counters as an independent count of ``events``: per item, per segment and item, totals."""
    views = Counter(e.item_id for e in events if e.type == "view")
    clicks = Counter(e.item_id for e in events if e.type == "click")
    totals = Counter({"views": sum(views.values()), "clicks": sum(clicks.values())})
    counts: dict[str, Counter] = {"views": views, "clicks": clicks, "totals": totals}
    for e in events:
        kind = "views" if e.type == "view" else "clicks"
        counts.setdefault(f"seg:{segments[e.user_id]}:{kind}", Counter())[e.item_id] += 1
        totals[f"{kind}:{segments[e.user_id]}"] += 1
    return {key: {k.encode(): str(n).encode() for k, n in c.items()} for key, c in counts.items()}


async def values(settings, topic: str) -> list[bytes | None]:
    async with open_log(settings) as consumer:
        return [m.value async for chunk in read(consumer, await whole_topic(consumer, topic), 1000) for m in chunk]


async def test_after_erasure_and_rebuild_nothing_of_the_user_remains(isolated_settings, worker_factory, tmp_path):
    """The user's keys go at once (history, vector, candidates, seen set, preferences, a scroll session, the
    segment entry, the fold-in fields of new items); counters keep the user's share until the rebuild, after
    which every counter equals a count of the other users' events, and training reads none of theirs."""
    await erase_and_rebuild(isolated_settings, redis.Redis.from_url(isolated_settings.redis.url), worker_factory,
                            tmp_path)  # fmt: skip


async def test_erasure_and_rebuild_on_a_redis_cluster(clusters: infra.Clusters, worker_factory, tmp_path):
    """The same on a Redis Cluster (``--clusters``), where the user's keys and the new items' fold-in hashes are in
    two hash slots (one erasure script each) and the sessions and hashes are found by SCAN on each slot's node;
    the rebuild deletes and recomputes every slot's keys."""
    suffix = uuid.uuid4().hex[:8]
    settings = clusters.settings.on_topics(suffix, worker_group=f"worker-{suffix}", redis_prefix=f"e{suffix}")
    await infra.ensure_topics(settings)
    await erase_and_rebuild(settings, redis.RedisCluster.from_url(settings.redis.url), worker_factory, tmp_path)


async def erase_and_rebuild(
    settings: Settings, client: redis.Redis | redis.RedisCluster, worker_factory, tmp_path: Path
) -> None:
    keys = Keys.of(settings)
    prefix = settings.redis.prefix
    users, items, events = world(n_users=40, n_items=80, n_events=4_000, seed=3)
    settings, _ = await trained(settings.replace(batch_max=100), tmp_path, events[:1_500], items)
    await publish(settings, users=users, items=items)
    worker = worker_factory(settings)
    segments_stored = [f"{keys.slot(p)}:user:seg" for p in range(keys.partitions or 1)]
    wait_until(lambda: sum(client.hlen(key) for key in segments_stored) == len(users), what="user segments")
    await publish(settings, events=events)
    # and no fold-in pending: the worker folds in an item its batch graduated after the script, deleting the item's
    # users (the victim among them) between the dump below and the erasure would change what the erasure removes
    wait_until(lambda: applied(client, keys) == len(events) and not client.scard(keys("foldin:pending")),
               timeout_s=120, what="every event applied, every fold-in made")  # fmt: skip
    tracked = {key for key in client.scan_iter(keys("foldin:users:*"))}
    victim = Counter(
        u.decode() for key in tracked for u in client.hkeys(key) if client.exists(keys.user(u.decode(), "vec"))
    ).most_common(1)[0][0]
    others = [e for e in events if e.user_id != victim]
    assert len(others) < len(events)

    # a 1 s Redis deadline: on a loaded machine the reader's 50 ms can run out, and a degraded feed opens no session
    async with reader_client(settings.replace(open_writes=True, reader_redis_timeout_s=1.0)) as reader:
        prefs = await reader.put(f"/v1/users/{victim}/preferences", json={"categories": ["news"]})
        assert prefs.status_code == 200, prefs.text
        assert (await reader.get(f"/v1/feed/{victim}")).json()["session"], "a scroll session to erase"
        before = traces(dump_state(client, prefix), victim)
        assert {f"user:{victim}:{what}" for what in USER_KEYS} <= set(before)
        assert any(t.startswith("foldin:users:") for t in before) and f"user:seg[{victim}]" in before
        assert any(t.startswith(f"user:{victim}:feed:") for t in before)
        erased = await reader.delete(f"/v1/users/{victim}")
        assert erased.status_code == 202, erased.text
        assert erased.json() == {"user_id": victim, "removed": len(before)}
        again = await reader.delete(f"/v1/users/{victim}")
        assert again.json() == {"user_id": victim, "removed": 0}, "repeating it is harmless"

        # an id nothing is stored for: its sessions are listed in the anonymous index, by their names, which spell it
        expired, current = [(await reader.get(f"/v1/feed/{NEWCOMER}")).json()["session"] for _ in range(2)]
        client.delete(keys.user(NEWCOMER, f"feed:{expired}"))  # as its TTL would: the index still names it
        listed = traces(dump_state(client, prefix), NEWCOMER)
        assert sorted(listed) == sorted(
            [f"user:{NEWCOMER}:feed:{current}"]
            + [f"sessions:anonymous ∋ {keys.user(NEWCOMER, f'feed:{s}')}" for s in (expired, current)]
        )
        erased = await reader.delete(f"/v1/users/{NEWCOMER}")
        assert erased.json() == {"user_id": NEWCOMER, "removed": len(listed)}

    live = dump_state(client, prefix)
    assert traces(live, victim) == [f"erased ∋ {victim}"]
    assert traces(live, NEWCOMER) == [f"erased ∋ {NEWCOMER}"]
    assert live["totals"][b"views"] == str(sum(e.type == "view" for e in events)).encode(), (
        "aggregates keep the user's share until the rebuild"
    )
    erasures = [
        Erasure.model_validate_json(v or b"").user_id for v in await values(settings, settings.kafka.erasures_topic)
    ]
    assert erasures == [victim, victim, NEWCOMER]
    tombstones = (await values(settings, settings.kafka.users_topic)).count(None)
    assert tombstones == 3 * len(USER_RECORD_KEYS), "a tombstone on users for each key of the user, each time"
    worker.stop()

    await rebuild(settings)

    rebuilt = dump_state(client, prefix)
    assert traces(rebuilt, victim) == [f"erased ∋ {victim}"]
    assert traces(rebuilt, NEWCOMER) == [f"erased ∋ {NEWCOMER}"], "the rebuild keeps the session indexes"
    segments = {u.user_id: segment_of(u.attributes) for u in users}
    for key, counts in counted(others, segments).items():
        assert rebuilt[key] == counts, key
    assert sum(key.endswith(":vec") for key in rebuilt) == len({e.user_id for e in others})
    trained_on = [r.value async for chunk in training.read_log(settings) for r in chunk if r.kind == "event"]
    assert sorted(trained_on, key=lambda e: e.event_id) == sorted(others, key=lambda e: e.event_id)


async def test_an_erasure_during_the_rebuild_is_not_undone_by_the_replay(isolated_settings, tmp_path, monkeypatch):
    """Readers keep serving while a rebuild replays, ``DELETE /v1/users/{id}`` too. The erasure lands here in the worst
    window: after the rebuild read the erased users for a chunk of events, before it applies that chunk (which holds
    the user's events). The rebuild read the erasures once, at its start: that chunk and every later one wrote the
    user's history, vector and seen set back. Now later chunks leave the user out and the rebuild erases the user
    again at its end: nothing of the user remains but ``erased``, and the counters hold the user's events of that
    one chunk only (applied before the rebuild could know; the next rebuild drops them)."""
    users, items, events = world(n_users=40, n_items=80, n_events=4_000, seed=3)
    settings, _ = await trained(isolated_settings.replace(batch_max=20), tmp_path, events[:1_500], items)
    await publish(settings, users=users, items=items, events=events, batch_events=20)
    erased_in: list[Message] = []  # the chunk whose filtering ran before the erasure

    def erase_then_filter(chunk: list[Message], erased: frozenset[str]) -> list[Message]:
        if not erased_in and chunk[0].topic == settings.kafka.events_topic:
            erased_in.extend(chunk)
            with ThreadPoolExecutor(1) as thread:  # the rebuild waits: the erasure lands in this very window
                thread.submit(asyncio.run, erase(settings, victim_in(chunk, events))).result()
        return without_users(chunk, erased)

    monkeypatch.setattr(rebuild_module, "without_users", erase_then_filter)
    await rebuild(settings)

    victim = victim_in(erased_in, events)
    rebuilt = dump_state(redis.Redis.from_url(settings.redis.url), settings.redis.prefix)
    assert traces(rebuilt, victim) == [f"erased ∋ {victim}"]
    in_chunk = {o["event_id"] for m in erased_in for o in orjson.loads(m.value or b"[]")}
    replayed = [e for e in events if e.user_id != victim or e.event_id in in_chunk]
    assert len(replayed) < len(events) and any(e.user_id == victim for e in replayed)
    # per item and in all (not per segment: the erasure took the user's segment entry from under that chunk)
    counts = counted(replayed, {u.user_id: segment_of(u.attributes) for u in users})
    assert (rebuilt["views"], rebuilt["clicks"]) == (counts["views"], counts["clicks"])
    overall = [b"views", b"clicks"]
    assert [rebuilt["totals"][k] for k in overall] == [counts["totals"][k] for k in overall]


def victim_in(chunk: list[Message], events: list) -> str:
    """Of the users with events in ``chunk``, the one with the most events in the whole log (so many come later)."""
    present = {o["user_id"] for m in chunk for o in orjson.loads(m.value or b"[]")}
    return Counter(e.user_id for e in events if e.user_id in present).most_common(1)[0][0]


async def erase(settings: Settings, user: str) -> None:
    """``DELETE /v1/users/{user}`` on a reader of its own."""
    async with reader_client(settings.replace(open_writes=True, reader_redis_timeout_s=1.0)) as reader:
        done = await reader.delete(f"/v1/users/{user}")
        assert done.status_code == 202, done.text


def applied(client: redis.Redis | redis.RedisCluster, keys: Keys) -> int:
    return sum(int(v or 0) for v in client.hmget(keys("totals"), ["views", "clicks"]))
