"""The catalogue and user routes: items and users written over HTTP, and a user's erasure.

* ``PUT /v1/items/{item_id}`` — the whole item (fields left out take their defaults);
* ``PATCH /v1/items/{item_id}`` — only the given fields, merged into the item as the workers last
  applied it (404 for an item they never applied); hiding is ``{"available": false}``;
* ``DELETE /v1/items/{item_id}`` — an ``op: remove`` item record;
* ``POST /v1/items`` — many items as JSONL (``application/x-ndjson``) or CSV (``text/csv``, columns in
  recstream/contracts/catalogue.py), at most ``settings.reader.bulk_max_items`` rows and BULK_BYTES_PER_ITEM
  bytes per allowed row; valid rows are published, the others reported with their line numbers;
* ``PUT /v1/users/{user_id}`` — the user's attributes (their segment follows);
* ``DELETE /v1/users/{user_id}`` — erasure (serving/catalogue_service.py, recstream/store/erasure.py).

Every route answers 202 once the broker acknowledged the write (503 when it did not); items and
users then reach Redis through the workers, as any producer's. serving/app.py includes the router
behind the same API key as its other writes; bodies are read with its size cap before anything
parses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from recstream.serving.app import ItemId, UserId, _problems, json_response
from recstream.serving.body import max_body, read_capped, require_json
from recstream.serving.catalogue_service import Catalogue, TooManyItems
from recstream.serving.errors import EventsRejected, KafkaUnavailable, NotFound, RedisUnavailable
from recstream.serving.service import FeedService
from starlette.responses import Response

from recstream.contracts.catalogue import BULK_BYTES_PER_ITEM, Format
from recstream.contracts.events import Attributes, Categories, Features, ItemEvent, Timestamp, UserEvent

ITEM_MAX_BYTES = 65_536
"""The largest single-item or user body: 32 categories and 64 features of 64-character names take under 10 kB."""
MEDIA_TYPES: dict[str, Format] = {"application/x-ndjson": "jsonl", "text/csv": "csv"}


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Item(Body):
    """An item as a client writes it: PUT takes it whole, PATCH only the fields it names."""

    categories: Categories = []
    features: Features = {}
    available: bool = True
    created_ts: Timestamp | None = None


class User(Body):
    """A user's attributes; ``age`` and ``gender`` (M/F) make the segment, the rest is kept as given."""

    attributes: Attributes = {}


class LineRejected(BaseModel):
    line: int
    reason: str


class ItemsAccepted(BaseModel):
    accepted: int
    rejected: list[LineRejected]


class UserErased(BaseModel):
    user_id: str
    removed: int


def _body(model: type[Body]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads and validates its body itself (to cap it first), with its cap."""
    schema = {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": schema, **max_body(ITEM_MAX_BYTES)}


BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            media_type: {"schema": {"type": "string", "description": f"{fmt.upper()}, one item a line"}}
            for media_type, fmt in MEDIA_TYPES.items()
        },
    }
}


def catalogue_router(service: FeedService) -> APIRouter:
    """The routes above over ``service``'s publisher and Redis connections."""
    catalogue = Catalogue(service)
    bulk_max_bytes = catalogue.max_items * BULK_BYTES_PER_ITEM
    router = APIRouter(tags=["catalogue"])
    # a 422 of a typed body is FastAPI's own list of fields (the app's handler), as the path parameters' is
    written = {"status_code": 202, "responses": _problems(413, 415, 503)}

    @router.put("/v1/items/{item_id}", response_model=ItemEvent, openapi_extra=_body(Item), **written)
    async def put_item(item_id: ItemId, request: Request) -> Response:
        """Create or replace an item (published as ``op: update``; the workers treat new and update alike)."""
        item = await _read(request, Item)
        with _refusals():
            return _accepted(await catalogue.put_item(item_id, item.model_dump()))

    @router.patch(
        "/v1/items/{item_id}",
        response_model=ItemEvent,
        openapi_extra=_body(Item),
        status_code=202,
        responses=_problems(404, 413, 415, 503),
    )
    async def patch_item(item_id: ItemId, request: Request) -> Response:
        """Change only the given fields (``{"available": false}`` hides the item); a given field replaces its
        value whole (``features`` too). Merged into the item as the workers last applied it: 404 if never."""
        item = await _read(request, Item)
        with _refusals():
            return _accepted(await catalogue.patch_item(item_id, item.model_dump(include=item.model_fields_set)))

    @router.delete("/v1/items/{item_id}", response_model=ItemEvent, status_code=202, responses=_problems(503))
    async def delete_item(item_id: ItemId) -> Response:
        """Remove an item from every list (``op: remove``); the workers keep its counters."""
        with _refusals():
            return _accepted(await catalogue.remove_item(item_id))

    @router.post(
        "/v1/items",
        response_model=ItemsAccepted,
        openapi_extra={**BULK_BODY, **max_body(bulk_max_bytes)},
        status_code=202,
        responses=_problems(413, 415, 422, 503),
    )
    async def post_items(request: Request) -> Response:
        """Many items, as JSONL or CSV (columns ``item_id``, ``categories`` separated by ``|``, ``available``,
        ``created_ts``, a ``f_<name>`` column per feature). Valid rows are published; ``rejected`` names the
        others by line. 413 past the item or byte limit, 422 when no row is valid: nothing is published then."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            raise HTTPException(415, f"Content-Type must be one of {', '.join(MEDIA_TYPES)}, got {media_type!r}")
        body = await read_capped(request, bulk_max_bytes)
        with _refusals():
            return _accepted(await catalogue.put_items(body, MEDIA_TYPES[media_type]))

    @router.put("/v1/users/{user_id}", response_model=UserEvent, openapi_extra=_body(User), **written)
    async def put_user(user_id: UserId, request: Request) -> Response:
        """Replace the user's attributes (their segment is derived from ``age`` and ``gender``)."""
        user = await _read(request, User)
        with _refusals():
            return _accepted(await catalogue.put_user(user_id, user.attributes))

    @router.delete("/v1/users/{user_id}", response_model=UserErased, status_code=202, responses=_problems(503))
    async def delete_user(user_id: UserId) -> Response:
        """Erase the user: recorded on the log (so ``recstream rebuild`` and ``train`` leave their events out),
        then every Redis key of the user deleted at once. Aggregates keep the user's share until the next
        rebuild (README, "Use it in your product"). Safe to repeat; a 503 says to."""
        with _refusals():
            return _accepted({"user_id": user_id, "removed": await catalogue.erase_user(user_id)})

    return router


async def _read(request: Request, model: type[Body]) -> Any:
    """The capped JSON body validated by ``model``; a 422 like FastAPI's own (serving/app.py formats it)."""
    require_json(request)
    body = await read_capped(request, ITEM_MAX_BYTES)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _accepted(written: BaseModel | dict) -> Response:
    return json_response(written.model_dump() if isinstance(written, BaseModel) else written, 202)


@contextmanager
def _refusals() -> Iterator[None]:
    """The service's errors as their HTTP answers."""
    try:
        yield
    except TooManyItems as exc:
        raise HTTPException(413, str(exc)) from None
    except EventsRejected as exc:
        raise HTTPException(422, str(exc)) from None
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except KafkaUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    except RedisUnavailable as exc:
        raise HTTPException(503, f"Redis is unreachable ({exc.cause}); try again shortly") from None
