"""Pure math and data structures: CTR smoothing, the Beta bandit, iALS, the HNSW index, model artifacts.

No network I/O: nothing here talks to Kafka or Redis or runs an event loop. The only files touched are a model's own
(models/artifacts.py writes and reads a version's folder; models/ann.py and models/content_map.py their files in it).

This folder is the package ``recstream.models`` (pyproject.toml maps it into the one import root).
Imported under another name it would be a second copy of every module, with its own Prometheus
metrics and its own state, so that name is refused.
"""

if __name__ != "recstream.models":
    raise ImportError(f"import this package as recstream.models, not as {__name__!r}")
