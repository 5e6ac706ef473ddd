"""Is every agent of this worker alive: what ``/healthz`` on the worker's metrics port answers.

A worker whose agent stopped keeps running and answering ``/metrics``, while the partitions that agent
read are applied by no one: nothing restarts it unless something asks. ``/healthz`` answers 200 while
every agent (and the item feed) runs and each one is idle or made progress on its current batch
(applied it, or failed for a reason that waiting cures and will retry:
:meth:`recstream.streams.processor.BatchProcessor.process`) within ``worker_stall_s``; 503, naming the
agents, otherwise, so an orchestrator's liveness probe restarts the process. A restart resumes from the
committed offsets and the Redis watermarks.

Retrying is alive on purpose when waiting cures it: a batch that Redis refuses (down, OOM, READONLY) is
retried for as long as it takes, and restarting the worker would not help; the retries have their own
metric and alert. A batch that fails on the worker's own exception (``other``: a model that cannot load, a
solve that raised) is retried too, but is no sign of life: after ``worker_stall_s`` of that, /healthz is red.
An agent that raised stays red even if faust's supervisor starts it again (a process restart is the known
way back); one that was cancelled (faust restarts agents that way) is red only until it runs again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

CANCELLED = "cancelled"


class Liveness:
    """Per agent: running or stopped (and why), and since when its current batch made no attempt."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self._stopped: dict[str, str] = {}  # agent → what stopped it
        self._busy_since: dict[str, float] = {}  # agent → monotonic time of its batch's start or last attempt

    @contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Around an agent's whole life: leaving it in any way (an exception, the stream's end) stops the agent."""
        if self._stopped.get(name) == CANCELLED:
            del self._stopped[name]
        how = "returned"
        try:
            yield
        except asyncio.CancelledError:
            how = CANCELLED
            raise
        except BaseException as exc:
            how = f"raised {exc!r}"[:200]
            raise
        finally:
            self._busy_since.pop(name, None)
            self._stopped.setdefault(name, how)

    def beat(self, name: str) -> None:
        """A batch started, or an attempt to apply it ended: the agent is not stuck."""
        self._busy_since[name] = self.clock()

    def idle(self, name: str) -> None:
        """The batch is done; the agent waits for messages, which is never a stall."""
        self._busy_since.pop(name, None)

    def problems(self) -> list[str]:
        """What makes this worker unhealthy, one line per agent; empty when it is healthy."""
        now = self.clock()
        out = [f"{name} stopped: {how}" for name, how in sorted(self._stopped.items())]
        for name, since in sorted(self._busy_since.items()):
            if now - since > self.stall_s:
                out.append(f"{name} stalled: no progress on its batch for {now - since:.1f} s")
        return out


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # a probe every few seconds is no news
        pass


def serve(port: int, liveness: Liveness, addr: str = "127.0.0.1") -> ThreadingWSGIServer:
    """``/healthz`` from ``liveness`` and Prometheus ``/metrics`` (any other path) on ``port``, in a daemon thread."""
    metrics = make_wsgi_app()

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)
        problems = liveness.problems()
        start_response("503 Service Unavailable" if problems else "200 OK", [("Content-Type", "text/plain")])
        return ["".join(f"{line}\n" for line in problems or ["ok"]).encode()]

    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
