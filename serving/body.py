"""Request bodies: every route that takes one reads it here, JSON only and capped before anything parses it.

Why a route class: FastAPI reads a route's body itself (a pydantic body parameter reads it whole, of
any size) before any dependency runs, so a check in a dependency or in the route comes too late; a
PUT of 150 MB once took the reader to 527 MB of memory. :class:`CappedJsonRoute` wraps the route's
handler: it refuses a Content-Type other than JSON (415: a cross-site form or ``text/plain`` POST
cannot pass) and a compressed body (415), refuses a declared length over the cap without reading a
byte, reads at most the cap (413 past it, also without a declared length), then hands the route the
bytes it read. A write
route declares its cap in its OpenAPI operation as ``x-max-body-bytes``, so clients can read it
too; a route that takes a body without one fails when the app is built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Message, Receive

MAX_BODY = "x-max-body-bytes"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON = "application/json"


def max_body(cap: int) -> dict[str, Any]:
    """The ``openapi_extra`` that declares a route's body cap."""
    return {MAX_BODY: cap}


class CappedJsonRoute(APIRoute):
    """A route whose body, if it takes one, is JSON of at most its declared ``x-max-body-bytes``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.max_body: int | None = (kwargs.get("openapi_extra") or {}).get(MAX_BODY)  # the base class reads it
        super().__init__(path, endpoint, **kwargs)
        if self.max_body is None and self.methods & BODY_METHODS:
            raise ValueError(f"{sorted(self.methods)} {path} takes a body: declare its cap with max_body()")

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        cap = self.max_body
        if cap is None:
            return handler

        async def capped(request: Request) -> Response:
            require_json(request)
            body = await read_capped(request, cap)
            return await handler(Request(request.scope, _replay(body, request.receive)))

        return capped


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != JSON:
        raise HTTPException(415, f"Content-Type must be {JSON}, got {media_type or 'none'}")


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, refused with 413 past ``cap`` bytes before it is all in memory, and with 415 when it is compressed
    (the reader decodes no ``Content-Encoding``: a gzip body read as JSON was refused as invalid UTF-8, 422)."""
    codings = [c.strip().lower() for line in request.headers.getlist("content-encoding") for c in line.split(",")]
    if encoded := [c for c in codings if c and c != "identity"]:  # RFC 9110: a list, its empty elements ignored
        raise HTTPException(415, f"Content-Encoding {', '.join(encoded)} is not accepted: send the body uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"body of {declared} bytes exceeds {cap}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"body exceeds {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the route the body already read, then the connection's own messages
    (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
