"""The feed explorer: one static page (serving/static/) at ``/explore`` that watches a feed adapt.

The page is plain HTML, CSS and one framework-free JavaScript module, served as files (no build
step), and it calls only the public API: feeds, similar items, preferences, events and
``/v1/stats``. Scripts and styles are separate files, never inline, so a strict
Content-Security-Policy (``default-src 'self'``) does not break it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import FileResponse

STATIC = Path(__file__).parent / "static"
ASSETS = {path.name: path for path in STATIC.iterdir() if path.suffix in {".js", ".css"}}
"""The only files served: a name from this map, never a path built from the request."""
NO_CACHE = {"Cache-Control": "no-cache"}  # a reader upgrade must not leave a stale script in a browser

router = APIRouter(include_in_schema=False)


@router.get("/explore")
async def explore_page() -> FileResponse:
    return FileResponse(STATIC / "explore.html", headers=NO_CACHE)


@router.get("/explore/{asset}")
async def explore_asset(asset: str) -> FileResponse:
    path = ASSETS.get(asset)
    if path is None:
        raise HTTPException(404, "no such explorer asset")
    return FileResponse(path, headers=NO_CACHE)
