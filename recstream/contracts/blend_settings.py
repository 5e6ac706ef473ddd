"""How a page is filled: the blend's settings, which a deployment sets (``RECSTREAM_*``,
recstream.contracts.settings) and an experiment's variant may override (recstream.contracts.experiments derives its
fields from these, with their types and bounds)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recstream.contracts.section import Section

RANKER_STALE_MIN_S = 5.0
"""The least ``ranker_stale_s``: the age a healthy reader's weights reach between two reloads, each up to 2 s long
(its background timeout) with up to 1 s between them (serving/snapshot.py). Below it, pages fell back to the fixed
blend for part of every cycle while every reload succeeded."""


class BlendSettings(Section):
    """How a page is filled from the sources (an experiment's variant may override those of
    recstream.contracts.experiments.BLEND_SETTINGS).

    The shares make the fixed-quota blend, 4 personal, 4 popular, 1 fresh and 1 explore slot of 10: what serves
    while the ranker is cold or stale and in the fixed arm of an experiment. Chosen by their worst case over
    MovieLens and four simulated worlds (BENCHMARKS.md, nineteenth round): 6 + 2, chosen on MovieLens alone, lost
    to popular-only in every simulated world."""

    share_personal: float = Field(0.4, ge=0, le=1, description="slot share of personal candidates (warm users)")
    share_popular: float = Field(0.4, ge=0, le=1, description="slot share of popular-in-segment items")
    share_explore: float = Field(0.1, ge=0, le=1, description="slot share of explored new items")
    share_fresh: float = Field(0.1, ge=0, le=1, description="slot share of fresh items in favourite categories")
    popular_personal_head: int = Field(
        100,
        ge=0,
        le=500,
        description="warm users: of the segment's first N popular items, those on their candidate "
        "list first, in its order (0: smoothed CTR order alone; serving/blend.personal_first; validated on ranked "
        "pages: 100 against 50 on MovieLens and twelve closed-loop seeds of four worlds; the fixed blend lost with "
        "it in the fresh world, BENCHMARKS.md, sixteenth round)",
    )
    explore_max_share: float = Field(0.25, ge=0, le=1, description="cap on explore slots, whatever the config")
    explore_policy: Literal["thompson", "epsilon_greedy", "none"] = Field(
        "thompson", description="how explore slots are chosen from the new-item pool"
    )
    explore_epsilon: float = Field(0.1, ge=0, le=1, description="ε of the epsilon_greedy policy")
    explore_gate: Literal["off", "draw", "ranker"] = Field(
        "ranker",
        description="ranked pages: a Thompson explore pick keeps its slot only when its draw θ beats the ranker's "
        "click probability p of the item it would push off the page, else the next ranked item takes it "
        "(models/bandit.explore_gate). draw: θ/(1 + θ) ≥ p; ranker: the pick's own ranker score with its CTR at θ "
        "≥ p; off: every pick keeps its slot, as in the fixed blend (validated: ranker, on MovieLens and the "
        "closed-loop worlds, BENCHMARKS.md sixth round; draw never gates: a Thompson pick is the pool's largest draw)",
    )
    ranker: bool = Field(
        True, description="order the exploitation slots by the online ranker's score (false: the fixed-quota blend)"
    )
    ranker_min_rows: int = Field(
        500,
        ge=0,
        description="rows the ranker must have learned (all partitions) before it orders pages (validated: 500 "
        "against 1,500 on both closed-loop worlds' validation seeds and MovieLens, BENCHMARKS.md)",
    )
    ranker_depth: int = Field(
        2,
        ge=1,
        le=10,
        description="on a ranked page, popular and fresh each propose this many times the page's exploitation slots "
        "to the ranker (validated: 2 against 1 on both closed-loop worlds' validation seeds, the dense and sparse "
        "worlds and MovieLens, BENCHMARKS.md, fifteenth round)",
    )
    ranker_personal_depth: int = Field(
        1,
        ge=1,
        le=10,
        description="on a ranked page, the personal list proposes this many times the page's exploitation slots to "
        "the ranker (1: the ranker chooses among its top in ALS order; 2 cost MovieLens' served HR@10 0.1904 → "
        "0.1850 on its validation split, the ranker picking worse films from deeper in the list than ALS does)",
    )
    ranker_stale_s: float = Field(
        10.0,
        ge=RANKER_STALE_MIN_S,
        le=3600,
        description="no successful refresh of the ranker's weights for this long: the fixed blend",
    )
    cold_segment_weight: float = Field(0.7, ge=0, le=1, description="λ in λ·P(i|segment) + (1−λ)·P(i|global)")
