"""The retry rules of both clients, against a scripted transport (httpx.MockTransport: the client's own logic,
no Kafka or Redis stood in for). What reaches the real reader is in test_live.py."""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from recstream.client import AsyncClient, Client, FeedPage, Ready, RecstreamError
from recstream.client.retry import MAX_RETRIES, Backoff
from tests.client.conftest import NOW_MS

PAGE = {
    "user_id": "u1",
    "items": [{"item_id": "i1", "source": "popular", "reason": "popular now", "categories": ["news"]}],
    "next_cursor": None,
    "session": "0123456789abcdef",
    "model_version": "v1",
    "warm": False,
    "degraded": False,
    "seed": 7,
    "variant": None,
}
KINDS = ["sync", "async"]


class Script:
    """A reader that answers from a script, the last answer repeated (a fresh copy each time, as a client
    consumes what it gets); an exception class is raised instead."""

    def __init__(self, *answers: httpx.Response | type[Exception]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)  # type: ignore[call-arg]
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def run(kind: str, script: Script, use: Callable[[Any], Any], **options: Any) -> Any:
    """``use(client)`` on a client of this kind whose requests the script answers."""
    options = {"backoff_s": 0.001, "transport": httpx.MockTransport(script)} | options
    if kind == "sync":
        with Client("http://reader", **options) as client:
            return use(client)

    async def in_loop() -> Any:
        async with AsyncClient("http://reader", **options) as client:
            return await use(client)

    return asyncio.run(in_loop())


def problem(status: int, detail: object = "refused", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "failure",
    [
        problem(429),
        problem(502),
        problem(503, "Kafka did not acknowledge the write"),
        problem(504),
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
    ids=str,
)
def test_transient_failures_are_retried_until_an_answer(kind, failure):
    script = Script(failure, failure, httpx.Response(200, json=PAGE))
    page = run(kind, script, lambda c: c.feed("u1", limit=1))
    assert isinstance(page, FeedPage) and page.items[0].item_id == "i1"
    assert len(script.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("failures", "answered"), [(1, True), (2, True), (3, False)])
def test_retries_stop_after_the_configured_number(kind, failures, answered):
    """retries=2: three attempts in all, so two failures still end in the answer and three do not."""
    script = Script(*[problem(503, "Kafka did not acknowledge the write")] * failures, httpx.Response(200, json=PAGE))
    if answered:
        assert run(kind, script, lambda c: c.feed("u1"), retries=2).user_id == "u1"
    else:
        with pytest.raises(RecstreamError) as caught:
            run(kind, script, lambda c: c.feed("u1"), retries=2)
        assert (caught.value.status, caught.value.detail) == (503, "Kafka did not acknowledge the write")
    assert len(script.requests) == min(failures + 1, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 401, 404, 409, 410, 413, 422, 500])
def test_other_errors_are_raised_at_once_with_the_readers_problem_detail(kind, status):
    detail = [{"loc": ["query", "limit"], "msg": "too big", "type": "less_than_equal"}] if status == 422 else "no"
    script = Script(problem(status, detail))
    with pytest.raises(RecstreamError) as caught:
        run(kind, script, lambda c: c.feed("u1"))
    assert (caught.value.status, caught.value.detail) == (status, detail)
    assert len(script.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_reader_that_never_answers_raises_a_recstream_error_without_status(kind):
    script = Script(httpx.ConnectError)
    with pytest.raises(RecstreamError) as caught:
        run(kind, script, lambda c: c.stats(), retries=1)
    assert caught.value.status is None and isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(script.requests) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_is_waited_and_one_longer_than_the_cap_is_not(kind):
    script = Script(problem(429, **{"Retry-After": "1"}), httpx.Response(200, json=PAGE))
    started = time.monotonic()
    run(kind, script, lambda c: c.feed("u1"))
    assert time.monotonic() - started >= 1.0 and len(script.requests) == 2

    script = Script(problem(429, **{"Retry-After": "1"}), httpx.Response(200, json=PAGE))
    with pytest.raises(RecstreamError) as caught:
        run(kind, script, lambda c: c.feed("u1"), max_backoff_s=0.5)
    assert (caught.value.status, caught.value.retry_after_s, len(script.requests)) == (429, 1.0, 1)


def test_backoff_doubles_up_to_its_cap_with_full_jitter():
    backoff = Backoff(retries=10, base_s=0.1, max_s=1.0, rng=random.Random(3))
    failure = httpx.Response(503)
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]):
        waits = [backoff.wait(attempt, failure) for _ in range(2000)]
        assert 0 <= min(waits) < 0.05 * ceiling and 0.95 * ceiling < max(waits) <= ceiling
        assert sum(waits) / len(waits) == pytest.approx(ceiling / 2, rel=0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_retried_post_sends_the_same_event_ids(kind):
    script = Script(httpx.ReadTimeout, httpx.Response(202, json={"accepted": 2, "attributed": 0, "dropped": 0}))
    events = [
        {"type": "view", "user_id": "u1", "item_id": "i1", "ts": NOW_MS},
        {"type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW_MS},
    ]
    accepted = run(kind, script, lambda c: c.send_events(events))
    assert (accepted.accepted, len(script.requests)) == (2, 2)
    first, second = (orjson.loads(r.content) for r in script.requests)
    assert first == second and all(e["event_id"] for e in first)


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_key_goes_in_x_api_key_and_readiness_answers_503_without_retrying(kind):
    not_ready = httpx.Response(503, json={"redis": True, "model_version": None, "snapshot_loaded": False})
    script = Script(not_ready)
    assert run(kind, script, lambda c: c.ready(), api_key="s3cret") == Ready(
        redis=True, model_version=None, snapshot_loaded=False
    )
    assert len(script.requests) == 1 and script.requests[0].headers["X-API-Key"] == "s3cret"
    script = Script(not_ready)
    run(kind, script, lambda c: c.ready())
    assert "X-API-Key" not in script.requests[0].headers


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_answers_how_many_clicks_the_reader_dropped(kind):
    """The summed answer rebuilt ``accepted`` and ``attributed`` only, so ``dropped`` (clicks over the reader's
    limit, README) was 0 whatever the reader said."""
    script = Script(httpx.Response(202, json={"accepted": 2, "attributed": 0, "dropped": 2}))
    clicks = [{"type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW_MS}] * 4
    assert run(kind, script, lambda c: c.send_events(clicks)).dropped == 2


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_that_is_not_the_routes_model_is_a_recstream_error_with_its_status(kind):
    """A 2xx that is not JSON (a proxy's page) raised pydantic's ValidationError, not the client's one error type."""
    script = Script(httpx.Response(200, text="<html>gateway</html>"))
    with pytest.raises(RecstreamError) as caught:
        run(kind, script, lambda c: c.stats())
    assert caught.value.status == 200 and "not a Stats" in str(caught.value.detail) and "gateway" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_after_of_other_digits_is_no_wait_asked_not_a_crash(kind):
    """``Retry-After: ²`` passed str.isdigit() and then float() raised ValueError out of the client."""
    superscript = httpx.Response(503, headers=[(b"retry-after", "²".encode("latin-1"))])  # as a header's bytes
    script = Script(superscript, httpx.Response(202, json={"accepted": 1, "attributed": 0}))
    view = {"type": "view", "user_id": "u1", "item_id": "i1", "ts": NOW_MS}
    assert run(kind, script, lambda c: c.send_events([view])).accepted == 1 and len(script.requests) == 2


@pytest.mark.parametrize(
    "options",
    [{"base_url": "localhost:8080"}, {"base_url": "ftp://reader"}, {"backoff_s": -1.0}, {"retries": -1},
     {"timeout_s": 0.0}, {"max_backoff_s": math.inf}],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_a_client_refuses_options_it_cannot_work_with_when_made(client, options):
    """A base URL without a scheme raised httpx.UnsupportedProtocol at the first request, a negative back-off
    ValueError from time.sleep at the first retry: now both are refused by the constructor, naming the option."""
    with pytest.raises(ValueError, match=r"base_url|back-off|timeout_s|retries"):
        client(**({"base_url": "http://reader"} | options))


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (" s3cret", "api_key has leading or trailing whitespace"),
        ("s3cret\n", "api_key has leading or trailing whitespace"),
        ("s3cr\x00t", "api_key: character 5 cannot go in an HTTP header"),
        ("s3cré", "api_key: character 5 cannot go in an HTTP header"),
        ("s3\ncret", "api_key: character 3 cannot go in an HTTP header"),
    ],
)
@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_an_api_key_no_header_can_carry_is_refused_when_the_client_is_made_without_echoing_it(client, key, says):
    """Every call raised httpx.LocalProtocolError (a non-ASCII key: UnicodeEncodeError) with the key in its message."""
    with pytest.raises(ValueError, match=says) as caught:
        client("http://reader", api_key=key)
    assert "s3cr" not in str(caught.value)


@pytest.mark.parametrize("key", ["s3cret", "s3 cr\tet", "!~"])
def test_an_api_key_of_printable_ascii_with_spaces_or_tabs_inside_is_sent(key):
    """Against the real wire: h11 checks a header value only when it writes the request (MockTransport never does)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with Client(url, api_key=key, retries=0, timeout_s=0.5) as client, pytest.raises(RecstreamError) as caught:
            client.stats()  # the request goes out; nobody answers
        connection, _ = listener.accept()
        with connection:
            head = connection.recv(65536)
    assert caught.value.status is None and "x-api-key: " + key in head.decode("ascii").lower().replace("\r", "")


@pytest.mark.parametrize(
    ("retries", "accepted"), [(MAX_RETRIES - 1, True), (MAX_RETRIES, True), (MAX_RETRIES + 1, False)]
)
def test_retries_are_bounded_and_the_last_waits_within_the_cap(retries: int, accepted: bool):
    """Nothing bounded ``retries``, and past attempt 1023 ``base_s * 2**attempt`` raised OverflowError."""
    if not accepted:
        with pytest.raises(ValueError, match=f"retries must be from 0 to {MAX_RETRIES}, got {retries}"):
            Backoff(retries=retries)
        return
    backoff = Backoff(retries=retries, base_s=1e300, max_s=2.0, rng=random.Random(1))  # base · 2**k overflows a float
    assert 0 <= backoff.wait(retries - 1, httpx.Response(503)) <= 2.0
    with pytest.raises(RecstreamError):
        backoff.wait(retries, httpx.Response(503))
