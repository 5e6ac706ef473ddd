"""Request-time filters (serving/filters.py): their syntax and limits, then feeds through the real reader.

The world (tests/serving/conftest.py) was built by a real worker from Kafka: its items carry two categories
each and no features, so the feature filter gets items of its own, written through the reader's catalogue API
(Kafka → a worker → Redis), and views that make them popular.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
import redis
from recstream.serving.feed import build_page
from recstream.serving.filters import MAX_CATEGORIES, MAX_CLAUSES, MAX_EXCLUDE, MAX_VALUE_LEN, FeedFilter, FilterError
from recstream.serving.user_state import UserState

from recstream.client import AsyncClient
from recstream.contracts.events import MAX_ID_LEN
from recstream.contracts.settings import load_settings
from tests.conftest import wait_until
from tests.serving.conftest import LiveReader, World, feed, kill_redis, reader_client
from tests.serving.test_page import snapshot as page_snapshot
from tests.serving.test_ranked_feed import own_topics, ranker_states

NOW_MS = int(time.time() * 1000)


LIMITS = pytest.mark.parametrize(
    ("parameter", "limit", "part"),
    [("category", MAX_CATEGORIES, "c{}"), ("exclude", MAX_EXCLUDE, "i{}"), ("filter", MAX_CLAUSES, "f{}>=1")],
)
"""Each parameter, its limit of values and the k-th value's spelling."""


@LIMITS
@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize("trailing", ["", ","])
def test_each_parameter_takes_at_most_its_limit_of_values(parameter, limit, part, offset, trailing):
    """Only values count against the limit: the limit's ids and a trailing comma are refused for the empty value
    (they were "limit + 1 values"), too many ids for their number whatever follows them."""
    raw = ",".join(part.format(k) for k in range(limit + offset)) + trailing
    if offset > 0:
        with pytest.raises(FilterError, match=f"^{parameter}: {limit + 1} values, at most {limit} are allowed$"):
            FeedFilter.parse(**{parameter: raw})
    elif trailing:
        with pytest.raises(FilterError, match=f"^{parameter}: an empty value"):
            FeedFilter.parse(**{parameter: raw})
    else:
        parsed = FeedFilter.parse(**{parameter: raw})
        assert len({"category": parsed.categories, "exclude": parsed.exclude, "filter": parsed.clauses}[parameter]) == (
            limit + offset
        )


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_names_and_values_are_bounded_like_the_contracts_ids(offset):
    name, number = "x" * (MAX_ID_LEN + offset), "1" * (MAX_VALUE_LEN + offset)
    for spelled in ({"category": name}, {"exclude": name}, {"filter": f"{name}=1"}, {"filter": f"f<{number}"}):
        if offset <= 0:
            assert FeedFilter.parse(**spelled)
        else:
            with pytest.raises(FilterError):
                FeedFilter.parse(**spelled)


@pytest.mark.parametrize(
    ("spelled", "says"),
    [
        ({"category": ""}, "category: an empty value"),
        ({"category": "news,"}, "category: an empty value"),
        ({"category": "news sport"}, "category: 'news sport' is not an id"),
        ({"category": "news\n"}, "category: 'news\\n' is not an id"),  # re.match's $ let a trailing newline pass
        ({"exclude": "a:b"}, "exclude: 'a:b' is not an id"),
        ({"filter": "in_stock"}, "filter: 'in_stock': expected <feature><op><value>"),
        ({"filter": "in_stock==1"}, "filter: 'in_stock==1': the value must be a number, true or false"),
        ({"filter": "price<cheap"}, "filter: 'price<cheap': the value must be a number"),
        ({"filter": "price<nan"}, "filter: 'price<nan': the value must be a number"),
        ({"filter": "=1"}, "filter: '' is not an id"),
    ],
)
def test_a_malformed_filter_is_named_with_what_is_wrong(spelled, says):
    with pytest.raises(FilterError, match="^" + re.escape(says)):
        FeedFilter.parse(**spelled)


def test_each_operator_compares_the_items_feature():
    item = {"price": 10.0, "in_stock": 1.0}
    clauses = (
        "price=10 price!=10 price<10 price<=10 price>9.5 price>=10.5 in_stock=true in_stock=false weight<1 weight!=1"
    )
    holds = {clause: FeedFilter.parse(filter=clause).admits((), item) for clause in clauses.split()}
    assert [c for c, ok in holds.items() if ok] == ["price=10", "price<=10", "price>9.5", "in_stock=true"]


async def scroll(reader: httpx.AsyncClient, user: str, pages: int, **params) -> list[dict]:
    """``pages`` pages of one session under the same parameters."""
    found = [await feed(reader, user, **params)]
    while len(found) < pages and found[-1]["next_cursor"]:
        found.append(await feed(reader, user, cursor=found[-1]["next_cursor"], **params))
    return found


def ids(page: dict) -> list[str]:
    return [i["item_id"] for i in page["items"]]


@pytest.mark.integration
async def test_a_category_filter_gives_full_pages_of_that_category_and_scrolls_without_repeats(world: World, reader):
    for user in (world.warm[1], world.warm[2], world.cold[0], "nobody-filtered"):
        pages = await scroll(reader, user, 4, limit=20, category="kids")
        served = [item for page in pages for item in ids(page)]
        assert [len(ids(p)) for p in pages] == [20] * 4, user
        assert len(served) == len(set(served)), "a filtered session never repeats an item"
        assert all("kids" in world.categories(i) for i in served)
        assert all("kids" in i["categories"] for p in pages for i in p["items"])
        assert all(p["next_cursor"].endswith("." + FeedFilter.parse(category="kids").digest) for p in pages)
    warm = await feed(reader, world.warm[2], limit=20, category="kids,music")
    assert {"personal", "popular"} <= {i["source"] for i in warm["items"]}, "the user's own sources, filtered"
    assert all({"kids", "music"} & set(i["categories"]) for i in warm["items"])


@pytest.mark.integration
async def test_excluded_ids_never_appear_and_the_page_stays_full(world: World, reader):
    """As many ids as a request may exclude: the first page's ten, then others."""
    user = world.warm[3]
    first = ids(await feed(reader, user, limit=20, seed=4))
    others = [i.item_id for i in world.items if i.item_id not in first]
    excluded = first[:10] + others[: MAX_EXCLUDE - 10]
    page = await feed(reader, user, limit=20, seed=4, exclude=",".join(excluded))
    assert len(ids(page)) == 20 and not set(ids(page)) & set(excluded)
    assert {"personal", "popular"} <= {i["source"] for i in page["items"]}


@pytest.mark.integration
async def test_a_cursor_continues_only_under_the_filter_it_was_issued_with(world: World, reader):
    user = world.warm[4]
    page = await feed(reader, user, limit=10, category="news")
    for params in ({}, {"category": "sport"}, {"category": "news", "exclude": "i001"}):
        resp = await reader.get(f"/v1/feed/{user}", params={"cursor": page["next_cursor"], **params})
        assert resp.status_code == 400, (params, resp.text)
        assert "served under another filter" in resp.json()["detail"]
    plain = await feed(reader, user, limit=10)
    resp = await reader.get(f"/v1/feed/{user}", params={"cursor": plain["next_cursor"], "category": "news"})
    assert resp.status_code == 400, "an unfiltered session does not become a filtered one"
    same = await feed(reader, user, limit=10, cursor=page["next_cursor"], category="news")
    assert not set(ids(same)) & set(ids(page))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"category": "news,,sport"}, "category: an empty value"),
        ({"filter": "price~3"}, "filter: 'price~3': expected <feature><op><value>"),
        ({"exclude": ",".join(f"i{k}" for k in range(MAX_EXCLUDE + 1))}, "exclude: 101 values, at most 100"),
    ],
)
@pytest.mark.integration
async def test_a_bad_filter_is_a_400_that_says_what_is_wrong(world: World, reader, params, says):
    resp = await reader.get(f"/v1/feed/{world.warm[0]}", params=params)
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith(says)


@pytest.mark.integration
@LIMITS
async def test_the_400_for_a_trailing_comma_names_the_empty_value_and_too_many_values_their_number(
    world: World, reader, parameter, limit, part
):
    """limit−1, limit and limit+1 values, each with and without a trailing comma: the limit's values and a comma
    were refused as "limit + 1 values", which sent the client to drop an id instead of the comma."""
    answers = {}
    for offset in (-1, 0, 1):
        for trailing in ("", ","):
            raw = ",".join(part.format(k) for k in range(limit + offset)) + trailing
            resp = await reader.get(f"/v1/feed/{world.warm[0]}", params={parameter: raw})
            answers[offset, trailing] = resp.status_code, resp.json().get("detail")
    too_many = f"{parameter}: {limit + 1} values, at most {limit} are allowed"
    empty = f"{parameter}: an empty value (comma-separated, no spaces, no trailing comma)"
    assert answers == {
        (-1, ""): (200, None),
        (-1, ","): (400, empty),
        (0, ""): (200, None),
        (0, ","): (400, empty),
        (1, ""): (400, too_many),
        (1, ","): (400, too_many),
    }


@pytest.mark.integration
async def test_a_ranked_page_honours_the_filter(world: World):
    settings = await own_topics(world)
    with ranker_states(world, settings) as write:
        write("personal", "popular")
        async with reader_client(settings) as reader:
            pages = await scroll(reader, world.warm[5], 3, limit=20, category="film", exclude="i002,i003")
    served = [item for page in pages for item in ids(page)]
    assert [(p["ranked"], len(ids(p))) for p in pages] == [(True, 20)] * 3
    assert len(served) == len(set(served)) and not {"i002", "i003"} & set(served)
    assert all("film" in i["categories"] for p in pages for i in p["items"])


@pytest.mark.integration
async def test_a_degraded_page_honours_the_filter(world: World, own_redis):
    async with reader_client(own_redis) as reader:
        kill_redis(own_redis)
        page = await feed(reader, world.warm[6], degraded=True, limit=20, category="docs", exclude="i005")
    assert page["degraded"] and len(ids(page)) == 20
    assert all("docs" in world.categories(i) for i in ids(page)) and "i005" not in ids(page)


@pytest.mark.integration
async def test_a_feature_filter_through_the_client_on_items_written_over_http(isolated_settings, worker_factory):
    """Items with features PUT through the reader reach Redis through Kafka and a worker; views make them popular;
    the client's feed under ``filter`` serves only the items whose features pass."""
    settings = isolated_settings.replace(open_writes=True, pool_cache_s=0.1, popular_refresh_s=0.1)
    worker_factory(settings)
    stock = {f"s{k:02d}": {"in_stock": float(k % 2), "price": float(k)} for k in range(40)}
    matching = sorted(i for i, f in stock.items() if f["in_stock"] and f["price"] < 30)
    with LiveReader(settings) as live:
        async with AsyncClient(live.url) as client:
            await client.put_items([{"item_id": i, "categories": ["shop"], "features": f} for i, f in stock.items()])
            views = [{"type": "view", "user_id": f"v{u}", "item_id": i, "ts": NOW_MS} for i in stock for u in range(3)]
            await client.send_events(views)
            redis = settings.redis
            wait_until(lambda: _ranked(redis.url) == len(stock), what="every item in the popular ranking")
            # the reader's reloads then read the ranking and, item by item, the features: a fixed 0.5 s was too short
            # on a loaded machine (the reader's loop starved for 1.5 s here: a first page of one item); another id's
            # page shows when they have
            wait_until(lambda: _served(live.url, "in_stock=true,price<30") == matching, what="the reader's reloads")
            first = await client.feed("buyer", limit=10, filter="in_stock=true,price<30")
            second = await client.feed("buyer", limit=10, cursor=first.next_cursor, filter=["in_stock=1", "price<30"])
    served = [i.item_id for page in (first, second) for i in page.items]
    assert sorted(served) == matching
    assert len(first.items) == 10 and len(second.items) == 5, "the pages drain the 15 matching items"


def _ranked(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return client.zcard("rs:rank")


def _served(url: str, spelled: str) -> list[str]:
    """The items of one 20-item page under the filter ``spelled``, for an id of its own, sorted."""
    page = httpx.get(f"{url}/v1/feed/filter-probe", params={"limit": 20, "filter": spelled}, timeout=10).json()
    return sorted(i["item_id"] for i in page["items"])


def test_under_a_filter_an_item_not_loaded_yet_is_held_back_and_named_for_the_next_reload():
    """Pure: the page from a snapshot whose cache lacks the user's candidate (tests/serving/test_page.py's)."""
    snap = page_snapshot()
    user = UserState(segment="age25-34.F", candidate_rows=[["mystery", 1.0, None], ["i3", 0.9, None]])
    page = build_page(user, snap, load_settings(), 20, seed=1, now=0.0, only=FeedFilter.parse(category="news"))
    items = [s.item for s in page.items]
    assert len(items) == 20 and "mystery" not in items and items[0] == "i3"
    assert all(snap.categories.get(i, 0.0) == ("news",) for i in items), "no pool (music) item, even as explore"
    assert "mystery" in snap.categories.wanted
