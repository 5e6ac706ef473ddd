"""An A/B test end to end: simulated users of a synthetic world fetch feeds from the real reader, click with
their true probability and report through POST /v1/events; a real worker applies the events; the report,
read back from Kafka, must name the blend that is truly better, and agree with what the users did."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import httpx
import pytest
import redis
from pydantic import SecretStr
from recstream.serving.variants import Variants
from typer.testing import CliRunner

from recstream.contracts.events import Event, validate
from recstream.contracts.experiments import Experiment, Variant
from recstream.contracts.settings import load_settings
from recstream.jobs.experiment_report import count_log
from recstream.jobs.experiment_stats import compare
from recstream.shell.cli import app as cli
from recstream.sim.simulator import SimConfig, Simulator
from recstream.sim.world import HOUR_MS, World, WorldConfig
from tests.conftest import wait_until
from tests.serving.conftest import LiveReader, reader_client
from tests.streams.scenario import publish, trained

pytestmark = pytest.mark.integration

EXPERIMENT = Experiment(
    name="blend",
    salt="e2e",
    control="good",
    variants=[
        Variant(name="good", weight=0.5),  # the default blend: personal, popular, fresh, explore (TS)
        # deliberately bad: no personal or popular items, explore at its cap and uniformly random
        Variant(
            name="bad",
            weight=0.5,
            share_personal=0.0,
            share_popular=0.0,
            share_fresh=0.75,
            share_explore=0.25,
            explore_policy="epsilon_greedy",
            explore_epsilon=1.0,
        ),
    ],
)
EVENTS = [
    Event(type="view", user_id="u1", item_id="i", ts=10**12),
    Event(type="view", user_id="u2", item_id="i", ts=10**12, variant="older:x"),
]
HISTORY_EVENTS = 4_000
FEEDS = 300


def split_history(world: World) -> tuple[list, list, list]:
    users, items, events = [], [], []
    for obj in world.history(HISTORY_EVENTS):
        kind = obj.pop("kind", "event")
        {"user": users, "item": items, "event": events}[kind].append(validate(obj, kind, 2**53))
    return users, items, events


def test_an_ab_test_through_the_pipeline_names_the_truly_better_blend(isolated_settings, worker_factory, tmp_path):
    # a world without arrivals or fading (a stationary truth), its history two hours ago
    now = int(time.time() * 1000)
    config = WorldConfig(seed=3, n_users=300, n_items=300, new_items_per_hour=0, appeal_half_life_h=None)
    world = World(config.model_copy(update={"start_ms": now - 2 * HOUR_MS}))
    users, items, events = split_history(world)
    settings = isolated_settings.replace(
        # a generous Redis timeout: a degraded page (the same for both arms) would blur the comparison
        **{"experiment": EXPERIMENT, "pool_cache_s": 0.1, "popular_refresh_s": 0.2, "reader_redis_timeout_s": 1.0},
        api_key=SecretStr("experiment-key"),  # the simulator posts the users' events with it
    )
    settings, _ = asyncio.run(trained(settings, tmp_path, events, items, candidates_m=50))
    worker = worker_factory(settings)
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    asyncio.run(publish(settings, users=users, items=items))
    wait_until(lambda: client.zcard("rs:pool") == len(items), what="every item in the pool")
    asyncio.run(publish(settings, events=events))
    wait_until(lambda: client.hget("rs:totals", "views") == str(sum(e.type == "view" for e in events)), what="history")

    with LiveReader(settings) as reader:
        simulator = Simulator(
            world,
            reader.url,
            settings,
            SimConfig(seed=1, feeds_per_s=60, concurrency=8, limit=10),
            announced_items=len(world.item_ids),
            announced_users=range(config.n_users),
        )
        result = asyncio.run(simulator.run(feeds=FEEDS))
    assert result.failed == 0 and result.degraded == 0
    truth = {label.split(":")[1]: arm for label, arm in result.by_variant.items()}
    assert set(truth) == {"good", "bad"} and min(arm.feeds for arm in truth.values()) > FEEDS / 3

    # the report reads the log, exactly what the users did
    counted = asyncio.run(count_log(settings, "blend"))
    counts = counted.totals
    assert counts == {name: (arm.impressions, arm.clicks) for name, arm in truth.items()}
    report = compare(counts, EXPERIMENT.control_name, users=counted.users)
    assert report.winner == "good", report
    assert report.arms[0].p_users is not None and report.arms[0].p_users < 0.05  # users as units agree
    # ... and the truth agrees: the bad blend's feeds lose more expected clicks against the oracle
    assert truth["good"].regret / truth["good"].feeds < truth["bad"].regret / truth["bad"].feeds

    env = settings.to_env()
    out = CliRunner().invoke(cli, ["experiment", "report"], env=env, terminal_width=160)
    print(out.output)  # the report table, shown with -s (README quotes it) and on a failure
    assert out.exit_code == 0, out.output
    assert "experiment blend (control good): good is better" in out.output

    # the worker counts the same events per variant, under bounded labels
    def worker_counts() -> dict[tuple[str, str], int]:
        text = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=30).text
        pattern = r'recstream_worker_experiment_events_total\{experiment="blend",type="(\w+)",variant="(\w+)"\} (\S+)'
        return {(variant, kind): int(float(n)) for kind, variant, n in re.findall(pattern, text)}

    expected = {(name, kind): n for name, (v, c) in counts.items() for kind, n in (("view", v), ("click", c))}
    # as long as every other wait: on a loaded machine the worker may still be applying the simulation's events
    wait_until(lambda: worker_counts() == expected, what="the worker's per-variant counters")


async def test_the_feed_names_the_variant_and_blends_with_its_settings(world):
    """On the reader tests' world: each page names its user's variant; the control's page is the page without
    any experiment (same seed), the bad arm's has explore at its cap (5 of 20) and fresh items in every other slot
    while the fresh source lasts (personal and popular, without a share, only inherit what it leaves)."""
    async with (
        reader_client(world.settings.replace(experiment=EXPERIMENT)) as reader,
        reader_client(world.settings) as plain,
    ):
        arms = set()
        for user in world.warm[:20]:
            params = {"limit": 20, "seed": 7}
            page = (await reader.get(f"/v1/feed/{user}", params=params)).json()
            variant = EXPERIMENT.assign(user).name
            arms.add(variant)
            assert page["variant"] == f"blend:{variant}"
            items = [(item["item_id"], item["source"]) for item in page["items"]]
            if variant == "good":
                default = (await plain.get(f"/v1/feed/{user}", params=params)).json()
                assert default["variant"] is None
                assert items == [(item["item_id"], item["source"]) for item in default["items"]]
            else:
                sources = [source for _, source in items]
                assert Counter(sources)["explore"] == 5, (user, items)
                # personal and popular have no share: they only inherit the slots fresh leaves once it runs out
                # (earlier tests of the module may have shown this user some fresh items)
                heirs = [k for k, source in enumerate(sources) if source in ("personal", "popular")]
                assert not heirs or min(heirs) > max(k for k, source in enumerate(sources) if source == "fresh"), items
        assert arms == {"good", "bad"}


def test_reported_events_carry_the_users_variant_unless_they_name_one():
    assert Variants(load_settings()).stamp(EVENTS) == EVENTS  # no experiment: nothing to stamp
    variants = Variants(load_settings(experiment=EXPERIMENT))
    stamped = variants.stamp(EVENTS)
    assert stamped[0].variant == f"blend:{EXPERIMENT.assign('u1').name}" and stamped[1].variant == "older:x"


def test_each_variant_blends_with_the_global_settings_plus_its_overrides():
    settings = load_settings(experiment=EXPERIMENT, share_popular=0.3)
    variants = Variants(settings)
    arms = {}
    for user in (f"u{k}" for k in range(100)):
        arm = variants.assign(user)
        arms[arm.label] = arm.settings
    good, bad = arms["blend:good"], arms["blend:bad"]
    assert good == settings
    assert (bad.blend.share_personal, bad.blend.share_popular, bad.blend.explore_policy) == (0.0, 0.0, "epsilon_greedy")
    assert bad.blend.share_fresh == 0.75 and bad.redis.prefix == settings.redis.prefix


def test_ranked_versus_fixed_is_an_experiment_arm():
    experiment = Experiment(
        name="ranking",
        salt="r1",
        variants=[Variant(name="ranked", weight=0.5), Variant(name="fixed", weight=0.5, ranker=False)],
    )
    variants = Variants(load_settings(experiment=experiment))
    arms = {arm.label: arm.settings.blend.ranker for arm in map(variants.assign, (f"u{k}" for k in range(100)))}
    assert arms == {"ranking:ranked": True, "ranking:fixed": False}
