"""The reader: the HTTP app that serves blended, explained feeds from the state in Redis.

This folder is the package ``recstream.serving`` (pyproject.toml maps it into the one import root).
Imported under another name it would be a second copy of every module, with its own Prometheus
metrics and its own state, so that name is refused.
"""

if __name__ != "recstream.serving":
    raise ImportError(f"import this package as recstream.serving, not as {__name__!r}")
