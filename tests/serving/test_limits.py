"""The reader's limits through the real reader, each at limit − 1, limit and limit + 1 (issue 15, items 2, 3, 5, 7).

Bodies (size, Content-Type) on every route that takes one, the contract's sizes on every route, the
click limits, what one events request may make Redis return, and the scroll sessions reads may
leave in Redis. Writes go to fresh topics no worker reads; Redis is the world's, with ids of each
test's own (random, so a rerun within the click window counts from zero).
"""

from __future__ import annotations

import contextlib
import gzip
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis
from prometheus_client import REGISTRY
from recstream.serving.app import PREFERENCES_MAX_BYTES
from recstream.serving.catalogue import ITEM_MAX_BYTES
from recstream.serving.click_guard import VIEWS_PER_CALL
from recstream.serving.feed_store import ATTRIBUTION_PAGES, ATTRIBUTION_SESSIONS

from recstream.contracts.events import MAX_EVENTS_PER_MESSAGE, MAX_ID_LEN, MAX_MESSAGE_BYTES
from recstream.contracts.ranking import CONTEXT_KEY
from recstream.contracts.settings import SESSION_TTL_MAX_S, Settings, SettingsError
from tests.serving.conftest import KEY, World, feed, isolated_topics, published_events, reader_client
from tests.serving.test_feed import WORLD_TIME

pytestmark = pytest.mark.integration
JSON = {"content-type": "application/json"}


HOUR = 3_600
"""The click tests' window: one of a minute (the default) rolled over within a test about once in 30 runs, and its
counts started again."""


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def view(user: str, item: str = "i001", ts: int = WORLD_TIME, **more: object) -> dict:
    return {"type": "view", "user_id": user, "item_id": item, "ts": ts, **more}


def click(user: str, item: str = "i001", ts: int = WORLD_TIME) -> dict:
    return {"type": "click", "user_id": user, "item_id": item, "ts": ts}


def padded(doc: object, size: int) -> bytes:
    """``doc`` as JSON with trailing spaces up to exactly ``size`` bytes: still valid JSON."""
    raw = orjson.dumps(doc)
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def in_chunks(body: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    """The body as a stream without Content-Length (chunked): the reader must count, not trust a header."""
    for first in range(0, len(body), size):
        yield body[first : first + size]


async def endless() -> AsyncIterator[bytes]:
    """150 MB of body, made as it is read (the PUT that took the reader to 527 MB of memory)."""
    for _ in range(2400):
        yield b"[" * (1 << 16)


def limited(limit: str, what: str = "clicks") -> float:
    return REGISTRY.get_sample_value(f"recstream_reader_{what}_limited_total", {"limit": limit}) or 0.0


BODIES = {  # route → method, path, a valid document, its cap, the status of a success
    "events": ("POST", "/v1/events", [view("u-body")], MAX_MESSAGE_BYTES, 202),
    "preferences": ("PUT", "/v1/users/{user_id}/preferences", {"categories": ["music"]}, PREFERENCES_MAX_BYTES, 200),
    "item": ("PUT", "/v1/items/{item_id}", {"categories": ["music"]}, ITEM_MAX_BYTES, 202),
    "user": ("PUT", "/v1/users/{user_id}", {"attributes": {"age": 30}}, ITEM_MAX_BYTES, 202),
}


@pytest.mark.parametrize("route", BODIES)
async def test_every_body_is_capped_before_it_is_parsed(world: World, route: str):
    method, template, doc, cap, ok = BODIES[route]
    path = template.format(user_id="u-body", item_id="i-body")
    async with reader_client(await isolated_topics(world.settings), KEY) as reader:
        operation = reader.app.openapi()["paths"][template][method.lower()]  # type: ignore[attr-defined]
        assert operation["x-max-body-bytes"] == cap, "the cap is published to clients"
        for size, status in ((cap - 1, ok), (cap, ok), (cap + 1, 413)):
            body = padded(doc, size)
            declared = await reader.request(method, path, content=body, headers=JSON)
            streamed = await reader.request(method, path, content=in_chunks(body), headers=JSON)
            assert (declared.status_code, streamed.status_code) == (status, status), (size, declared.text)
        huge = await reader.request(method, path, content=endless(), headers=JSON)
        assert huge.status_code == 413 and f"exceeds {cap} bytes" in huge.text


@pytest.mark.parametrize("route", BODIES)
async def test_a_body_not_declared_as_json_is_refused_with_415(world: World, route: str):
    """A cross-site page can POST text/plain, a form or multipart without a CORS preflight: none of them passes; nor
    does a compressed body, which the reader does not decode (it was read as JSON: 422, invalid UTF-8)."""
    method, template, doc, _, ok = BODIES[route]
    path = template.format(user_id="u-body", item_id="i-body")
    async with reader_client(await isolated_topics(world.settings), KEY) as reader:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
            resp = await reader.request(method, path, content=orjson.dumps(doc), headers={"content-type": content_type})
            assert resp.status_code == 415, (content_type, resp.text)
        packed = await reader.request(
            method, path, content=gzip.compress(orjson.dumps(doc)), headers={**JSON, "content-encoding": "gzip"}
        )
        assert packed.status_code == 415 and "Content-Encoding gzip" in packed.text, packed.text
        lines = [*JSON.items(), ("content-encoding", "identity"), ("content-encoding", "gzip")]  # the second line
        packed = await reader.request(method, path, content=gzip.compress(orjson.dumps(doc)), headers=lines)
        assert packed.status_code == 415 and "Content-Encoding gzip" in packed.text, packed.text
        for plain in ("", "identity, ", ", IDENTITY", "identity,identity"):  # RFC 9110: empty elements are ignored
            resp = await reader.request(
                method, path, content=orjson.dumps(doc), headers={**JSON, "content-encoding": plain}
            )
            assert resp.status_code == ok, (plain, resp.text)
        fine = await reader.request(
            method, path, content=orjson.dumps(doc), headers={"content-type": "application/json; charset=utf-8"}
        )
        assert fine.status_code == ok, fine.text


async def test_the_contracts_sizes_hold_on_every_route(world: World):
    """Ids (64 characters), page sizes (100), events per request (10,000), preference lists (32, 256)."""
    n = MAX_ID_LEN

    def ids(size: int) -> str:
        return "u" * size

    cases: list[tuple[str, str, object, int]] = []  # method, path, JSON body, the status it must get
    for size in (n - 1, n, n + 1):

        def status(ok: int, size: int = size) -> int:
            return 422 if size > n else ok

        cases += [
            ("GET", f"/v1/feed/{ids(size)}", None, status(200)),
            ("GET", f"/v1/items/{ids(size)}/similar", None, status(404)),  # a valid id the catalogue lacks
            ("GET", f"/v1/users/{ids(size)}/preferences", None, status(200)),
            ("PUT", f"/v1/users/{ids(size)}/preferences", {}, status(200)),
            ("POST", "/v1/events", [view(ids(size))], status(202)),
            ("POST", "/v1/events", [view("u-id", item=ids(size))], status(202)),
        ]
    for limit in (99, 100, 101):
        cases += [("GET", f"/v1/feed/u-limit?limit={limit}", None, 422 if limit > 100 else 200)]
        cases += [("GET", f"/v1/items/i001/similar?limit={limit}", None, 422 if limit > 100 else 200)]
    for count in (31, 32, 33):
        categories = {"categories": [f"c{k}" for k in range(count)]}
        cases += [("PUT", "/v1/users/u-prefs/preferences", categories, 422 if count > 32 else 200)]
    for count in (255, 256, 257):
        not_interested = {"not_interested": [f"i{k}" for k in range(count)]}
        cases += [("PUT", "/v1/users/u-prefs/preferences", not_interested, 422 if count > 256 else 200)]
    m = MAX_EVENTS_PER_MESSAGE
    for count in (m - 1, m, m + 1):
        events = [view(f"u-many-{k % 50}", ts=WORLD_TIME + k) for k in range(count)]
        cases += [("POST", "/v1/events", events, 422 if count > m else 202)]
    async with reader_client(await isolated_topics(world.settings), KEY) as reader:
        answers = []
        for method, path, body, expected in cases:
            resp = await reader.request(
                method, path, content=None if body is None else orjson.dumps(body), headers=JSON
            )
            answers.append((method, path[:80], resp.status_code, expected))
    assert [a for a in answers if a[2] != a[3]] == [], "each at the limit accepted, one past it refused"


async def test_clicks_past_the_per_user_item_limit_are_dropped_and_the_rest_published(world: World):
    settings = await isolated_topics(world.settings.replace(clicks_per_user_item=3, click_window_s=HOUR))
    users = {n: unique(f"u-clicks-{n}") for n in (2, 3, 4)}
    before = limited("user_item")
    async with reader_client(settings, KEY) as reader:
        for n, user in users.items():
            resp = await reader.post(
                "/v1/events", json=[view(user), *[click(user, ts=WORLD_TIME + k) for k in range(n)]]
            )
            assert resp.status_code == 202 and resp.json() == {
                "accepted": 1 + min(n, 3),
                "attributed": 0,
                "dropped": max(0, n - 3),
            }, resp.text
        again = await reader.post("/v1/events", json=[click(users[3], ts=WORLD_TIME + 9)])
        assert again.json()["dropped"] == 1, "the limit holds across requests within the window"
        other = await reader.post("/v1/events", json=[click(users[3], item="i002")])
        assert other.json()["dropped"] == 0, "per item"
    assert limited("user_item") - before == 2
    events = await published_events(settings, at_least=3 + 4 + 4 + 1)
    clicks = Counter(e.user_id for e in events if e.type == "click" and e.item_id == "i001")
    assert clicks == {users[2]: 2, users[3]: 3, users[4]: 3}
    assert Counter(e.user_id for e in events if e.type == "view") == Counter(users.values())


async def test_likes_count_toward_the_per_user_item_limit_as_clicks_do(world: World):
    """Every positive event naming its page trains the shared ranker as a click: unlimited likes of one served item
    (1,000 in a review's replay) steered what every ranked page shows. They are limited as clicks are."""
    settings = await isolated_topics(world.settings.replace(clicks_per_user_item=3, click_window_s=HOUR))
    user = unique("u-likes")
    async with reader_client(settings, KEY) as reader:
        likes = [{**click(user, ts=WORLD_TIME + k), "type": "like"} for k in range(2)]
        resp = await reader.post("/v1/events", json=[view(user), click(user, ts=WORLD_TIME + 5), *likes])
        assert resp.json() == {"accepted": 4, "attributed": 0, "dropped": 0}, "3 positives: at the limit"
        again = await reader.post("/v1/events", json=[{**click(user, ts=WORLD_TIME + 9), "type": "like"}])
        assert again.json()["dropped"] == 1, "a fourth positive on the pair, a like, is past it"


@pytest.mark.parametrize("dedup_window_s", [HOUR + 1, HOUR, HOUR - 1])
async def test_a_resent_request_spends_no_click_limit_again(world: World, dedup_window_s: int):
    """The README's advice after a 503 is to send the request again (each event id applies once; a resend is the
    same request whatever the first answer was, so the three sends here all succeed). The guard had
    counted its clicks before the publish failed, so the resend was counted again: a single click resent twice
    under a limit of 1 came back ``dropped``, and resends pushed the client toward 429. Counted once only while
    the workers' de-duplication window is longer than the click window: as long, two copies admitted a window
    apart may both be applied, so each copy counts."""
    settings = await isolated_topics(
        world.settings.replace(
            clicks_per_user_item=1, clicks_per_client=2, click_window_s=HOUR, dedup_window_s=dedup_window_s
        )
    )
    user = unique("u-resend")
    async with reader_client(settings, KEY, address=unique("client-resend")) as reader:
        body = [click(user, ts=WORLD_TIME + 1)]
        responses = [await reader.post("/v1/events", json=body) for _ in range(3)]
        if dedup_window_s <= settings.reader.click_window_s:  # each copy counted: both limits hold
            assert [r.status_code for r in responses] == [202, 202, 429] and responses[1].json()["dropped"] == 1
            return
        answers = [r.json() for r in responses]
        assert answers == [{"accepted": 1, "attributed": 0, "dropped": 0}] * 3, "the same event id, counted once"
        other = await reader.post("/v1/events", json=[click(user, ts=WORLD_TIME + 2)])
        assert other.json()["dropped"] == 1, "another click on the pair is past its limit"
        third = await reader.post("/v1/events", json=[click(user, item="i002"), click(user, item="i003")])
        assert third.status_code == 429, "2 clicks counted for the client (the first, then the dropped one)"


async def test_one_event_id_reused_by_other_users_is_counted_for_each_user(world: World):
    """Counted once per event id alone, one admitted id let every later click with that id through uncounted,
    whatever its user, while the workers apply each (user, id) once: a client could send any number of users'
    clicks under one id. They are counted per user and id, as the workers de-duplicate."""
    settings = await isolated_topics(
        world.settings.replace(
            clicks_per_client=2, clicks_per_user_item=0, click_window_s=HOUR, dedup_window_s=HOUR + 1
        )
    )
    users = [unique(f"u-same-id-{k}") for k in range(3)]
    async with reader_client(settings, KEY, address=unique("client-same-id")) as reader:
        body = [{**click(user), "event_id": "same"} for user in users]
        assert (await reader.post("/v1/events", json=body)).status_code == 413, "3 clicks alone pass the limit of 2"
        assert (await reader.post("/v1/events", json=body[:2])).status_code == 202
        assert (await reader.post("/v1/events", json=body[:2])).status_code == 202, "resent: counted before"
        assert (await reader.post("/v1/events", json=body[2:])).status_code == 429


async def test_a_client_past_its_click_limit_gets_429_and_nothing_of_the_request_is_published(world: World):
    settings = await isolated_topics(
        world.settings.replace(clicks_per_client=5, clicks_per_user_item=0, click_window_s=HOUR)
    )
    user, before = unique("u-client"), limited("client")
    answers = {}
    for n in (4, 5, 6):
        async with reader_client(settings, KEY, address=unique(f"client-{n}")) as reader:
            body = [view(user, ts=WORLD_TIME + n), *[click(user, ts=WORLD_TIME + 10 * n + k) for k in range(n)]]
            answers[n] = await reader.post("/v1/events", json=body)
            if n == 5:
                more = await reader.post("/v1/events", json=[click(user, ts=WORLD_TIME)])
                assert more.status_code == 429, "the limit holds across requests within the window"
                assert 0 < int(more.headers["retry-after"]) <= settings.reader.click_window_s
                assert (await reader.post("/v1/events", json=[view(user)])).status_code == 202, "views pass"
    # 6 clicks in one request: no window admits them, so not a 429 (which a client retries for ever) but a 413
    assert {n: a.status_code for n, a in answers.items()} == {4: 202, 5: 202, 6: 413}
    assert "send them in smaller requests" in answers[6].text and "retry-after" not in answers[6].headers
    assert limited("client") - before == 6 + 1
    events = await published_events(settings, at_least=5 + 6 + 1)
    assert len(events) == 5 + 6 + 1 and {e.ts for e in events if e.type == "view"} == {
        WORLD_TIME + 4,
        WORLD_TIME + 5,
        WORLD_TIME,
    }


async def test_views_alone_pass_for_a_client_whose_count_is_above_a_lowered_click_limit(world: World):
    """A client over its click limit is refused for its clicks, never for its views: views-only requests run the
    guard's script too (for their own limit), and a count above the limit (lowered since, or a replica with a lower
    one) once refused them with a 429 naming clicks."""
    settings = await isolated_topics(world.settings.replace(clicks_per_user_item=0, click_window_s=HOUR))
    user, address = unique("u-lowered"), unique("client-lowered")
    async with reader_client(settings.replace(clicks_per_client=5), KEY, address=address) as reader:
        clicks = [click(user, ts=WORLD_TIME + k) for k in range(5)]
        assert (await reader.post("/v1/events", json=clicks)).status_code == 202
    async with reader_client(settings.replace(clicks_per_client=3), KEY, address=address) as reader:
        assert (await reader.post("/v1/events", json=[view(user)])).status_code == 202
        assert (await reader.post("/v1/events", json=[click(user, ts=WORLD_TIME + 9)])).status_code == 429


async def test_views_past_the_per_user_item_limit_are_dropped_and_the_rest_published(world: World):
    """A view (every event that is not a click) of a served item is a negative row of the shared ranker and a view in
    its CTR: replayed with fresh ids, the workers' de-duplication kept them all. Past ``views_per_user_item`` (its
    default here) in a window they are dropped as clicks are: counted, and the rest of the request published."""
    settings = await isolated_topics(world.settings.replace(click_window_s=HOUR))
    limit = settings.reader.views_per_user_item
    users = {n: unique(f"u-views-{n}") for n in (limit - 1, limit, limit + 1)}
    before = limited("user_item", "views")
    async with reader_client(settings, KEY) as reader:
        for n, user in users.items():
            body = [*[view(user, ts=WORLD_TIME + k) for k in range(n)], click(user)]
            resp = await reader.post("/v1/events", json=body)
            assert resp.status_code == 202 and resp.json() == {
                "accepted": min(n, limit) + 1,
                "attributed": 0,
                "dropped": max(0, n - limit),
            }, resp.text
        user = users[limit]
        again = await reader.post("/v1/events", json=[view(user, ts=WORLD_TIME + 99)])
        assert again.json()["dropped"] == 1, "the limit holds across requests within the window"
        dislike = await reader.post("/v1/events", json=[{**view(user, ts=WORLD_TIME + 98), "type": "dislike"}])
        assert dislike.json()["dropped"] == 1, "a dislike is a negative row as a view is, and counts as one"
        other = await reader.post("/v1/events", json=[view(user, item="i002")])
        assert other.json()["dropped"] == 0, "per item"
    assert limited("user_item", "views") - before == 3
    events = await published_events(settings, at_least=3 * limit + 3)
    views = Counter(e.user_id for e in events if e.type == "view" and e.item_id == "i001")
    assert views == {users[limit - 1]: limit - 1, users[limit]: limit, users[limit + 1]: limit}
    assert Counter(e.user_id for e in events if e.type == "click") == Counter(users.values())


async def test_replayed_views_of_a_served_item_reach_the_ranker_at_most_the_limit(world: World):
    """The replay: a client holding the key reports the view of one item its page served again and again, each with
    fresh ids, and each went out with the served features, a negative training row pushing that item down for every
    user. Only ``views_per_user_item`` of them go out in a window."""
    settings = await isolated_topics(world.settings.replace(click_window_s=HOUR))
    limit, user = settings.reader.views_per_user_item, unique("u-replay")
    async with reader_client(settings, KEY) as reader:
        page = await feed(reader, user, limit=3)
        item, session = page["items"][0]["item_id"], page["session"]
        for replay in range(4):
            body = [view(user, item, WORLD_TIME + 10 * replay + k, context={"feed": session}) for k in range(limit)]
            resp = await reader.post("/v1/events", json=body)
            assert resp.json()["dropped"] == (0 if replay == 0 else limit), replay
    rows = [e for e in await published_events(settings, at_least=limit) if CONTEXT_KEY in (e.context or {})]
    assert len(rows) == limit and {e.item_id for e in rows} == {item}


async def test_a_resent_request_spends_no_view_limit_again(world: World):
    """Counted once per user and event id, as clicks are: a request resent after a 503 is admitted again whole."""
    settings = await isolated_topics(world.settings.replace(click_window_s=HOUR, dedup_window_s=HOUR + 1))
    limit, user = settings.reader.views_per_user_item, unique("u-view-resend")
    async with reader_client(settings, KEY) as reader:
        body = [view(user, ts=WORLD_TIME + k) for k in range(limit)]
        answers = [(await reader.post("/v1/events", json=body)).json() for _ in range(3)]
        assert answers == [{"accepted": limit, "attributed": 0, "dropped": 0}] * 3, "the same ids, counted once"
        other = await reader.post("/v1/events", json=[view(user, ts=WORLD_TIME + limit)])
        assert other.json()["dropped"] == 1, "a new view of the pair is past its limit"


def script_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_requests_views_are_decided_in_calls_of_views_per_call(own_redis: Settings):
    """A call blocks Redis for every feed, and 10,000 views in one outlived the round trip's 50 ms (then went out
    unguarded): VIEWS_PER_CALL views a call, and a pair's limit holds across two calls (its last view is the second
    call's at VIEWS_PER_CALL + 1)."""
    settings, r = own_redis.replace(click_window_s=HOUR), redis.Redis.from_url(own_redis.redis.url)
    limit = settings.reader.views_per_user_item
    async with reader_client(settings, KEY) as reader:
        assert (await reader.post("/v1/events", json=[view(unique("u-first"))])).status_code == 202  # script loaded
        for n in (VIEWS_PER_CALL - 1, VIEWS_PER_CALL, VIEWS_PER_CALL + 1):
            repeated = unique("u-repeated")
            body = [view(unique("u-once")) for _ in range(n - limit - 1)]
            body += [view(repeated, ts=WORLD_TIME + k) for k in range(limit + 1)]
            calls = script_calls(r)
            resp = await reader.post("/v1/events", json=body)
            assert (script_calls(r) - calls, resp.json()["dropped"]) == (-(-n // VIEWS_PER_CALL), 1), n
    r.close()


def lrange_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))


async def test_an_events_request_reads_each_session_once_and_only_its_last_pages(world: World):
    """Attribution (context.feed → the source the session served the item from): one LRANGE per distinct
    session, whatever the number of events naming it, reading only its last ATTRIBUTION_PAGES pages."""
    settings = await isolated_topics(world.settings.replace(views_per_user_item=0))  # 497 views of one item pass
    user, r = unique("u-attr"), world.redis()
    async with reader_client(settings, KEY) as reader:
        pages = [await feed(reader, user, limit=3)]
        for _ in range(ATTRIBUTION_PAGES):
            pages.append(await feed(reader, user, limit=3, cursor=pages[-1]["next_cursor"]))
        session = pages[0]["session"]
        # the first item of the 11th, 10th and 9th page from the end, then 497 more events on the 9th's
        shown = [pages[k]["items"][0] for k in (0, 1, 2)]
        events = [view(user, i["item_id"], WORLD_TIME + k, context={"feed": session}) for k, i in enumerate(shown)]
        events += [view(user, shown[2]["item_id"], WORLD_TIME + 10 + k, context={"feed": session}) for k in range(497)]
        calls = lrange_calls(r)
        resp = await reader.post("/v1/events", json=events)
        assert lrange_calls(r) - calls == 1
    assert resp.status_code == 202 and resp.json()["attributed"] == 2 + 497
    sources = {(e.item_id, (e.context or {}).get("source")) for e in await published_events(settings, len(events))}
    assert sources == {(shown[0]["item_id"], None), *((i["item_id"], i["source"]) for i in shown[1:])}


async def test_an_events_request_looks_up_at_most_attribution_sessions_sessions(world: World):
    cap, r = ATTRIBUTION_SESSIONS, world.redis()
    async with reader_client(await isolated_topics(world.settings), KEY) as reader:
        sessions = []
        for _ in range(cap + 1):
            user = unique("u-sessions")
            page = await feed(reader, user, limit=1)
            sessions.append((user, page["session"], page["items"][0]["item_id"]))
        for n in (cap - 1, cap, cap + 1):
            calls = lrange_calls(r)
            events = [view(u, i, WORLD_TIME + n, context={"feed": s}) for u, s, i in sessions[:n]]
            resp = await reader.post("/v1/events", json=events)
            assert (lrange_calls(r) - calls, resp.json()["attributed"]) == (min(n, cap), min(n, cap)), n


async def test_reads_cannot_fill_redis_with_scroll_sessions(world: World):
    """Ten times ``anonymous_sessions`` cursorless feeds for random ids leave that many sessions, the least
    recently used evicted; a known user keeps ``sessions_per_user``."""
    cap, run, r = 200, uuid.uuid4().hex[:8], world.redis()
    settings = await isolated_topics(world.settings.replace(anonymous_sessions=cap, sessions_per_user=8))

    def sessions(user: str) -> int:
        return sum(1 for _ in r.scan_iter(f"rs:user:{user}:feed:*", count=10_000))

    async with reader_client(settings, KEY) as reader:

        async def first_pages(users: range) -> list[str]:
            return [(await feed(reader, f"anon-{run}-{k}", limit=1))["next_cursor"] for k in users]

        cursors = await first_pages(range(cap - 1))
        assert sessions(f"anon-{run}-*") == cap - 1
        cursors += await first_pages(range(cap - 1, cap))
        assert sessions(f"anon-{run}-*") == cap
        cursors += await first_pages(range(cap, cap + 1))
        assert sessions(f"anon-{run}-*") == cap, "the least recently used session made room"
        assert (await reader.get(f"/v1/feed/anon-{run}-0", params={"cursor": cursors[0]})).status_code == 410
        assert (await reader.get(f"/v1/feed/anon-{run}-1", params={"cursor": cursors[1]})).status_code == 200
        await first_pages(range(cap + 1, 10 * cap))
        assert sessions(f"anon-{run}-*") == cap
        assert r.zcard("rs:sessions:anonymous") == cap

        known = unique("u-known")  # preferences make the id known: its sessions are its own, 8 at most
        assert (await reader.put(f"/v1/users/{known}/preferences", json={"categories": ["music"]})).status_code == 200
        mine = []
        for count in (7, 8, 9):
            while len(mine) < count:
                mine.append((await feed(reader, known, limit=1))["next_cursor"])
            assert sessions(known) == min(count, 8), count
        assert (await reader.get(f"/v1/feed/{known}", params={"cursor": mine[0]})).status_code == 410
        assert (await reader.get(f"/v1/feed/{known}", params={"cursor": mine[1]})).status_code == 200


async def test_a_session_begun_before_its_user_was_known_survives_anonymous_traffic(world: World):
    """A new id's first page is listed in the anonymous index; once the id is known (preferences here, a view in
    production) its pages are listed in its own. The anonymous entry stayed behind at its first page's time, so
    ``anonymous_sessions`` first pages of other ids later evicted the session of a user still scrolling: 410."""
    cap, run, r = 3, uuid.uuid4().hex[:8], world.redis()
    settings = await isolated_topics(world.settings.replace(anonymous_sessions=cap))
    async with reader_client(settings, KEY) as reader:
        user = unique("u-becomes-known")
        first = await feed(reader, user, limit=1)
        assert (await reader.put(f"/v1/users/{user}/preferences", json={"categories": ["music"]})).status_code == 200
        second = await reader.get(f"/v1/feed/{user}", params={"cursor": first["next_cursor"]})
        assert second.status_code == 200
        session = f"rs:user:{user}:feed:{first['session']}"
        assert r.zscore("rs:sessions:anonymous", session) is None and r.zscore(f"rs:user:{user}:sessions", session)
        for k in range(cap + 1):
            await feed(reader, f"anon-{run}-{k}", limit=1)
        third = await reader.get(f"/v1/feed/{user}", params={"cursor": second.json()["next_cursor"]})
        assert third.status_code == 200, third.text


@pytest.mark.parametrize("over", [-1, 0, 1], ids=["bound-1", "bound", "bound+1"])
async def test_a_feed_at_the_longest_session_ttl_records_its_session_expiring_and_listed(world: World, over: int):
    """``RECSTREAM_SESSION_TTL_S`` at its bound (a week) and one under: the page is not degraded and its session list
    expires that long after it, listed in its index. One past the bound is refused at start: a TTL whose ms past now
    leave 64 bits (1e17 s) was accepted, Redis refused its EXPIRE right after the page's RPUSH, and every page came
    degraded, each leaving a session list without expiry and in no index (never evicted)."""
    ttl = SESSION_TTL_MAX_S + over
    if over > 0:
        with pytest.raises(SettingsError, match="RECSTREAM_SESSION_TTL_S: Input should be less than or equal to"):
            world.settings.replace(session_ttl_s=ttl)
        return
    r, user = world.redis(), unique("u-ttl")
    async with reader_client(world.settings.replace(session_ttl_s=ttl), KEY) as reader:
        page = await feed(reader, user, limit=1)
    session = f"rs:user:{user}:feed:{page['session']}"
    assert page["next_cursor"] is not None and ttl - 60 <= r.ttl(session) <= ttl
    assert r.zscore("rs:sessions:anonymous", session) is not None


@contextlib.contextmanager
def clock_off_by(seconds: int) -> Iterator[None]:
    """This process's wall clock (``time.time``, ``time.time_ns``) ``seconds`` off, as on a host whose clock drifted."""
    now, now_ns = time.time, time.time_ns
    time.time, time.time_ns = (lambda: now() + seconds), (lambda: now_ns() + seconds * 10**9)
    try:
        yield
    finally:
        time.time, time.time_ns = now, now_ns


@pytest.mark.parametrize(("skew_s", "skewed"), [(-HOUR, 1), (HOUR, 0)], ids=["behind", "ahead"])
async def test_a_reader_with_a_skewed_clock_leaves_the_least_recently_used_session_to_evict(
    world: World, skew_s: int, skewed: int
):
    """Three first pages of anonymous ids, one after another, the ``skewed`` one from a reader whose clock is an hour
    off, with room for two: the first is the one evicted. Scored by each reader's clock, a reader behind listed its
    brand-new session as the oldest (evicted by the next first page, mid-scroll: 410), and one ahead kept its own
    over another reader's newer one."""
    run = uuid.uuid4().hex[:8]
    settings = await isolated_topics(world.settings.replace(anonymous_sessions=2))
    async with reader_client(settings, KEY) as reader, reader_client(settings, KEY) as other:
        cursors = []
        for k in range(3):
            with clock_off_by(skew_s if k == skewed else 0):
                page = await feed(other if k == skewed else reader, f"anon-skew-{run}-{k}", limit=1)
            cursors.append(page["next_cursor"])
        statuses = [
            (await reader.get(f"/v1/feed/anon-skew-{run}-{k}", params={"cursor": cursor})).status_code
            for k, cursor in enumerate(cursors)
        ]
    assert statuses == [410, 200, 200]
