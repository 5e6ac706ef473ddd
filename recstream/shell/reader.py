"""The reader's processes: ``recstream serve --workers N`` runs N uvicorn processes sharing one port.

uvicorn's parent process binds the port and supervises; each worker process imports :func:`app`
(the factory below) and so builds its own reader: its own snapshot, caches, Redis connections and
Kafka producer (readers are stateless; Redis and Kafka hold the state), and its own tuned garbage
collector. The kernel spreads new connections over the processes. SIGTERM to the parent stops
every worker (each drains and closes as one reader does) before the parent exits.

/metrics and /v1/stats describe the process that answered: every response names it in
``X-Reader-Pid``. Prometheus should scrape one process per target, so Kubernetes scales with replicas
of a one-process pod (README, "With Docker instead").
"""

from __future__ import annotations

import os

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recstream.contracts.settings import load_settings
from recstream.runtime.garbage_collector import collect_young_rarely, freeze_long_lived
from recstream.serving.app import create_app

PID_HEADER = b"x-reader-pid"


class NamesProcess:
    """Adds ``X-Reader-Pid: <this process>`` to every HTTP response (a pure ASGI wrapper: ~1 µs a request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (PID_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named)


def app() -> NamesProcess:
    """One reader process's app, from the environment's settings (the factory uvicorn calls in each worker)."""
    named = NamesProcess(create_app(load_settings()))
    freeze_long_lived()  # what startup built lives as long as the process
    collect_young_rarely()
    return named


APP = f"{__name__}:app"


def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Run ``workers`` reader processes on host:port until SIGTERM or Ctrl-C (one: in this process); each calls
    :func:`app` for its own."""
    uvicorn.run(
        APP,
        factory=True,
        workers=workers,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level,
    )
