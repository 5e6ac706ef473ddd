"""The feed explorer page (/explore) in headless Chromium, against the real reader, worker, Kafka and Redis.

Playwright for Python drives Debian's ``chromium`` (never a downloaded browser). A click on a card
must reach a worker through ``POST /v1/events`` and come back as a different feed without that
item; "Load more" must never repeat an item; the degraded banner must show once Redis is gone.
The page works on a copy of the shared world (``own_redis``, its own topics and worker), which
its events must not change.
A screenshot of the populated page is left at ``test-artifacts/explorer.png`` (git-ignored) for
a reviewer or CI to collect.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis
from playwright.sync_api import Page, expect, sync_playwright
from pydantic import SecretStr

from recstream.contracts.keys import Keys
from recstream.contracts.settings import Settings
from recstream.shell import infra
from tests.conftest import REPO
from tests.serving.conftest import LiveReader, World, kill_redis, trained_ranker

pytestmark = pytest.mark.integration

SCREENSHOT = REPO / "test-artifacts" / "explorer.png"
CHANGE_TIMEOUT_MS = 20_000
"""The page gives up after 15 s; the feed normally changes within a second (one worker batch)."""
PATIENT = {"reader_redis_timeout_s": 1.0}
"""A browser and other tests share the machine: a slow Redis reply must not turn a feed degraded here."""
API_KEY = "explorer-test-key"


def chromium() -> str:
    """Debian's Chromium; only a developer machine without it may skip, CI must run the test."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: ./dev setup installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium, or ./dev setup)")
    return path


@pytest.fixture
def page() -> Iterator[Page]:
    """A tab in a fresh headless Chromium; any uncaught script error fails the test.

    Per test, not per module: Playwright's sync API runs an event loop while it is open, and the
    async fixtures a test asks for (``own_redis``) must be set up before it starts.
    """
    executable = chromium()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        browser.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def private_world(own_redis: Settings, worker_factory: Callable[[Settings], infra.Child]) -> Settings:
    """A copy of the world (its own Redis and topics) with a worker of its own.

    The page's clicks and views must be applied by a real worker, but not to the shared world:
    tests/serving/test_feed.py recomputes rankings from exactly the events the world published.
    """
    settings = own_redis.replace(**{"worker_group": f"explorer-{uuid.uuid4().hex[:8]}", **PATIENT})
    worker = worker_factory(settings)
    worker.wait_ready()
    return settings


def shown(page: Page) -> list[str]:
    """Item ids of the cards on the page, in order."""
    return page.locator("#feed > li").evaluate_all("cards => cards.map(card => card.dataset.itemId)")


def open_feed(page: Page, url: str, user: str) -> list[str]:
    page.goto(f"{url}/explore?user={user}")
    expect(page.locator("#feed > li")).to_have_count(10)
    return shown(page)


def test_a_click_changes_the_feed_load_more_never_repeats_and_the_page_shows_it_all(
    world: World, private_world: Settings, page: Page
):
    user = world.warm[-1]
    protected = private_world.replace(api_key=SecretStr(API_KEY))  # writes need the key
    with (
        LiveReader(protected) as reader,
        world.redis() as shared,
        redis.Redis.from_url(private_world.redis.url, decode_responses=True) as client,
    ):
        shared_totals = shared.hgetall("rs:totals")
        # the page stamps events with the browser's clock: keep it in the world's event time, or the
        # worker's clock jumps to today and graduates the world's new items out of the pool (by age)
        page.clock.set_fixed_time(max(e.ts for e in world.events) / 1000 + 1)
        first = open_feed(page, reader.url, user)
        page.locator("#user-form summary").click()
        page.get_by_label("API key").fill(API_KEY)
        expect(page.locator("#feed-meta")).to_contain_text(f"model {world.model_version}")
        expect(page.locator("#feed .badge").first).to_have_text(re.compile("personal|popular|fresh|explore"))
        expect(page.locator("#degraded")).to_be_hidden()

        clicked = first[0]
        page.locator(f'#feed > li[data-item-id="{clicked}"] button.open').focus()
        page.keyboard.press("Enter")  # a real button: the keyboard works like the mouse
        expect(page.locator("#status")).to_contain_text("Feed changed", timeout=CHANGE_TIMEOUT_MS)
        after = shown(page)
        assert clicked not in after and after != first
        change_ms = int(page.locator("#feed-section").get_attribute("data-change-ms") or "0")
        print(f"click → changed feed: {change_ms} ms")
        history = [row[0] for row in orjson.loads(client.get(f"rs:user:{user}:hist") or "[]")]
        assert clicked in history, "the click went through the reader, Kafka and the worker"
        assert set(first) <= set(client.zrange(f"rs:user:{user}:seen", 0, -1)), "the views of what was shown too"

        for pages in (2, 3):
            page.locator("#load-more").click()
            expect(page.locator("#feed > li")).to_have_count(10 * pages)
        scrolled = shown(page)
        assert len(set(scrolled)) == len(scrolled) == 30, "load more never repeats an item"
        assert clicked not in scrolled

        hidden = scrolled[-1]
        page.locator(f'#feed > li[data-item-id="{hidden}"] button.hide').click()
        expect(page.locator(f'#feed > li[data-item-id="{hidden}"]')).to_have_count(0)
        assert hidden in orjson.loads(client.get(f"rs:user:{user}:prefs"))["not_interested"]

        page.locator("#feed > li button.similar-button").first.click()
        expect(page.locator("#item-view")).to_be_focused()
        expect(page.locator("#similar button.neighbour").first).to_be_visible()

        expect(page.locator("#stat-feeds")).to_have_text(re.compile(r"^[\d.,]+$"))
        expect(page.locator("#stat-freshness")).to_have_text(re.compile(r" ms$"), timeout=15_000)
        expect(page.locator("#stat-redis")).to_have_text("up")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header then sits at the top of the full-page shot
        page.screenshot(path=SCREENSHOT, full_page=True)
        print(f"screenshot: {SCREENSHOT}")

        page.set_viewport_size({"width": 360, "height": 740})  # a phone: one column, nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        assert shared.hgetall("rs:totals") == shared_totals, "nothing reached the shared world"


def test_the_degraded_banner_appears_when_redis_is_stopped(world: World, own_redis: Settings, page: Page):
    with LiveReader(own_redis.replace(**PATIENT)) as reader:
        open_feed(page, reader.url, world.warm[-2])
        expect(page.locator("#degraded")).to_be_hidden()
        kill_redis(own_redis)
        page.locator("#refresh").click()
        expect(page.locator("#degraded")).to_be_visible()
        expect(page.locator("#feed > li")).to_have_count(10)
        assert set(page.locator("#feed .badge").all_inner_texts()) == {"popular"}, "the last known popular list"
        expect(page.locator("#stat-redis")).to_have_text("down", timeout=5_000)


def test_a_ranked_page_shows_each_cards_score_and_top_feature(world: World, own_redis: Settings, page: Page):
    settings = own_redis.replace(ranker_min_rows=100, **PATIENT)
    with redis.Redis.from_url(settings.redis.url) as client:
        for p in range(settings.kafka.events_partitions):
            state = trained_ranker("popular", "personal", seed=p).to_bytes()
            client.set(Keys(settings.redis.prefix).ranker(settings.kafka.events_topic, p), state)
    with LiveReader(settings) as reader:
        open_feed(page, reader.url, world.warm[-3])
        expect(page.locator("#feed-meta")).to_contain_text("ranked by the online ranker")
        expect(page.locator("#feed .ranking")).to_have_count(10)
        expect(page.locator("#feed .ranking").first).to_have_text(re.compile(r"^score 0\.\d{3} · top feature popular$"))
