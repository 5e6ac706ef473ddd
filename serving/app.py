"""The reader's HTTP app: ``create_app(settings)`` builds it, ``recstream serve`` runs it on uvicorn.

Routes (OpenAPI at ``/openapi.json``, docs at ``/docs``):

* ``GET /v1/feed/{user_id}?limit=&cursor=&seed=&category=&exclude=&filter=`` — the blended feed
  (serving/feed.py), infinite scroll through ``next_cursor``; ``seed`` reproduces the explore draws of a page;
  ``category``, ``exclude`` and ``filter`` restrict it (serving/filters.py);
* ``GET /v1/items/{item_id}/similar?limit=`` — the workers' precomputed neighbours;
* ``GET|PUT /v1/users/{user_id}/preferences`` — onboarding categories and "not interested";
* ``POST /v1/events`` — feedback events of the configured types (views, clicks, likes, ratings, dislikes, …:
  recstream/contracts/feedback.py), validated like the workers do and
  published to Kafka. Put the served item's ``source`` (or the feed's ``session`` as ``feed``)
  in ``context`` so clicks are attributable to the source that showed the item, and the feed's
  ``variant`` (an A/B test's arm, recstream/contracts/experiments.py) as the events' ``variant``;
* ``PUT|PATCH|DELETE /v1/items/{item_id}``, ``POST /v1/items``, ``PUT|DELETE /v1/users/{user_id}`` — the
  catalogue, users and erasure (serving/catalogue.py);
* ``GET /v1/stats`` — live figures as JSON; ``/healthz``, ``/readyz``, ``/metrics``;
* ``GET /explore`` — the feed explorer page (serving/explorer.py), a client of the routes above.

Each route calls the service (serving/service.py) and turns its errors (serving/errors.py) into
4xx/503 answers. Responses are encoded with orjson straight from dicts (the models in
serving/schemas.py document them); the request metrics are a pure ASGI middleware, and plainly
valid feed requests are answered by another one before FastAPI's routing (serving/fast_feed.py),
the route handling the rest. Write routes live on their own router and need ``X-API-Key`` (or
``Authorization: Bearer``): without ``settings.reader.api_key`` they refuse every write, unless
``settings.reader.open_writes`` says to accept writes without a key; read routes need the key too
when ``settings.reader.protect_reads``. A route with a body takes JSON only, capped before it is
parsed (serving/body.py). The policies: README.md, "Security and limits".
"""

from __future__ import annotations

import hmac
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel
from recstream.serving import explorer
from recstream.serving.body import CappedJsonRoute, max_body
from recstream.serving.cursor import CURSOR_PATTERN, Cursor
from recstream.serving.errors import (
    EventsRejected,
    KafkaUnavailable,
    NotFound,
    RedisUnavailable,
    SessionExpired,
    TooManyClicks,
    TooManyClicksInOneRequest,
)
from recstream.serving.fast_feed import FeedFastPath
from recstream.serving.feed_query import FEED_ROUTE, MAX_SEED, MIN_LIMIT, MIN_SEED, FeedQuery
from recstream.serving.filters import FeedFilter, FilterError
from recstream.serving.metrics import RequestMetrics
from recstream.serving.schemas import (
    EventsAccepted,
    FeedPage,
    Preferences,
    PreferencesSaved,
    Ready,
    SimilarItems,
    Stats,
)
from recstream.serving.service import SIMILAR_ROUTE, FeedService
from starlette.responses import Response

from recstream.contracts.events import ID_PATTERN, MAX_EVENTS_PER_MESSAGE, MAX_ID_LEN, MAX_MESSAGE_BYTES, Event
from recstream.contracts.settings import Settings

UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN, description="user id")]
ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN, description="item id")]


EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Event"},
                        "minItems": 1,
                        "maxItems": MAX_EVENTS_PER_MESSAGE,
                    },
                ]
            }
        }
    },
}
"""POST /v1/events parses its body itself (recstream.contracts.events.decode), so its schema is declared by hand."""
PREFERENCES_MAX_BYTES = 65_536
"""The largest preferences body: 32 categories and 256 ids of 64 characters take under 20 kB as JSON."""
NO_KEY = (
    "writes need an API key and this reader has none: set RECSTREAM_API_KEY (and send it as X-API-Key or "
    "Authorization: Bearer), or RECSTREAM_OPEN_WRITES=true to accept writes from anyone who reaches the reader"
)


class Problem(BaseModel):
    detail: str


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem} for code in codes}


def json_response(body: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def create_app(settings: Settings) -> FastAPI:
    """The app for these settings; the Redis client, snapshot loader and Kafka producer live in its lifespan."""
    service = FeedService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="recstream reader",
        version="1",
        summary="Blended, explainable, infinite feeds from Redis; impressions and clicks to Kafka.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 naming each bad field and why, without echoing the (possibly huge or hostile) input."""
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return json_response({"detail": errors}, 422)

    auth = _api_key_check(settings)
    # the limit's bound comes from the settings, so it sits in a default value, not in an annotation
    query = FeedQuery.from_settings(settings)
    open_writes = settings.reader.open_writes and settings.reader.api_key is None

    def guarded(protect: bool) -> dict[str, Any]:
        """A router's checks, in order: the key (a 401 says nothing about the request), then its query parameters."""
        keyed, refused = ([Depends(auth)], (400, 401)) if protect else ([], (400,))
        return {"dependencies": [*keyed, Depends(known_query)], "responses": _problems(*refused)}

    reads = APIRouter(route_class=CappedJsonRoute, **guarded(settings.reader.protect_reads))
    writes = APIRouter(route_class=CappedJsonRoute, **guarded(not open_writes))

    @reads.get(FEED_ROUTE, response_model=FeedPage, responses=_problems(400, 410), tags=["feed"])
    async def feed(  # its query parameters are feed_query.ROUTE_PARAMETERS; the fast path admits PARAMETERS
        user_id: UserId,
        limit: int = Query(query.default_limit, ge=MIN_LIMIT, le=query.max_limit),
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the last page")] = None,
        seed: Annotated[int | None, Query(ge=MIN_SEED, le=MAX_SEED, description="seed of the explore draws")] = None,
        category: Annotated[str | None, Query(description="only items in one of these categories: a,b")] = None,
        exclude: Annotated[str | None, Query(description="never these item ids: i1,i2")] = None,
        filter: Annotated[str | None, Query(description="conditions on item features: in_stock=true,price<20")] = None,
    ) -> Response:
        """A page of the user's blended feed; a cursor continues the session without repeating an item.

        ``category``, ``exclude`` and ``filter`` restrict the page (serving/filters.py); a filtered session's
        cursor continues it only under the same filter.
        """
        try:
            only = FeedFilter.parse(category, exclude, filter)
            body = await service.feed(user_id, limit, Cursor.parse(cursor) if cursor else None, seed, only)
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from None
        except SessionExpired as exc:
            raise HTTPException(410, str(exc)) from None
        return json_response(body)

    @reads.get(SIMILAR_ROUTE, response_model=SimilarItems, responses=_problems(404), tags=["items"])
    async def similar(
        item_id: ItemId,
        limit: int = Query(query.default_limit, ge=MIN_LIMIT, le=query.max_limit),  # a feed's bounds
    ) -> Response:
        """Item-to-item neighbours, best first (precomputed by the workers; the reader holds no index)."""
        try:
            return json_response(await service.similar(item_id, limit))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @reads.get("/v1/users/{user_id}/preferences", response_model=Preferences, responses=_problems(503), tags=["users"])
    async def get_preferences(user_id: UserId) -> Response:
        try:
            return json_response(await service.preferences(user_id))
        except RedisUnavailable:
            raise HTTPException(503, "Redis is unreachable; try again shortly") from None

    @reads.get("/v1/stats", response_model=Stats, tags=["ops"])
    async def stats() -> Response:
        """Live figures over the last few seconds (for the feed explorer page)."""
        return json_response(await service.live())

    @writes.put(  # 400: a body that is not JSON at all (FastAPI's parser), 422: JSON of the wrong shape
        "/v1/users/{user_id}/preferences",
        response_model=PreferencesSaved,
        responses=_problems(400, 413, 415, 503),
        tags=["users"],
        openapi_extra=max_body(PREFERENCES_MAX_BYTES),
    )
    async def put_preferences(user_id: UserId, preferences: Preferences) -> Response:
        """Replace onboarding categories and the "not interested" list (item ids or categories).

        Published as a user event (the workers build the initial vector from it) and written to Redis
        directly, so the very next feed honours it.
        """
        try:
            applied = await service.save_preferences(user_id, preferences.categories, preferences.not_interested)
        except KafkaUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        return json_response({"user_id": user_id, **preferences.model_dump(), "applied": applied})

    @writes.post(
        "/v1/events",
        response_model=EventsAccepted,
        status_code=202,
        responses=_problems(413, 415, 422, 429, 503),
        tags=["events"],
        openapi_extra={"requestBody": EVENTS_BODY, **max_body(MAX_MESSAGE_BYTES)},
    )
    async def post_events(request: Request) -> Response:
        """Report feedback of the configured types (``view``, ``click``, ``like``, ``rating`` with a ``value``,
        ``dislike``, …: README "Feedback types"): one event object or an array of them. An unknown type is a 422.

        Validated exactly as the workers validate (recstream.contracts.events), all or nothing, then published
        to Kafka; 202 once the broker acknowledged them. Include ``context.source`` (the item's
        ``source`` in the feed) or ``context.feed`` (the feed's ``session``; the reader looks the
        source up) so clicks are attributable per source, and the feed's ``variant`` as the events'
        ``variant`` while an experiment runs. An event without ``event_id`` gets one derived from its
        content, so resending a request after a 503 applies each event once. Clicks are limited per
        client (429 past the limit; 413 for a request that alone holds more) and per user per item (the extra ones
        ``dropped``).
        """
        client = request.client.host if request.client else "unknown"
        try:
            return json_response(await service.accept_events(await request.body(), client), 202)
        except EventsRejected as exc:
            raise HTTPException(422, str(exc)) from None
        except TooManyClicks as exc:
            raise HTTPException(429, str(exc), {"Retry-After": str(math.ceil(exc.retry_after_s))}) from None
        except TooManyClicksInOneRequest as exc:
            raise HTTPException(413, str(exc)) from None
        except KafkaUnavailable as exc:
            raise HTTPException(503, str(exc)) from None

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up (it answers even when Redis is not)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["ops"])
    async def readyz() -> Response:
        """Ready when Redis answers and a model version is present."""
        body = await service.ready()
        return json_response(body, 200 if body["redis"] and body["model_version"] else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(reads)
    app.include_router(writes)
    from recstream.serving.catalogue import catalogue_router  # here: it imports this module's helpers

    app.include_router(catalogue_router(service), **guarded(not open_writes))
    app.include_router(explorer.router)
    if not settings.reader.protect_reads:  # protected reads always take the route (it checks the key)
        route = next(r for r in reads.routes if isinstance(r, APIRoute) and r.path == FEED_ROUTE)
        app.add_middleware(FeedFastPath, service=service, route=route, query=query)
    app.add_middleware(RequestMetrics)  # added last: outermost, so it times the fast path too
    _publish_event_schema(app)
    return app


async def known_query(request: Request) -> None:
    """400 for a query parameter the route does not declare (``?limt=50`` served the default limit with a 200; a write
    route took ``?dry_run=true`` and wrote), or one given twice (``?exclude=i1&exclude=i2`` kept only i2: a list is
    one comma-separated value)."""
    declared = {field.alias for field in request.scope["route"].dependant.query_params}
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted(set(names) - declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "none"
        raise HTTPException(400, f"unknown query parameter {unknown[0]!r}; this route takes {takes}")
    if repeated := sorted(name for name, n in Counter(names).items() if n > 1):
        raise HTTPException(400, f"query parameter {repeated[0]!r} given more than once: send it once (a list: a,b)")


def _api_key_check(settings: Settings) -> Callable[..., Awaitable[None]]:
    """A dependency accepting ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, compared in constant time;
    without a key in the settings, one that refuses every request and says how to set one."""
    if settings.reader.api_key is None:

        async def refuse() -> None:
            raise HTTPException(401, NO_KEY)

        return refuse
    expected = settings.reader.api_key.get_secret_value().encode()
    header = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    # defaults, not Annotated: annotations are strings resolved in module scope, where these do not exist
    async def check(
        key: str | None = Security(header),
        token: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> None:
        given = key or (token.credentials if token else None)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, "missing or wrong API key (X-API-Key or Authorization: Bearer)")

    return check


def _publish_event_schema(app: FastAPI) -> None:
    """Put the event contract's JSON schema into the OpenAPI components the events route refers to."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Event"] = Event.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
