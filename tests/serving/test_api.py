"""The HTTP contract: precise 4xx for bad input, the API key on writes, readiness, and schema-driven fuzzing."""

from __future__ import annotations

import asyncio
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.conftest import KEY, LiveReader, World, isolated_topics, reader_client

pytestmark = pytest.mark.integration
FUZZ_EXAMPLES = 25


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/v1/feed/u%201", None, 422, "should match pattern"),
        ("GET", "/v1/feed/" + "u" * 65, None, 422, "at most 64 characters"),
        ("GET", "/v1/feed/u1?limit=0", None, 422, "greater than or equal to 1"),
        ("GET", "/v1/feed/u1?limit=101", None, 422, "less than or equal to 100"),
        ("GET", "/v1/feed/u1?limit=ten", None, 422, "valid integer"),
        ("GET", "/v1/feed/u1?cursor=page-two", None, 422, "should match pattern"),
        ("GET", "/v1/feed/u1?cursor=0123456789abcdef.3", None, 410, "names no live session"),
        ("GET", "/v1/feed/u1?seed=-1", None, 422, "greater than or equal to 0"),
        ("GET", "/v1/feed/u1?limt=50", None, 400, "unknown query parameter 'limt'"),  # was the default limit, 200
        ("GET", "/v1/feed/u1?limit=5&category=news&cursr=x", None, 400, "unknown query parameter 'cursr'"),
        ("GET", "/v1/items/i001/similar?limt=5", None, 400, "this route takes limit"),
        ("GET", "/v1/stats?since=1", None, 400, "unknown query parameter 'since'; this route takes none"),
        ("GET", "/v1/feed/u1?exclude=i1&exclude=i2", None, 400, "'exclude' given more than once"),  # kept i2 only
        ("GET", "/v1/feed/u1?limit=3&limit=2", None, 400, "'limit' given more than once"),
        ("POST", "/v1/events?dry_run=1", b"[]", 400, "unknown query parameter 'dry_run'"),  # it published, 202
        ("DELETE", "/v1/users/u9?dry_run=true", None, 400, "unknown query parameter 'dry_run'"),  # it erased, 202
        ("PUT", "/v1/items/i1?x=1", b'{"categories": ["a"]}', 400, "unknown query parameter 'x'"),
        ("PUT", "/v1/users/u1/preferences?x=1", b"{}", 400, "unknown query parameter 'x'"),
        ("GET", "/v1/feed/u1?filter=price<" + "1" * 33, None, 400, "longer than 32 characters"),  # "not a number"
        ("GET", "/v1/items/a%3Bb/similar", None, 422, "should match pattern"),
        ("GET", "/v1/items/i001/similar?limit=1000", None, 422, "less than or equal to 100"),
        ("POST", "/v1/events", b"{oops", 422, "json: invalid JSON"),
        ("POST", "/v1/events", b"[]", 422, "no events"),
        (
            "POST",
            "/v1/events",
            b'{"type":"share","user_id":"u","item_id":"i","ts":1700000000000}',
            422,
            "type: unknown feedback type 'share'",
        ),
        (
            "POST",
            "/v1/events",
            b'{"type":"view","user_id":"u","item_id":"i","ts":9000000000000}',
            422,
            "more than a day in the future",
        ),
        ("POST", "/v1/events", b"[" + b"1," * 600_000 + b"1]", 413, "exceeds 1000000"),
        ("PUT", "/v1/users/u1/preferences", b'{"categories": ["a b"]}', 422, "should match pattern"),
        ("PUT", "/v1/users/u1/preferences", b'{"colour": "red"}', 422, "Extra inputs are not permitted"),
    ],
)
async def test_bad_requests_get_a_precise_4xx(world: World, method, path, body, status, says):
    async with reader_client(await isolated_topics(world.settings), KEY) as reader:
        resp = await reader.request(method, path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert says in resp.text


async def test_writes_need_an_api_key_unless_explicitly_opened(world: World):
    """No key set: every write is refused with a 401 saying how to set one, unless open_writes; a key, once set,
    is needed whatever open_writes says."""
    base = await isolated_topics(world.settings.replace(api_key=None))
    event = {"type": "view", "user_id": "u-open", "item_id": "i001", "ts": 1_700_000_000_000}
    assert base.reader.api_key is None and base.reader.open_writes is False
    async with reader_client(base) as reader:
        for resp in (
            await reader.post("/v1/events", json=event),
            await reader.put("/v1/users/u-open/preferences", json={}),
        ):
            assert resp.status_code == 401 and "set RECSTREAM_API_KEY" in resp.json()["detail"], resp.text
        assert (await reader.get("/v1/feed/u-open")).status_code == 200, "reads stay open"
    async with reader_client(base.replace(open_writes=True)) as reader:
        assert (await reader.post("/v1/events", json=event)).status_code == 202
        assert (await reader.put("/v1/users/u-open/preferences", json={})).status_code == 200
    async with reader_client(base.replace(open_writes=True, api_key=SecretStr("s3cret"))) as reader:
        assert (await reader.post("/v1/events", json=event)).status_code == 401


async def test_writes_need_the_api_key_when_one_is_set_and_reads_only_when_asked(world: World):
    base = await isolated_topics(world.settings)
    event = {"type": "view", "user_id": "u-key", "item_id": "i001", "ts": 1_700_000_000_000}
    async with reader_client(base.replace(api_key=SecretStr("s3cret"))) as reader:
        assert (await reader.post("/v1/events", json=event)).status_code == 401
        assert (await reader.post("/v1/events", json=event, headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await reader.post("/v1/events", json=event, headers={"X-API-Key": "s3cret"})).status_code == 202
        bearer = {"Authorization": "Bearer s3cret"}
        assert (await reader.put("/v1/users/u-key/preferences", json={}, headers=bearer)).status_code == 200
        assert (await reader.put("/v1/users/u-key/preferences", json={})).status_code == 401
        assert (await reader.get("/v1/feed/u-key")).status_code == 200
    async with reader_client(base.replace(api_key=SecretStr("s3cret"), protect_reads=True)) as reader:
        assert (await reader.get("/v1/feed/u-key")).status_code == 401
        assert (await reader.get("/v1/feed/u-key?limt=1")).status_code == 401, "the key first: a 400 listed the route"
        assert (await reader.get("/v1/feed/u-key", headers={"X-API-Key": "s3cret"})).status_code == 200
        assert (await reader.get("/healthz")).status_code == 200, "probes stay open"


async def test_every_route_in_the_schema_needs_the_key_when_protected_except_probes(isolated_settings):
    """Enumerated from the app's own OpenAPI schema, so a write route added later cannot forget the key;
    with ``protect_reads`` every read route needs it too, only the ``ops`` probes and metrics stay open."""
    base = isolated_settings.replace(api_key=SecretStr("s3cret"))
    for protect_reads in (False, True):
        async with reader_client(base.replace(protect_reads=protect_reads)) as reader:
            paths = reader.app.openapi()["paths"]
            wanted = [
                (method.upper(), re.sub(r"\{[^}]+\}", "u1", path))
                for path, operations in paths.items()
                for method, operation in operations.items()
                if "ops" not in operation.get("tags", []) and (protect_reads or method != "get")
            ]
            assert len(wanted) >= (4 if protect_reads else 2), wanted
            json = {"content-type": "application/json"}
            answers = {(m, p): (await reader.request(m, p, content=b"{}", headers=json)).status_code for m, p in wanted}
        assert answers == dict.fromkeys(wanted, 401)


async def test_readiness_needs_redis_and_a_model_version(isolated_settings):
    async with reader_client(isolated_settings) as reader:
        not_ready = await reader.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["redis"] is True
        assert not_ready.json()["model_version"] is None
        assert (await reader.get("/healthz")).status_code == 200


def test_the_openapi_schema_is_valid_and_fuzzing_finds_no_server_error(world: World):
    """Schemathesis, positive and negative inputs for every operation, against a reader on a real socket.

    Its writes go to topics no worker reads, so the fuzzed events never reach the shared world; they carry
    the world's key (a request without it is a 401, which says nothing about the input).
    """
    with LiveReader(asyncio.run(isolated_topics(world.settings))) as live:
        # 413 (a body over the size cap, e.g. more than 10,000 events) is a rejection too
        rejections = ["400", "404", "413", "422"]
        config = schemathesis.Config.from_dict(
            {"checks": {"negative_data_rejection": {"expected-statuses": rejections}}}
        )
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=config)
        schema.validate()
        checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                extra = [negative_data_rejection] if mode is GenerationMode.NEGATIVE else []

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=FUZZ_EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case: schemathesis.Case) -> None:
                    case.call_and_validate(base_url=live.url, headers=KEY, checks=checks + extra)  # noqa: B023

                try:
                    fuzz()
                except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
                    assert mode is GenerationMode.NEGATIVE
