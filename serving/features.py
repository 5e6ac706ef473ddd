"""The ranking stage's feature vectors: one row per candidate of a page, in the order of contracts.ranking.FEATURES.

Pure, from the user's state and the in-process snapshot (no Redis: the feed keeps its two round trips).
A row depends on the user, the snapshot and the item, not on the page that asks: the generator flags
say whose *lists* hold the item (the whole personal list, the whole segment list, the pool), not what
a page took from them. So a fixed-blend page logs the very vectors a ranked page would have scored,
and the ranker learns from fixed pages while it is cold.

Rows are rounded as an event's context carries them (``rounded_rows``): the row scored is the row
logged, to the bit. What each feature reads:

* ``als_rank`` — 1 / log2(2 + k), k the 0-based position on the user's candidate list (the workers' HNSW query,
  best x_u·y_i first), else 0: 1 for the top candidate, 0.5 for the third, 0.18 for the 50th. A position, not
  the score itself: scores live on a scale of their own per model and domain (0–0.09 on MovieLens), which a
  regularized model cannot weigh, and only their order within one user's list means something;
* ``personal`` / ``popular`` / ``fresh`` / ``explore`` — on the candidate list / on the segment's popular
  list the user is served from (warm or cold order; the global list for a segment not loaded yet) /
  a pool item in a favourite category / in the new-item pool;
* ``ctr_logit`` — logit of the smoothed CTR: the pool's counts for pool items, the global list's score,
  else the snapshot's floor (the prior, or the list's last score once the list is full);
* ``segment_ctr_logit`` — logit of P(i|s) where the snapshot has it, else the global one (exact for an
  item without views in the segment, models.ctr.segment_ctr);
* ``pool_age`` — ln(1 + a / G), a the time from created_ts to the newest event applied (event time; 0 before
  any) and G the pool's graduation age (``pool.graduate_age_s``), so 1 ↔ ln 2 whatever the domain's clock: an
  operator sets G for how fast items age in their feed (48 h for films, minutes for a news flash), and the
  feature's weight carries across (in hours, a world on a clock of minutes gave values below 0.1, which FTRL
  needs tens of thousands of rows to weigh); an item outside the pool whose creation time is not cached yet
  reads as graduated by age (ln 2);
* ``category_affinity`` — the share of the user's recent category weight (history, else seen items,
  else the onboarding picks) on the item's categories, in [0, 1];
* ``warm`` — 1 for a user with history.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from recstream.serving.snapshot import Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.ranking import FEATURES, rounded_rows


class PageFeatures:
    """Feature rows of one user's candidates; built once per request, ``rows`` called for the items to score."""

    __slots__ = (
        "_absent_age",
        "_age_unit_ms",
        "_als",
        "_categories",
        "_ctr",
        "_favourites",
        "_floor",
        "_now",
        "_now_ms",
        "_pool",
        "_rank",
        "_segment_ctr",
        "_share",
        "_taste",
        "_warm",
    )

    def __init__(
        self,
        user: UserState,
        snapshot: Snapshot,
        lists: Popular | None,
        taste: Mapping[str, float],
        favourites: Iterable[str],
        now: float,
        graduate_age_s: float,
    ) -> None:
        self._als = user.candidate_positions()
        if lists is None:
            self._rank, self._segment_ctr = snapshot.overall_rank, {}
        else:
            self._rank = lists.warm_rank if user.warm else lists.cold_rank
            self._segment_ctr = lists.ctr_logits
        self._taste = dict(taste) or dict.fromkeys(user.preferred, 1.0)
        total = math.fsum(self._taste.values())
        self._share = {c: w / total for c, w in self._taste.items()} if total else {}
        self._favourites = frozenset(favourites)
        self._categories = snapshot.categories
        self._pool = snapshot.pool
        self._ctr = snapshot.ctr_logits
        self._floor = snapshot.ctr_floor_logit
        self._now = now
        self._now_ms = snapshot.clock_ms
        self._absent_age = math.log(2.0)
        self._age_unit_ms = graduate_age_s * 1000.0
        self._warm = 1.0 if user.warm else 0.0

    def rows(self, items: Sequence[str]) -> np.ndarray:
        """(len(items), len(FEATURES)) rows, rounded as logged: what the ranker scores.

        One tight loop of dictionary lookups per item (what ranking adds to a feed: about 60 items), then
        one vectorized rounding.
        """
        now_ms = self._now_ms
        pool_ctr, pool_created, ctr, floor = self._pool.ctr_logits, self._pool.created, self._ctr.get, self._floor
        als, rank, segment_ctr, share = self._als.get, self._rank.get, self._segment_ctr.get, self._share.get
        favourites, absent_age, unit, warm = self._favourites, self._absent_age, self._age_unit_ms, self._warm
        log1p, log2 = math.log1p, math.log2
        out = []
        for item, known in zip(items, self._categories.entries(items, self._now), strict=True):
            cats, created = ((), None) if known is None else (known[0], known[2])
            at, position = als(item), rank(item)
            in_pool = item in pool_created
            if in_pool:
                created, overall = pool_created[item], pool_ctr[item]
                fresh = 0.0 if favourites.isdisjoint(cats) else 1.0
            else:
                overall, fresh = ctr(item, floor), 0.0
            if created is None:
                age = absent_age
            elif now_ms is None:
                age = 0.0
            else:
                age = log1p(max(now_ms - created, 0) / unit)
            affinity = 0.0
            for category in cats:
                affinity += share(category, 0.0)
            out.append(
                (
                    0.0 if at is None else 1.0 / log2(2 + at),
                    0.0 if at is None else 1.0,
                    0.0 if position is None else 1.0,
                    fresh,
                    1.0 if in_pool else 0.0,
                    overall,
                    segment_ctr(item, overall),
                    age,
                    affinity,
                    warm,
                )
            )
        # one fromiter over the flattened tuples: ~20% cheaper than np.array(out), which discovers the shape first
        flat = np.fromiter(itertools.chain.from_iterable(out), np.float64, len(out) * len(FEATURES))
        return rounded_rows(flat.reshape(len(out), len(FEATURES)))

    def favourite_category(self, item: str) -> str | None:
        """Of the item's categories, the one the user's taste weighs most (None: none of them)."""
        weighed = [(self._taste.get(c, 0.0), c) for c in self._categories.get(item, self._now) or ()]
        best = max(weighed, default=(0.0, None))
        return best[1] if best[0] > 0 else None
