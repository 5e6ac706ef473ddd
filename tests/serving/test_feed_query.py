"""The feed route and its fast path admit by the same rules (serving/feed_query.py), at every bound."""

from __future__ import annotations

import pytest
from recstream.serving.app import create_app
from recstream.serving.cursor import CURSOR_PATTERN
from recstream.serving.feed_query import FEED_ROUTE, MAX_SEED, MIN_LIMIT, MIN_SEED, ROUTE_PARAMETERS, FeedQuery

from recstream.contracts.events import ID_PATTERN, MAX_ID_LEN
from recstream.contracts.settings import load_settings

MAX_LIMIT = 50
QUERY = FeedQuery.from_settings(load_settings(feed_max_limit=MAX_LIMIT))


def test_the_documented_bounds():
    """The tests below use the constants on both sides; these are the values README and the schema promise."""
    assert (MIN_LIMIT, MIN_SEED, MAX_SEED) == (1, 0, 2**63 - 1)


def test_the_route_declares_the_rules_the_fast_path_admits_by():
    parameters = create_app(load_settings(feed_max_limit=MAX_LIMIT)).openapi()["paths"][FEED_ROUTE]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters}
    assert list(schemas) == ["user_id", *ROUTE_PARAMETERS]
    user, limit, cursor, seed, *filters = schemas.values()
    assert (user["minLength"], user["maxLength"], user["pattern"]) == (1, MAX_ID_LEN, ID_PATTERN)
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (MIN_LIMIT, MAX_LIMIT, QUERY.default_limit)
    assert cursor["anyOf"][0]["pattern"] == CURSOR_PATTERN
    assert (seed["anyOf"][0]["minimum"], seed["anyOf"][0]["maximum"]) == (MIN_SEED, MAX_SEED)
    assert [f["anyOf"][0]["type"] for f in filters] == ["string"] * 3, "checked by serving/filters.py: a 400"


@pytest.mark.parametrize(
    ("query_string", "admitted"),
    [
        (b"cursor=0123456789abcdef.1", True),
        (b"cursor=0123456789abcdef.1.00ff00ff", False),
        (b"category=news", False),
        (b"exclude=i1", False),
        (b"filter=a%3D1", False),
    ],
)
def test_the_fast_path_leaves_filters_and_filtered_sessions_to_the_route(query_string, admitted):
    assert (QUERY.parse("/v1/feed/u1", query_string) is not None) == admitted


@pytest.mark.parametrize(
    ("query_string", "admitted"),
    [
        (f"limit={MIN_LIMIT - 1}", None),
        (f"limit={MIN_LIMIT}", MIN_LIMIT),
        (f"limit={MIN_LIMIT + 1}", MIN_LIMIT + 1),
        (f"limit={MAX_LIMIT - 1}", MAX_LIMIT - 1),
        (f"limit={MAX_LIMIT}", MAX_LIMIT),
        (f"limit={MAX_LIMIT + 1}", None),
        ("limit=+5", None),
        (f"seed={MIN_SEED - 1}", None),
        (f"seed={MIN_SEED}", MIN_SEED),
        (f"seed={MAX_SEED - 1}", MAX_SEED - 1),
        (f"seed={MAX_SEED}", MAX_SEED),
        (f"seed={MAX_SEED + 1}", None),
        (f"seed=0{MAX_SEED}", None),
    ],
)
def test_the_fast_path_admits_limits_and_seeds_exactly_within_the_bounds(query_string, admitted):
    call = QUERY.parse("/v1/feed/u1", query_string.encode())
    name = query_string.split("=")[0]
    assert (None if call is None else call[1 if name == "limit" else 3]) == admitted


@pytest.mark.parametrize("length", [MAX_ID_LEN - 1, MAX_ID_LEN, MAX_ID_LEN + 1])
def test_the_fast_path_admits_user_ids_up_to_the_contracts_length(length):
    call = QUERY.parse("/v1/feed/" + "u" * length, b"")
    assert (call is not None) == (length <= MAX_ID_LEN)
