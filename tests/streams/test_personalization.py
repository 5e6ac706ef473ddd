"""Personal candidates end to end: real broker, real Redis, a real worker serving a trained model."""

from __future__ import annotations

import itertools
import random
import urllib.request

import numpy as np
import orjson
import pytest
import redis
from recstream.models.artifacts import read_model

from recstream.contracts.events import Event, ItemEvent, UserEvent, partition_for
from recstream.shell.demo import metric_sum
from tests.conftest import wait_until
from tests.streams.scenario import T0, applied_events, events_applied, publish, trained, until_every_worker_applies

pytestmark = pytest.mark.integration
CATEGORIES = ["news", "sport", "music", "film"]
PER_CATEGORY = 50


def category_of(item: str) -> str:
    return CATEGORIES[int(item[1:]) // PER_CATEGORY]


def catalogue() -> list[ItemEvent]:
    return [
        ItemEvent(op="new", item_id=f"i{k}", ts=T0, created_ts=T0, categories=[CATEGORIES[k // PER_CATEGORY]])
        for k in range(len(CATEGORIES) * PER_CATEGORY)
    ]


def taste_log(n_users: int = 300, seed: int = 0) -> list[Event]:
    """Each user clicks mostly items of one favourite category."""
    rng = random.Random(seed)
    events = []
    for u in range(n_users):
        favourite = u % len(CATEGORIES)
        for k in range(15):
            cat = favourite if rng.random() < 0.9 else rng.randrange(len(CATEGORIES))
            item = f"i{cat * PER_CATEGORY + int(rng.paretovariate(1.0)) % PER_CATEGORY}"
            events.append(Event(type="click", user_id=f"t{u}", item_id=item, ts=T0 + 1000 * k + u))
    return events


def candidates(client: redis.Redis, user: str) -> list[str]:
    raw = client.get(f"rs:user:{user}:cand")
    return [c[0] for c in orjson.loads(raw)] if raw else []


def share(items: list[str], category: str) -> float:
    return sum(category_of(i) == category for i in items) / max(len(items), 1)


async def test_clicks_move_a_users_candidates_toward_that_category(isolated_settings, worker_factory, tmp_path):
    items = catalogue()
    settings, _ = await trained(isolated_settings, tmp_path, taste_log(), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    await publish(settings, items=items)
    news = [Event(type="click", user_id="newbie", item_id=f"i{k}", ts=T0 + k) for k in (1, 2, 3)]
    await publish(settings, events=news)
    wait_until(lambda: candidates(client, "newbie"), what="a first candidate list")
    before = candidates(client, "newbie")
    assert share(before, "news") > 0.5 and len(before) == 20
    assert not {"i1", "i2", "i3"} & set(before), "clicked items are not candidates"

    sport = [Event(type="click", user_id="newbie", item_id=f"i{PER_CATEGORY + k}", ts=T0 + 10 + k) for k in range(8)]
    await publish(settings, events=sport)
    wait_until(lambda: candidates(client, "newbie") != before, what="the candidate list to change")
    after = candidates(client, "newbie")
    assert share(after, "sport") > share(before, "sport") + 0.3
    because = {c[2] for c in orjson.loads(client.get("rs:user:newbie:cand"))}
    assert because <= {e.item_id for e in news + sport}
    assert np.frombuffer(client.get("rs:user:newbie:vec"), dtype="<f4").shape == (16,)


def user_steps(worker) -> float:
    line = next(x for x in worker.metrics().splitlines() if x.startswith("recstream_worker_user_steps_total "))
    return float(line.split()[1])


async def test_user_steps_count_the_users_refreshed_not_every_user_in_a_batch(
    isolated_settings, worker_factory, tmp_path
):
    """A user pays a step at a click or at their first event, a view of a known user pays none: the counter (and
    the benchmarks' steps per event) counts those steps."""
    items = catalogue()
    settings, _ = await trained(isolated_settings, tmp_path, taste_log(), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, items=items)
    users = [f"s{k}" for k in range(5)]
    await publish(
        settings, events=[Event(type="view", user_id=u, item_id="i1", ts=T0 + k) for k, u in enumerate(users)]
    )
    wait_until(lambda: all(candidates(client, u) for u in users), what="the first events' candidate lists")
    wait_until(lambda: user_steps(worker) == 5, what="5 steps: each user's first event")
    again = [Event(type="view", user_id=u, item_id="i2", ts=T0 + 10 + k) for k, u in enumerate(users[:3])]
    await publish(settings, events=[*again, Event(type="click", user_id=users[3], item_id="i3", ts=T0 + 20)])
    wait_until(lambda: "i3" in {i for i, *_ in orjson.loads(client.get(f"rs:user:{users[3]}:hist") or b"[]")},
               what="the click in the history")  # fmt: skip
    wait_until(lambda: applied_events(client, "rs") == 9, what="every view applied, the other partitions' too")
    assert user_steps(worker) == 6  # the click; the three views of known users paid none


async def test_a_new_item_reaches_its_category_fans_before_any_click(isolated_settings, worker_factory, tmp_path):
    items = catalogue()
    settings, _ = await trained(isolated_settings, tmp_path, taste_log(), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    await publish(settings, items=items)
    fresh = ItemEvent(op="new", item_id="fresh-sport", ts=T0 + 1, created_ts=T0 + 1, categories=["sport"])
    await publish(settings, items=[fresh])
    wait_until(lambda: client.exists("rs:item:fresh-sport:similar"), what="the new item's neighbours")
    fans = [f"fan{k}" for k in range(10)]
    others = [f"other{k}" for k in range(10)]
    clicks = [
        Event(type="click", user_id=user, item_id=f"i{offset + k}", ts=T0 + 100 + k)
        for users, offset in ((fans, PER_CATEGORY), (others, 0))
        for user in users
        for k in range(6)
    ]
    await publish(settings, events=clicks)
    wait_until(lambda: all(candidates(client, u) for u in fans + others), what="candidates for everyone")
    reached_fans = sum("fresh-sport" in candidates(client, u) for u in fans)
    reached_others = sum("fresh-sport" in candidates(client, u) for u in others)
    assert reached_fans >= 5 and reached_others <= 1
    neighbours = [j for j, _ in orjson.loads(client.get("rs:item:fresh-sport:similar"))]
    assert share(neighbours[:10], "sport") >= 0.7


async def test_a_new_model_version_is_hot_swapped_without_a_restart(isolated_settings, worker_factory, tmp_path):
    items = catalogue()
    settings, first = await trained(isolated_settings, tmp_path, taste_log(seed=0), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker = worker_factory(settings)
    await publish(settings, items=items, users=[UserEvent(user_id="newbie", ts=T0, preferred_categories=["music"])])
    wait_until(lambda: candidates(client, "newbie"), what="onboarding candidates from picked categories")
    assert share(candidates(client, "newbie"), "music") > 0.5

    def served() -> str:
        text = scrape(worker.port)
        return next(line.split('"')[1] for line in text.splitlines() if line.startswith("recstream_worker_model_info{"))

    await publish(settings, events=[Event(type="click", user_id="u1", item_id="i1", ts=T0)])
    wait_until(lambda: served() == first, what="the first model served")
    _, second = await trained(settings, tmp_path, taste_log(seed=1), items)
    assert second != first and client.get("rs:model:current").decode() == second
    await publish(settings, events=[Event(type="click", user_id="u1", item_id="i2", ts=T0 + 1)])
    wait_until(lambda: served() == second, what="the new model served without a restart")
    assert worker.proc.poll() is None


async def test_a_batch_list_does_not_outlive_the_version_whose_fit_knew_the_user(
    isolated_settings, worker_factory, tmp_path
):
    """A user the first version's fit knew gets a batch list; a second version trained without them (a rolling
    window drops users) deletes it at their next event, where the reader would otherwise rank by the first fit's list
    for good. The step's own list stays."""
    items = catalogue()
    settings, _ = await trained(isolated_settings, tmp_path, taste_log(seed=0), items)
    client = redis.Redis.from_url(settings.redis.url)
    worker_factory(settings)
    await publish(settings, items=items, events=[Event(type="click", user_id="t1", item_id="i1", ts=T0 + 10**6)])
    wait_until(lambda: client.exists("rs:user:t1:bcand"), what="the batch list of a user the fit knew")
    others = [e.model_copy(update={"user_id": f"v{e.user_id}"}) for e in taste_log(seed=1)]
    await trained(settings, tmp_path, others, items)
    await publish(settings, events=[Event(type="click", user_id="t1", item_id="i2", ts=T0 + 10**6 + 1)])
    wait_until(lambda: not client.exists("rs:user:t1:bcand"), what="the first version's batch list deleted")
    history = {item for item, *_ in orjson.loads(client.get("rs:user:t1:hist"))}
    assert {"i1", "i2"} <= history and candidates(client, "t1")


async def test_a_graduated_item_gets_its_fold_in_vector_in_every_worker(isolated_settings, worker_factory, tmp_path):
    """A new item whose content says news is adopted by sport fans: when it graduates (10 views), its vector
    becomes the item fold-in over those fans, in Redis and in both workers' indexes (probes on every partition
    are served by both; the fans share one partition, so one worker computes it), so sport lovers get it as a
    candidate where its content vector did not."""
    items = catalogue()
    settings, version = await trained(isolated_settings, tmp_path, taste_log(), items)
    settings = settings.replace(pool_graduate_views=10)
    client = redis.Redis.from_url(settings.redis.url)
    workers = [worker_factory(settings) for _ in range(2)]  # a fold-in must reach a worker that did not compute it
    fresh = ItemEvent(op="new", item_id="fresh", ts=T0, created_ts=T0, categories=["news"])
    await publish(settings, items=[*items, fresh])
    await until_every_worker_applies(settings, workers, item="i1")  # both hold partitions before the fans click
    n = settings.kafka.events_partitions
    fans = [f"fan{k}" for k in range(100) if partition_for(f"fan{k}", n) == 0][:10]
    sport = [f"i{PER_CATEGORY + k}" for k in range(6)]

    def clicks(users: list[str], extra: list[str], ts: int) -> list[Event]:
        items = sport + extra
        return [Event(type="click", user_id=u, item_id=i, ts=ts + k) for u in users for k, i in enumerate(items)]

    await publish(settings, events=clicks(fans, ["fresh"], T0 + 100) + clicks(probes("before", n), [], T0 + 100))
    wait_until(lambda: client.hlen("rs:foldin:users:fresh") == len(fans), what="the fans tracked as the item's users")
    wait_until(lambda: all(candidates(client, u) for u in probes("before", n)), what="candidates of the first probes")
    assert not any("fresh" in candidates(client, u) for u in probes("before", n)), "its content vector says news"

    await publish(settings, events=[Event(type="view", user_id=u, item_id="fresh", ts=T0 + 200) for u in fans])
    wait_until(lambda: client.hexists(f"rs:foldin:{version}", "fresh"), what="the fold-in stored at graduation")
    stored = np.frombuffer(client.hget(f"rs:foldin:{version}", "fresh"), "<f4")
    model = read_model(settings.model.dir, version)
    x = np.array([np.frombuffer(client.get(f"rs:user:{u}:vec"), "<f4") for u in fans], dtype=np.float64)
    c = 1 + model.config.alpha * (4.0 + 1.0)  # one click + one view at the default weights
    a = model.user_gram + model.config.regularization * np.eye(x.shape[1]) + (c - 1) * x.T @ x
    np.testing.assert_allclose(stored, np.linalg.solve(a, c * x.sum(axis=0)), rtol=0, atol=1e-5)
    assert not client.exists("rs:foldin:users:fresh") and not client.smembers("rs:foldin:pending")
    neighbours = [j for j, _ in orjson.loads(client.get("rs:item:fresh:similar"))]
    assert share(neighbours[:10], "sport") >= 0.7

    # each worker applies it from the log within its poll; the later probes' lists are made once, at their clicks
    wait_until(
        lambda: all(metric(w.port, "recstream_worker_fold_ins_followed_total") >= 1 for w in workers),
        what="the fold-in applied by both workers",
    )
    await publish(settings, events=clicks(probes("after", n), [], T0 + 300))
    wait_until(lambda: all(candidates(client, u) for u in probes("after", n)), what="candidates of the later probes")
    assert all("fresh" in candidates(client, u) for u in probes("after", n))
    assert sum(metric(w.port, "recstream_worker_fold_ins_total") for w in workers) == 1
    assert all(events_applied(w, settings.kafka.events_topic) > 0 for w in workers), "both workers served probes"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        return response.read().decode()


def metric(port: int, name: str) -> float:
    return metric_sum(scrape(port), f"{name} ")


def probes(name: str, partitions: int) -> list[str]:
    """One user id per events partition, so every worker serves some of them whatever the assignment."""
    by_partition: dict[int, str] = {}
    for k in itertools.count():
        by_partition.setdefault(partition_for(f"{name}{k}", partitions), f"{name}{k}")
        if len(by_partition) == partitions:
            return sorted(by_partition.values())
    raise AssertionError("unreachable")
