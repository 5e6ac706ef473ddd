"""The reader's request and response bodies, as published in its OpenAPI schema.

Responses are built as plain dicts and encoded with orjson on the hot path; these models document
them (``response_model``) and the tests check real responses against them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from recstream.serving.blend import Source

from recstream.contracts.events import Category, Id


class FeedItem(BaseModel):
    item_id: str
    source: Source
    reason: str = Field(description="why it is here, in a few words")
    categories: list[str]
    score: float | None = Field(
        description="the ranker's click probability for the item (null: the page was not ranked)"
    )
    top_feature: str | None = Field(
        description="the feature that raised its score most (recstream/contracts/ranking.py FEATURES; null: not ranked)"
    )


class FeedPage(BaseModel):
    user_id: str
    items: list[FeedItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null when nothing is left")
    session: str | None = Field(description="scroll session id: put it in events' context.feed for attribution")
    model_version: str | None
    warm: bool = Field(description="the user has history (personal + segment popularity) or not (cold blend)")
    ranked: bool = Field(
        description="the exploitation slots are ordered by the online ranker (false: the fixed-quota blend, "
        "because the ranker is off, cold or stale, or the feed is degraded)"
    )
    degraded: bool = Field(description="answered from the in-process popular list because Redis was unreachable")
    seed: int = Field(description="seed of the explore draws; pass it back to reproduce the page")
    variant: str | None = Field(
        description="the user's experiment variant as <experiment>:<variant> (null: no experiment running); "
        "events carry it in their variant field (POST /v1/events fills it in when a client leaves it out)"
    )


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarItems(BaseModel):
    item_id: str
    items: list[SimilarItem]
    degraded: bool


class Preferences(BaseModel):
    """Onboarding categories and a "not interested" list of item ids or categories; PUT replaces both."""

    model_config = ConfigDict(extra="forbid")

    categories: Annotated[list[Category], Field(max_length=32)] = []
    not_interested: Annotated[list[Id], Field(max_length=256)] = []


class PreferencesSaved(Preferences):
    user_id: str
    applied: bool = Field(
        description="written to Redis at once (false: the workers will, from the user event; or the id was erased, "
        "and neither stores them)"
    )


class EventsAccepted(BaseModel):
    accepted: int
    attributed: int = Field(description="events whose context.source was filled in from the scroll session")
    dropped: int = Field(description="clicks dropped by the per-user-per-item click limit (the rest was published)")


class Ready(BaseModel):
    redis: bool
    model_version: str | None
    snapshot_loaded: bool


class Stats(BaseModel):
    feeds_per_s: float
    events_per_s: float
    clicks_per_s: float
    degraded_share: float = Field(description="degraded feeds / feeds over the last few seconds")
    feed_p50_ms: float | None
    feed_p99_ms: float | None
    served_by_source: dict[str, int]
    ctr_by_source: dict[str, float | None] = Field(description="clicks / views reported with that context.source")
    pool_items: int
    model_version: str | None
    redis: bool
    applied_events_per_s: float | None = Field(description="events the workers applied per second (Redis totals)")
    online_ctr: float | None = Field(description="clicks / views the workers applied over the last few seconds")
    freshness_p99_ms: float | None = Field(
        description="p99 of now − the newest applied event's timestamp, read at each stats request that finds "
        "events applied since the previous one; null while idle"
    )
    ranker_weights: dict[str, float] | None = Field(
        description="the averaged ranker weights this reader holds, by feature (bias: the intercept; each on its "
        "feature's raw scale), null while no partition has a state; it scores with them while its pages are ranked"
    )
