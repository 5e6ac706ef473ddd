"""Prometheus metrics of the reader (all named ``recstream_reader_*``) and the ASGI middleware that times requests.

Route labels are the route *templates* (``/v1/feed/{user_id}``), never raw paths, so a scan of
random ids cannot blow up the label cardinality.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("recstream_reader_requests_total", "HTTP requests by route template and status", ["route", "status"])
LATENCY = Histogram(
    "recstream_reader_request_seconds",
    "HTTP request latency by route template",
    ["route"],
    buckets=(0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ITEMS_SERVED = Counter("recstream_reader_items_served_total", "Feed items served, by source", ["source"])
FEEDS = Counter("recstream_reader_feeds_total", "Feed pages served, by kind of user (warm, cold, degraded)", ["user"])
DEGRADED = Counter(
    "recstream_reader_degraded_responses_total",
    "Responses answered without Redis (from the in-process popular list), by route and cause",
    ["route", "cause"],
)
REDIS_ROUND_TRIPS = Histogram(
    "recstream_reader_redis_round_trips",
    "Redis round trips a request made (the feed path allows at most 2)",
    ["route"],
    buckets=(0, 1, 2, 3, 4),
)
EVENTS = Counter(
    "recstream_reader_events_published_total",
    "Events accepted by POST /v1/events and published to Kafka, by type and served source (context.source)",
    ["type", "source"],
)
POOL_ITEMS = Gauge("recstream_reader_pool_items", "Items in the reader's copy of the new-item pool")
SNAPSHOT_FAILURES = Counter(
    "recstream_reader_snapshot_reload_failures_total", "Background reloads of the shared lists that failed"
)


class RequestMetrics:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): counts and times every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            LATENCY.labels(name).observe(time.perf_counter() - started)
            REQUESTS.labels(name, str(status)).inc()
