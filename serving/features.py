"""The ranking stage's feature vectors: one row per candidate of a page, in the order of contracts.ranking.FEATURES.

Pure, from the user's state and the in-process snapshot (no Redis: the feed keeps its two round trips).
A row depends on the user, the snapshot and the item, not on the page that asks: the generator flags
say whose *lists* hold the item (the whole personal list, the whole segment list, the pool), not what
a page took from them. So a fixed-blend page logs the very vectors a ranked page would have scored,
and the ranker learns from fixed pages while it is cold.

Rows are rounded as an event's context carries them (contracts.ranking.rounded_values): the row scored is the
row logged, to the bit. The item-level features come from the snapshot's columns, built and rounded once per
reload (serving/snapshot.ItemColumns); a page computes only what needs the user. What each feature reads:

* ``als_rank`` — 1 / log2(2 + k), k the 0-based position on the user's candidate list (the workers' HNSW query,
  best x_u·y_i first), else 0: 1 for the top candidate, 0.5 for the third, 0.18 for the 50th. A position, not
  the score itself: scores live on a scale of their own per model and domain (0–0.09 on MovieLens), which a
  regularized model cannot weigh, and only their order within one user's list means something;
* ``batch_rank`` — the same on the user's batch list (the batch fit's own user vector; users it knew): where
  tastes hold still the fit, which saw every event, ranks better than the step over the recent history, where they
  drift worse, and the ranker learns which from the stream;
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
  needs tens of thousands of rows to weigh); an item outside the pool whose creation time is not cached yet, or
  is more than G past the clock (a catalogue imported without dates is stamped with the import's time, years after
  the history it was replayed with: its items are not new), reads as graduated by age (ln 2); any other creation
  time after the clock (a producer's clock a little ahead, an item newer than the reader's last pool reload) reads
  as 0, new. While the clock stands (a dataset without timestamps: every event at one instant, snapshot.counted),
  an item created at that instant is aged in events instead: ln(1 + max(n − f, 0) / N), n the events applied, f
  its first event as a count of them (the workers' ``first``: the least over events partitions p of P × p's events
  before the item's first one there, each a function of one partition's log, so a rebuild writes the same) and N
  ``pool.graduate_standing_events``. Without it every item reads 0 and a much-rated item loses the brake its age
  puts on it: on MovieLens shuffled and without a clock the served feed was at 97.7% of the candidate list's HR@10,
  with it at 99.3% (in time order without a clock 96.5% → 98.9%; BENCHMARKS.md, "The age in events");
* ``category_affinity`` — the share of the user's recent category weight (history, else seen items,
  else the onboarding picks) on the item's categories, in [0, 1]: what the user's history holds;
* ``category_lift`` — the mean over the item's categories of the user's lift in each (:func:`category_lift`): how
  much more, per item, the user engages in that category than on average, from the recent history; 0 without one.
  Where the feed's own pages make most of a history (every item shown is a view), the share measures what was shown
  and the lift what the user picked from it; where histories are the user's own choices (MovieLens' ratings), the
  share says more. The ranker weighs both;
* ``warm`` — 1 for a user with history.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from recstream.serving.snapshot import Categories, Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.ranking import FEATURES, rounded_value, rounded_values

COLUMN = {name: k for k, name in enumerate(FEATURES)}
_MISSED = object()
_MISSING = itertools.repeat(_MISSED)
"""An endless default for ``map(dict.get, keys, _MISSING)``: a memo's miss, told from any value it holds."""
AGES_MAX = 100_000
"""Creation times whose rounded ``pool_age`` :func:`_ages` keeps for one clock; past it, the memo starts over."""
ROUNDED_MAX = 100_000
"""Category values whose rounding :data:`_ROUNDED` keeps; past it, the memo starts over."""
_ROUNDED: dict[float, float] = {}
"""``category_affinity`` sum or ``category_lift`` mean → its rounding (rounded_value, a pure function of the value;
~0.45 µs a call, a page has ~35 distinct category sets). Shares are a user's category weights over their total, so
few distinct sums recur across users (with weights 1 and 4 over 20 items, a few thousand). Neither is ever −0.0 (sums
of shares ≥ 0; a lift is the log of a positive ratio, +0.0 for none), so ±0.0 never share a key."""
LIFT_ITEMS = 100
"""Most recent history items :func:`history_categories` looks up for :func:`category_lift` (and the feed's taste,
which reads fewer): the cost per page is bounded whatever ``model.history_cap`` keeps."""
LIFT_PRIOR = 2.0
"""a in :func:`category_lift`: pseudo-items at the user's mean engagement r̄ every category starts with, so a category
holding one clicked item (weight 5) has a lift of ln((5 + 2·r̄) / 3 / r̄), not ln(5 / r̄)."""


def history_categories(user: UserState, categories: Categories, now: float) -> list[tuple[float, Sequence[str]]]:
    """(weight, categories) of the user's LIFT_ITEMS most recent history items, most recent first: looked up once per
    page for both readers of a history's categories, the lift (all of them) and the feed's taste (its first rows)."""
    return [(weight, categories.get(item, now) or ()) for item, weight in user.history(LIFT_ITEMS)]


def category_lift(rows: Iterable[tuple[float, Sequence[str]]]) -> dict[str, float]:
    """category → ln(r_c / r̄) from a user's history rows (summed event weight, the item's categories).

    r_c = (E_c + a·r̄) / (N_c + a), E_c the summed weights of the N_c history items in category c (a disliked
    item, a negative weight, engages 0), r̄ = ΣE / ΣN over the items with categories, a = LIFT_PRIOR. Why per item
    and not the category's share of the weight: a history holds every item the feed showed (a view weighs 1), so a
    share mostly measures what was shown; engagement per item divides that out. In memory, on the simulated stable
    world, the lift orders a user's true click probabilities over the popular head at a within-user Spearman of
    0.24–0.29, the share at 0.05–0.08 (BENCHMARKS.md, fourteenth round). No engagement at all: no lift.

    >>> lift = category_lift([(5.0, ("news",)), (1.0, ("sport",)), (1.0, ("news", "sport")), (1.0, ())])
    >>> {c: round(v, 3) for c, v in lift.items()}
    {'news': 0.134, 'sport': -0.336}
    >>> category_lift([(-4.0, ("news",)), (1.0, ("sport",))])["news"] < 0, category_lift([(-4.0, ("news",))])
    (True, {})
    """
    shown: dict[str, float] = {}
    engaged: dict[str, float] = {}
    total_shown = total_engaged = 0.0
    for weight, categories in rows:
        if not categories:
            continue
        weight = max(weight, 0.0)
        total_shown += 1.0
        total_engaged += weight
        for category in categories:
            shown[category] = shown.get(category, 0.0) + 1.0
            engaged[category] = engaged.get(category, 0.0) + weight
    if total_engaged <= 0.0:
        return {}
    mean = total_engaged / total_shown
    return {c: math.log((engaged[c] + LIFT_PRIOR * mean) / (n + LIFT_PRIOR) / mean) for c, n in shown.items()}


def _category_columns(
    cats: list[tuple[str, ...]], share: Mapping[str, float], lift: Mapping[str, float]
) -> tuple[list[float], list[float]]:
    """Each item's ``category_affinity`` and ``category_lift``: the sum of ``share`` and the mean of ``lift`` over its
    categories, rounded as logged. Both in one pass over the page's distinct category sets (they are few), each
    rounding memoized in :data:`_ROUNDED`; two flat lists, since numpy fills a column from one ~5× faster than
    two columns from a list of pairs."""
    share_of, lift_of, affinities, lifts = share.get, lift.get, {}, {}
    for c in dict.fromkeys(cats):
        affinity = mean = 0.0  # summed in the categories' order, as sum() would: the same bits
        for category in c:
            affinity += share_of(category, 0.0)
            mean += lift_of(category, 0.0)
        if c:
            mean /= len(c)
        if (rounded := _ROUNDED.get(affinity)) is None:
            rounded = _ROUNDED[affinity] = rounded_value(affinity)
        affinities[c] = rounded
        if (rounded := _ROUNDED.get(mean)) is None:
            rounded = _ROUNDED[mean] = rounded_value(mean)
        lifts[c] = rounded
    return list(map(affinities.__getitem__, cats)), list(map(lifts.__getitem__, cats))


@functools.lru_cache(maxsize=4)
def _ages(now_ms: int | None, unit_ms: float) -> dict[int, float]:
    """created_ts → rounded ``pool_age`` at this clock (filled by the pages that ask): an item's age moves only when
    the snapshot's clock does (a reload that saw newer events), so every page between two reloads shares it. A few
    clocks are kept: experiment arms may have another graduation age."""
    return {}


@functools.lru_cache(maxsize=4)
def _event_ages(counted: int, unit: int) -> dict[str, float]:
    """item → rounded ``pool_age`` in events at this count, filled by the pages that ask, as :func:`_ages` keeps them
    per clock; an item whose first event is not cached yet is not kept (its entry is read again within a second)."""
    return {}


def rank_discounts(size: int) -> np.ndarray:
    """``als_rank`` by position: 1 / log2(2 + k) for k = 0 … at least size − 1, rounded as logged (one table per
    power of two: a list is at most ``candidates_m`` or ``batch_candidates_m`` long, so a few tables ever), then 0
    for an item not on the list: indexed by position −1, the table gives a page's column in one gather (no
    ``np.where``).

    >>> rank_discounts(3)[:3].tolist(), float(rank_discounts(3)[-1])
    ([1.0, 0.6309, 0.5], 0.0)
    """
    return _discount_table(max(64, 1 << (size - 1).bit_length()))


@functools.cache
def _discount_table(size: int) -> np.ndarray:
    return np.append(rounded_values(np.array([1.0 / math.log2(2 + k) for k in range(size)])), 0.0)


class PageFeatures:
    """Feature rows of one user's candidates; built once per request, ``rows`` called for the items to score."""

    __slots__ = (
        "_absent_age",
        "_age_unit_ms",
        "_als",
        "_batch",
        "_categories",
        "_columns",
        "_counted",
        "_discounts",
        "_favourites",
        "_lift",
        "_newest_ms",
        "_now",
        "_now_ms",
        "_pool_created",
        "_segment_columns",
        "_share",
        "_taste",
        "_unit_events",
        "_warm",
    )

    def __init__(
        self,
        user: UserState,
        snapshot: Snapshot,
        lists: Popular | None,
        history: Iterable[tuple[float, Sequence[str]]],
        taste: Mapping[str, float],
        favourites: Iterable[str],
        now: float,
        graduate_age_s: float,
        standing_events: int,
    ) -> None:
        self._als, self._batch = user.candidate_positions(), user.batch_positions()
        self._discounts = rank_discounts(max(len(user.candidate_list()), len(user.batch_list()), 1))
        self._columns = snapshot.item_columns()
        segment_ctr, on_warm, on_cold = self._columns.of_lists(lists)
        self._segment_columns = segment_ctr, on_warm if user.warm else on_cold
        self._taste = dict(taste) or dict.fromkeys(user.preferred, 1.0)
        total = math.fsum(self._taste.values())
        self._share = {c: w / total for c, w in self._taste.items()} if total else {}
        self._lift = category_lift(history)
        self._favourites = frozenset(favourites)
        self._categories = snapshot.categories
        self._pool_created = snapshot.pool.created
        self._now = now
        self._now_ms = snapshot.clock_ms
        self._absent_age = rounded_value(math.log(2.0))
        self._age_unit_ms = graduate_age_s * 1000.0
        # a stored creation time past this is no item's real one (an undated import's): ``pool_age`` reads it unknown
        self._newest_ms = math.inf if self._now_ms is None else self._now_ms + self._age_unit_ms
        self._counted, self._unit_events = snapshot.counted, standing_events
        self._warm = 1.0 if user.warm else 0.0

    def rows(self, items: Sequence[str]) -> np.ndarray:
        """(len(items), len(FEATURES)) rows, rounded as logged: what the ranker scores.

        The item-level columns are gathered from the snapshot's :class:`ItemColumns` (built and rounded once per
        reload) with one lookup per item; the user's own (``als_rank``, ``personal``, ``batch_rank``) come from
        their positions on the two lists, one pass each; only ``fresh``, ``pool_age`` and the two category features
        need an item's categories or creation time, one Python pass each (``math`` as the per-item formulas have it:
        the same bits), ``pool_age`` computed once per creation time and clock (per item and count while the clock
        stands), the category features once per distinct category set.
        """
        n, columns = len(items), self._columns
        at = np.fromiter(map(columns.index.get, items, itertools.repeat(len(columns.index))), np.intp, n)
        position = np.fromiter(map(self._als.get, items, itertools.repeat(-1)), np.intp, n)
        entries = self._categories.entries(items, self._now)
        cats = [() if e is None else e[0] for e in entries]
        newest = self._newest_ms
        stored = [None if e is None or e[2] is None or e[2] > newest else e[2] for e in entries]
        created = list(map(self._pool_created.get, items, stored))
        favourites = self._favourites
        segment_ctr, popular = self._segment_columns
        listed = position >= 0
        in_pool = columns.pool[at]
        out = np.empty((n, len(FEATURES)))
        out[:, COLUMN["als_rank"]] = self._discounts[position]  # sized for the user's lists at __init__: one gather
        out[:, COLUMN["batch_rank"]] = (
            self._discounts[np.fromiter(map(self._batch.get, items, itertools.repeat(-1)), np.intp, n)]
            if self._batch
            else 0.0
        )
        out[:, COLUMN["personal"]] = listed
        out[:, COLUMN["popular"]] = popular[at]
        out[:, COLUMN["fresh"]] = 0.0
        pooled = np.flatnonzero(in_pool)
        out[pooled, COLUMN["fresh"]] = [not favourites.isdisjoint(cats[k]) for k in pooled.tolist()]
        out[:, COLUMN["explore"]] = in_pool
        out[:, COLUMN["ctr_logit"]] = columns.ctr[at]
        out[:, COLUMN["segment_ctr_logit"]] = segment_ctr[at]
        counted = self._counted
        out[:, COLUMN["pool_age"]] = (
            self._pool_ages(created) if counted is None else self._aged(items, created, counted)
        )
        if len(_ROUNDED) > ROUNDED_MAX:
            _ROUNDED.clear()
        affinity, lift = _category_columns(cats, self._share, self._lift) if self._share or self._lift else (0.0, 0.0)
        out[:, COLUMN["category_affinity"]], out[:, COLUMN["category_lift"]] = affinity, lift
        out[:, COLUMN["warm"]] = self._warm
        return out

    def _aged(self, items: Sequence[str], created: list[int | None], counted: int) -> list[float]:
        """``pool_age`` while the clock stands: an item created at the standing instant aged in events (module
        docstring), once per item and count (:func:`_event_ages`); any other, or one never in an event, as
        :meth:`_pool_ages` ages it."""
        ages, now_ms = self._pool_ages(created), self._now_ms
        memo, first_of, log1p = _event_ages(counted, self._unit_events), self._categories.first, math.log1p
        if len(memo) > AGES_MAX:
            memo.clear()
        for k, c in enumerate(created):
            if c != now_ms:
                continue
            if (age := memo.get(items[k])) is None and (first := first_of(items[k])) is not None:
                age = memo[items[k]] = rounded_value(log1p(max(counted - first, 0) / self._unit_events))
            if age is not None:
                ages[k] = age
        return ages

    def _pool_ages(self, created: Iterable[int | None]) -> list[float]:
        """``pool_age`` of each creation time, rounded: ln(1 + max(now − created, 0) / G), 0 before any event, ln 2
        for an item whose creation time is not known; each value computed once per clock (:func:`_ages`), looked up
        in C (``map``) and computed in Python only for a creation time the memo lacks (or none)."""
        now_ms, unit, log1p = self._now_ms, self._age_unit_ms, math.log1p
        ages = _ages(now_ms, unit)
        if len(ages) > AGES_MAX:
            ages.clear()
        created = list(created)
        out = list(map(ages.get, created, _MISSING))
        if _MISSED in out:
            for k, c in enumerate(created):
                if out[k] is not _MISSED:
                    continue
                if c is None:
                    out[k] = self._absent_age
                elif (age := ages.get(c)) is None:
                    out[k] = ages[c] = rounded_value(0.0 if now_ms is None else log1p(max(now_ms - c, 0) / unit))
                else:  # a creation time met twice in this call
                    out[k] = age
        return out

    def favourite_category(self, item: str, feature: str) -> str | None:
        """Of the item's categories, the one the user's taste weighs most (``category_affinity``) or of the user's
        highest lift (``category_lift``); None: none of them above 0."""
        values = self._lift if feature == "category_lift" else self._taste
        weighed = [(values.get(c, 0.0), c) for c in self._categories.get(item, self._now) or ()]
        best = max(weighed, default=(0.0, None))
        return best[1] if best[0] > 0 else None
