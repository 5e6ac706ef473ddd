"""The stream worker: the faust app and its agents, turning events into state in Redis.

This folder is the package ``recstream.streams`` (pyproject.toml maps it into the one import root).
Imported under another name it would be a second copy of every module, with its own Prometheus
metrics and its own state, so that name is refused.
"""

if __name__ != "recstream.streams":
    raise ImportError(f"import this package as recstream.streams, not as {__name__!r}")
