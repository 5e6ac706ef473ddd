"""What the reader answers, as the client reads it: small models mirroring its JSON responses.

They mirror the reader's documented schemas (serving/schemas.py; tests/client/test_wire.py keeps the
field names equal) without importing the reader, so the client needs none of its dependencies. Fields
a newer reader adds are ignored, and ``source`` is a plain string, so an older client keeps working.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FeedItem(Answer):
    item_id: str
    source: str
    reason: str
    categories: list[str]
    score: float | None = None  # the ranker's click probability (None: the page was not ranked)
    top_feature: str | None = None  # the feature that raised the score most


class FeedPage(Answer):
    """A page of a feed: pass ``next_cursor`` back for the next one, put ``session`` in events' ``context.feed``."""

    user_id: str
    items: list[FeedItem]
    next_cursor: str | None
    session: str | None
    model_version: str | None
    warm: bool
    ranked: bool = False
    degraded: bool
    seed: int
    variant: str | None


class SimilarItem(Answer):
    item_id: str
    score: float


class SimilarItems(Answer):
    item_id: str
    items: list[SimilarItem]
    degraded: bool


class Preferences(Answer):
    categories: list[str] = []
    not_interested: list[str] = []


class PreferencesSaved(Preferences):
    user_id: str
    applied: bool


class EventsAccepted(Answer):
    accepted: int
    attributed: int
    dropped: int = 0  # clicks over the reader's per-user-per-item limit


class LineRejected(Answer):
    line: int
    reason: str


class ItemsAccepted(Answer):
    """The items of a bulk write that were published, and the lines that were not, with why."""

    accepted: int
    rejected: list[LineRejected]


class UserErased(Answer):
    user_id: str
    removed: int


class Ready(Answer):
    redis: bool
    model_version: str | None
    snapshot_loaded: bool


class Stats(Answer):
    feeds_per_s: float
    events_per_s: float
    clicks_per_s: float
    degraded_share: float
    feed_p50_ms: float | None
    feed_p99_ms: float | None
    served_by_source: dict[str, int]
    ctr_by_source: dict[str, float | None]
    pool_items: int
    model_version: str | None
    redis: bool
    applied_events_per_s: float | None
    online_ctr: float | None
    freshness_p99_ms: float | None
    ranker_weights: dict[str, float] | None = None
