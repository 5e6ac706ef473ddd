"""One feed page from a user's state and the shared snapshot: the generators, then the ranking stage or the blend.

Pure (no Redis): ``build_page`` is what the feed route runs between its read and its write, and
what the unit tests drive directly.

Sources (generators), each a ranked list explained item by item:

* **personal** — the workers' candidate list ``user:<u>:cand``, best first ("because you watched X"); on a ranked
  page, alternating with the batch list ``user:<u>:bcand`` (the batch fit's user vector), when the user has one;
* **popular** — the segment's items by P(i|s) for warm users; for cold users by
  λ·P(i|s) + (1−λ)·P(i|global), with the categories they picked at onboarding first;
* **fresh** — new (pool) items in the user's favourite categories, newest first: the categories
  they picked, then those weighing most in their recent history;
* **explore** — Thompson sampling (or ε-greedy) over the new-item pool: one Beta(α, β) draw per
  item, vectorized, from a generator seeded per request.

A **ranked** page (serving/ranking.py decides when) takes the union of what personal, popular and
fresh propose (personal up to ``blend.ranker_personal_depth`` × the page's exploitation slots from each of its
lists, popular and fresh
each up to ``blend.ranker_depth`` ×), filtered (seen, served in the session, unavailable, not interested) before
anything is scored; scores every candidate's feature vector
(serving/features.py) with the online ranker's averaged weights and fills the exploitation slots
best first. Each ranked item is served as the generator its top feature speaks for (when that
generator proposed it) with that generator's reason, else with words for the feature. The explore
slots stay capped Thompson sampling. A source whose share is 0 has no slots of its own in either mode; it only
inherits, after the sources with a share, keeping the page full: in the fixed blend the slots of a source that ran
dry (serving/blend.OVERFLOW order), in the ranked union the candidates the others cannot propose.
Otherwise the page is the **fixed** blend: slot counts from the shares, then the interleave. Either
way every item carries the vector it was served with, which the scroll session keeps for attribution.

Under an experiment, ``settings`` are the user's variant's (serving/variants.py).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
from recstream.models.bandit import choose_explore, explore_gate, per_row, thompson_picks
from recstream.models.ranker import probability
from recstream.serving.blend import OVERFLOW, Candidate, Served, Source, interleave, personal_first, slot_counts
from recstream.serving.features import PageFeatures, history_categories
from recstream.serving.filters import NO_FILTER, FeedFilter
from recstream.serving.ranking import (
    GENERATOR,
    GENERATORS,
    Mode,
    generator_pull,
    logits,
    ranking_mode,
    score_at_ctr,
    top_features,
)
from recstream.serving.snapshot import Categories, Pool, Popular, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.ranking import encode_rows
from recstream.contracts.settings import Settings

DEFAULT_SEGMENT = "default"
"""recstream.contracts.events.segment_of's answer for unknown attributes; the workers count such users there."""
FAVOURITE_CATEGORIES = 3
TASTE_ITEMS = 20
"""Most recent history items whose categories decide the favourite ones: recent taste, bounded cost."""
EXPLORE_REASON = "new — we're exploring it"
POPULAR_REASON = "popular with people like you"
TRENDING_REASON = "popular right now"
FEATURE_WORDS = {
    "als_rank": "picked for you",
    "batch_rank": "picked for you",
    "personal": "picked for you",
    "popular": POPULAR_REASON,
    "segment_ctr_logit": POPULAR_REASON,
    "ctr_logit": TRENDING_REASON,
    "fresh": "recently added",
    "explore": "recently added",
    "pool_age": "recently added",
    "category_affinity": "close to what you watch",
    "category_lift": "close to what you click",
}
"""A ranked item's reason when the generator its top feature speaks for did not propose it."""
CATEGORY_WORDS = {
    "category_affinity": "in {}, one of your favourite categories",
    "category_lift": "in {}, which you click more than most",
}
"""The reason of an item whose top feature is a category feature, naming the category (FEATURE_WORDS without one)."""
_FIRST, _SECOND, _ITEM_CATEGORY = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(1, 2)
_T = TypeVar("_T")
_R = TypeVar("_R", bound=tuple)
FAST_UNAVAILABLE = 256
"""Unavailable items a request copies into its exclusion set (Exclusions.fast); with more, it looks them up."""


@dataclass(frozen=True, slots=True)
class Page:
    """The items, and the feature vector each was served with (contracts.ranking's context values; None
    before the snapshot's first load), for the session to keep."""

    items: list[Served]
    warm: bool
    mode: Mode
    vectors: list[str] | None = None

    @property
    def ranked(self) -> bool:
        return self.mode == "ranked"


class Exclusions:
    """What this user's page must not hold: seen, served in the session, unavailable, not interested, and what
    the request's filter refuses (serving/filters.py).

    A "not interested" entry is an item id, or a category when some item carries it. With blocked
    categories, an entry the snapshot knows neither as an item nor as a category (a category no cached item
    carries yet: the long tail, a restart), or a filter on categories or features, an item whose categories
    are not known yet is held back rather than risked.
    """

    __slots__ = ("_categories", "_now", "blocked", "fast", "items", "only", "unavailable", "unsure")

    def __init__(self, user: UserState, snapshot: Snapshot, now: float, only: FeedFilter = NO_FILTER) -> None:
        self.items = {*user.seen, *user.served, *user.not_interested, *only.exclude}
        self.unavailable = snapshot.unavailable
        self.blocked = frozenset(c for c in user.not_interested if c in snapshot.categories.known)  # a lookup each
        unknown = [name for name in user.not_interested if not snapshot.categories.names(name)]
        for name in unknown:  # the next reload asks: an item id is then known, and its user back on the fast path
            snapshot.categories.entry(name, now)
        self.unsure = bool(unknown)
        self.only = only
        self._categories = snapshot.categories
        self._now = now
        self.fast: Container[str] = self
        """Answers ``in`` as this does, in C when ids alone decide (no blocked category, no unknown entry, no
        narrowing filter, few unavailable items): one set. A page asks about ~300 items, and a Python
        ``__contains__`` costs ~0.2 µs."""
        if not self.blocked and not self.unsure and not only.narrows and len(self.unavailable) <= FAST_UNAVAILABLE:
            self.fast = self.items.union(self.unavailable) if self.unavailable else self.items

    def __contains__(self, item: object) -> bool:
        if item in self.items or item in self.unavailable:
            return True
        if self.blocked or self.unsure or self.only.narrows:
            categories = self._categories.get(item, self._now)  # type: ignore[arg-type]
            if categories is None or not self.blocked.isdisjoint(categories):
                return True
            return not self.only.admits(categories, self._categories.features(item))  # type: ignore[arg-type]
        return False


def build_page(
    user: UserState,
    snapshot: Snapshot,
    settings: Settings,
    limit: int,
    seed: int,
    now: float,
    only: FeedFilter = NO_FILTER,
) -> Page:
    """The ranked page when the ranker is warm and fresh, else the fixed blend; explore slots capped either way.
    ``only`` (the request's filter) joins the exclusions, so every source skips what it refuses while it fills."""
    blend = settings.blend
    exclude = Exclusions(user, snapshot, now, only)
    shares: dict[Source, float] = {
        "personal": blend.share_personal,
        "popular": blend.share_popular,
        "fresh": blend.share_fresh,
        "explore": 0.0 if blend.explore_policy == "none" else blend.share_explore,
    }
    counts = slot_counts(shares, limit, blend.explore_max_share)
    history = history_categories(user, snapshot.categories, now)
    taste = taste_weights(user, history, snapshot.categories, now)
    favourites = favourite_categories(user, taste, exclude.blocked)
    lists = snapshot.segments.get(user.segment or DEFAULT_SEGMENT)
    explored, theta = (
        explore(snapshot.pool, exclude, counts["explore"] + limit, seed, settings) if counts["explore"] else ([], None)
    )
    mode = ranking_mode(snapshot.ranker, blend, now)
    if mode == "ranked" and not snapshot.loaded:  # the weights were read, the lists the features need were not
        mode = "fixed-stale"
    features = PageFeatures(
        user,
        snapshot,
        lists,
        history,
        taste,
        favourites,
        now,
        settings.pool.graduate_age_s,
        settings.pool.graduate_standing_events,
    )
    popular_head = popular_head_personal_first(user, snapshot, lists, settings, now)
    on = {source for source in OVERFLOW if shares[source] > 0}
    if mode != "ranked":
        generators: dict[Source, Iterable[Candidate]] = {
            "personal": personal_proposer(user, ()).candidates(),
            "popular": popular_head,
            "fresh": fresh_proposer(snapshot.pool, favourites, user.preferred, ()).candidates(),
            "explore": explored,
        }
        overflow = sorted(OVERFLOW, key=lambda source: source not in on)  # the sources with a share inherit first
        items = interleave(generators, counts, exclude.fast, overflow)
        if not snapshot.loaded:  # nothing to compute the features from yet
            return Page(items, user.warm, mode)
        return Page(items, user.warm, mode, encode_rows(features.rows([s.item for s in items])))
    excluded = exclude.fast
    proposers = {
        "personal": personal_proposer(user, excluded, blend.ranker_personal_depth * exploitation_slots(counts)),
        "popular": Proposer(((c.item, c) for c in popular_head if c.item not in excluded), _CANDIDATE_REASON),
        "fresh": fresh_proposer(snapshot.pool, favourites, user.preferred, excluded),
    }
    weights = snapshot.ranker.weights
    gate = None if blend.explore_gate == "off" or theta is None else (blend.explore_gate, theta)
    depths = {"personal": blend.ranker_personal_depth, "popular": blend.ranker_depth, "fresh": blend.ranker_depth}
    items, vectors = _ranked(proposers, on, explored, counts, exclude, features, weights, depths, gate)  # type: ignore[arg-type]
    return Page(items, user.warm, mode, vectors)


class Proposer(NamedTuple):
    """A generator of the ranked union: its allowed candidates (not excluded) as (item, why) pairs, its order, and
    the reason a why gives. The union takes a few dozen and serves ~20: a reason is built only for those, and no
    Candidate for any; where the generator's list is in memory the pairs come from C iterators, with no Python frame
    per item (:func:`personal_proposer`, :func:`fresh_proposer`)."""

    pairs: Iterator[tuple[str, Any]]
    reason: Callable[[Any], str]
    head: int | None = None
    """How many pairs the union takes first; None: its depth factor × the page's exploitation slots."""

    def candidates(self) -> Iterator[Candidate]:
        """The pairs as the fixed blend takes them, each with its reason (it explains every item it walks past)."""
        return (Candidate(item, self.reason(why)) for item, why in self.pairs)


_CANDIDATE_REASON: Callable[[Candidate], str] = operator.attrgetter("reason")


def popular_head_personal_first(
    user: UserState, snapshot: Snapshot, lists: Popular | None, settings: Settings, now: float
) -> Iterator[Candidate]:
    """The popular generator of both modes: for warm users the head of the segment's list reordered by their own
    candidate list (serving/blend.personal_first), so the ranked union's popular candidates are the ones the
    fixed blend would serve (on MovieLens the popular slots' HR@10 fell from 0.0305 to 0.0143 without it)."""
    head = settings.blend.popular_personal_head if user.warm else 0
    return personal_first(popular(user, snapshot, lists, now), user.candidate_positions(), head)


def _ranked(
    proposers: dict[Source, Proposer],
    on: Container[Source],
    explored: list[Candidate],
    counts: dict[Source, int],
    exclude: Exclusions,
    features: PageFeatures,
    weights: np.ndarray,
    depth_factors: Mapping[str, int],
    gate: tuple[str, np.ndarray] | None = None,
) -> tuple[list[Served], list[str]]:
    """The union of the first allowed candidates of the generators ``on`` (``depth_factors[source]`` × the exploitation
    slots each, then more in turn while the union cannot fill its slots and the explore slots the pool leaves empty;
    once they run dry, the other generators'),
    scored and ordered best first into the exploitation slots; the explore slots as in the fixed blend.

    The ranked list fills the personal slots of the interleave: like personal in the fixed blend, it is the
    first heir of explore slots the pool cannot fill, and explore keeps its positions and its cap. The
    explore picks the page can serve are scored with the union (for the page to show and log), never
    ranked; items are explained only as the interleave takes them (a page takes about 20 of about 60).

    ``gate`` (the setting's mode, and the picks' Thompson draws θ aligned with ``explored``; None: no gate) lets
    the explore picks the generators did not propose compete with the ranked list (models/bandit.explore_gate):
    pick j, θ largest first, keeps its slot only against the page's j-th lowest-scored exploitation item, as
    θ/(1 + θ) ("draw") or as its own score with its CTR at θ ("ranker"), else that item stays. A pool item a
    generator proposed is then ranked with the union, not explored.
    """
    k, excluded, depth = counts["explore"], exclude.fast, exploitation_slots(counts)
    offered: dict[Source, dict[str, Any]] = {  # each generator's item → why, taken in C (a page offers ~90)
        source: dict(
            itertools.islice(proposer.pairs, _head(proposer, depth * depth_factors[source]) if source in on else 0)
        )
        for source, proposer in proposers.items()
    }
    proposed = dict.fromkeys(itertools.chain.from_iterable(offered.values()))  # the union, in generator order

    def own_picks() -> int:
        """Of the first k allowed explore picks, those no generator proposed: each fills an explore slot with an item
        the ranked list does not need (a proposed one would take an item of the union with it)."""
        return sum(c.item not in proposed for c in itertools.islice((c for c in explored if c.item not in excluded), k))

    # a union short of its slots (generators proposing the same items, a filter few items pass) takes each
    # generator's next allowed candidate in turn: the page stays full while any generator has one. It is the heir
    # of the explore slots the pool cannot fill, and of every gated pick (any may lose its slot)
    allowed = {source: proposer.pairs for source, proposer in proposers.items()}
    while len(proposed) < depth + k - (0 if gate is not None else own_picks()) and allowed:
        for source in [s for s in allowed if s in on] or list(allowed):  # those with a share, then the others
            if (pair := next(allowed[source], None)) is None:
                del allowed[source]
            else:
                offered[source][pair[0]] = pair[1]
                proposed[pair[0]] = None
    items = list(proposed)
    # the explore slots take picks in order, skipping any already on the page, which only a proposed item
    # can be: so the unproposed picks they serve are among the first counts["explore"] allowed ones
    picks = list(
        itertools.islice((j for j, c in enumerate(explored) if c.item not in proposed and c.item not in excluded), k)
    )
    names = [*items, *(explored[j].item for j in picks)]
    rows = features.rows(names)
    logit, contributions = logits(weights, rows)
    probabilities = probability(logit)
    scores = probabilities.tolist()
    tops = top_features(contributions)
    order = np.argsort(-probabilities[: len(items)], kind="stable").tolist()
    if gate is not None:  # pick j would push off the exploitation item ranked depth + k − 1 − j (none: p = 0)
        at_risk = range(depth + k - 1, depth + k - 1 - len(picks), -1)
        bottom = [scores[order[r]] if r < len(order) else 0.0 for r in at_risk]
        mode, theta = gate[0], gate[1][picks]
        n = len(items)
        drawn = per_row(theta) if mode == "draw" else score_at_ctr(weights, rows[n:], logit[n:], theta)
        explored = [explored[j] for j in picks[: explore_gate(drawn, bottom)]]
    served_as: dict[str, tuple[Source, int]] = {}
    """A ranked item → the source it is served as, and its row."""
    pulls: list[np.ndarray] = []

    def pull_of(k: int) -> dict[Source, float]:
        if not pulls:  # one product for the page, when an item first needs it
            pulls.append(generator_pull(contributions))
        return dict(zip(GENERATORS, pulls[0][k].tolist(), strict=True))

    def best_first() -> Iterator[Candidate]:
        for k in order:
            item, feature = items[k], tops[k]
            source = None if feature is None else GENERATOR[feature]
            spoken = source is not None and item in offered[source]  # its top feature's generator proposed it
            if not spoken:  # served as the proposer its features pull for most (most items have one)
                proposing = [s for s, offers in offered.items() if item in offers]
                source = proposing[0] if len(proposing) == 1 else max(proposing, key=pull_of(k).__getitem__)
            served_as[item] = source, k  # type: ignore[assignment]
            if spoken or feature is None:
                yield Candidate(item, proposers[source].reason(offered[source][item]))  # type: ignore[index]
            else:  # in the top feature's words
                yield Candidate(item, _words(item, feature, features))

    slots: dict[Source, int] = {"personal": depth, "explore": k}
    page = interleave({"personal": best_first(), "explore": explored}, slots, excluded)
    at = []
    for served in page:  # the interleave's own records, completed (no second one each)
        if served.source == "explore":  # a pick, or a proposed item not served yet (at most k of them)
            r = names.index(served.item)
        else:
            served.source, r = served_as[served.item]
        served.score, served.top_feature = scores[r], tops[r]
        at.append(r)
    return page, encode_rows(rows[at])


def exploitation_slots(counts: Mapping[Source, int]) -> int:
    """The slots a ranked page's list fills: all but the explore slots."""
    return sum(counts.values()) - counts["explore"]


def _head(proposer: Proposer, default: int) -> int:
    return default if proposer.head is None else proposer.head


def _words(item: str, feature: str, features: PageFeatures) -> str:
    if feature in CATEGORY_WORDS and (category := features.favourite_category(item, feature)) is not None:
        return CATEGORY_WORDS[feature].format(category)
    return FEATURE_WORDS[feature]


def degraded_page(snapshot: Snapshot, limit: int, only: FeedFilter = NO_FILTER, now: float = 0.0) -> list[Served]:
    """Without Redis: the last known global popular list, minus what was last known unavailable, under the
    request's filter (judged on the items' last loaded categories and features)."""
    unavailable, categories = snapshot.unavailable, snapshot.categories
    items = (i for i in snapshot.overall if i not in unavailable and i not in only.exclude)
    if only.narrows:
        items = (i for i in items if only.admits(categories.get(i, now), categories.features(i)))
    return [Served(i, "popular", TRENDING_REASON) for i in itertools.islice(items, limit)]


def taste_weights(
    user: UserState, history: Sequence[tuple[float, Sequence[str]]], categories: Categories, now: float
) -> dict[str, float]:
    """category → summed weight of the TASTE_ITEMS most recent ``history`` rows in it (:func:`history_categories`),
    or 1 per seen item without a history; a disliked item (a negative weight, recstream/contracts/feedback.py) adds
    nothing."""
    weights: dict[str, float] = {}
    taste = history[:TASTE_ITEMS] or [(1.0, categories.get(item, now) or ()) for item in user.seen[:TASTE_ITEMS]]
    for weight, item_categories in taste:
        if weight < 0:
            continue
        for category in item_categories:
            weights[category] = weights.get(category, 0.0) + weight
    return weights


def favourite_categories(
    user: UserState, weights: dict[str, float], blocked: frozenset[str] | set[str] = frozenset()
) -> tuple[str, ...]:
    """Picked categories first, then the heaviest by taste (:func:`taste_weights`).

    At least FAVOURITE_CATEGORIES when history allows, every picked one always, blocked ones never.
    """
    ranked = sorted(weights, key=lambda c: (-weights[c], c))
    picks = [c for c in dict.fromkeys([*user.preferred, *ranked]) if c not in blocked]
    return tuple(picks[: max(FAVOURITE_CATEGORIES, len(user.preferred))])


def personal_proposer(user: UserState, excluded: Container[str], batch_depth: int = 0) -> Proposer:
    """The allowed (item, because_item) rows of the candidate list; with ``batch_depth``, the first that many allowed
    rows of it and of the batch list in turn, then (lazily: only a union short of its slots reads them) the rest of
    both in turn, each item at its first place, and the union takes the first part (``head``): as deep into each list
    whatever the other's exclusions (a batch list mostly seen must not hand the union the candidate list's deeper
    items, which rank worse: ``ranker_personal_depth``). Without a history item to name, a candidate comes from the
    onboarding picks (or nothing to say)."""
    rows = user.candidate_list()
    allowed = _allowed(rows, map(_FIRST, rows), excluded)
    if batch_depth and (batch := user.batch_list()):
        others, placed = _allowed(batch, map(_FIRST, batch), excluded), set()
        heads = itertools.islice(allowed, batch_depth), itertools.islice(others, batch_depth)
        head = list(first_places(alternated(*heads), placed))
        rest = first_places(alternated(allowed, others), placed)
        return Proposer(itertools.chain(head, rest), _personal_reason(user), len(head))
    return Proposer(allowed, _personal_reason(user))


def alternated(first: Iterable[_T], second: Iterable[_T]) -> Iterator[_T]:
    """first[0], second[0], first[1], second[1], …, then the longer one's rest, lazily.

    >>> list(alternated([1, 2, 3], [9]))
    [1, 9, 2, 3]
    """
    return (row for pair in itertools.zip_longest(first, second) for row in pair if row is not None)


def first_places(rows: Iterable[_R], placed: set[str]) -> Iterator[_R]:
    """The (item, …) rows in order whose item is not in ``placed`` yet, each added to it as it passes: each item's
    first row only, across several calls sharing ``placed``.

    >>> placed = set()
    >>> list(first_places([("a", 1), ("b", 9), ("a", 2)], placed)), list(first_places([("b", 0), ("c", 0)], placed))
    ([('a', 1), ('b', 9)], [('c', 0)])
    """
    for row in rows:
        if row[0] not in placed:
            placed.add(row[0])
            yield row


def _personal_reason(user: UserState) -> Callable[[str | None], str]:
    fallback = "picked from the categories you chose" if user.preferred and not user.warm else "picked for you"
    return lambda because: f"because you watched {because}" if because else fallback


def _allowed(rows: Iterable[_T], items: Iterable[str], excluded: Container[str]) -> Iterator[_T]:
    """The rows whose item (``items``, aligned with them) is not excluded, lazily, in C (compress and map)."""
    return itertools.compress(rows, map(operator.not_, map(excluded.__contains__, items)))


def popular(user: UserState, snapshot: Snapshot, lists: Popular | None, now: float) -> Iterator[Candidate]:
    """The segment's lists (None: the global list, until the snapshot has the segment); cold users: picked
    categories first."""
    segment = user.segment or DEFAULT_SEGMENT
    if lists is None:
        order, reason = snapshot.overall, TRENDING_REASON
    else:
        order = lists.warm if user.warm else lists.cold
        reason = POPULAR_REASON if segment != DEFAULT_SEGMENT else TRENDING_REASON
    picked = set() if user.warm else set(user.preferred)
    if not picked:
        return (Candidate(item, reason) for item in order)
    return _picked_first(order, picked, reason, snapshot.categories, now)


def _picked_first(
    order: Iterable[str], picked: set[str], reason: str, categories: Categories, now: float
) -> Iterator[Candidate]:
    """Onboarding shapes a cold feed at once: popular items in a picked category come first, in popular order."""
    rest = []
    for item in order:
        match = next((c for c in categories.get(item, now) or () if c in picked), None)
        if match is None:
            rest.append(item)
        else:
            yield Candidate(item, f"popular in {match}, which you picked")
    yield from (Candidate(item, reason) for item in rest)


def fresh_proposer(pool: Pool, favourites: Iterable[str], picked: Iterable[str], excluded: Container[str]) -> Proposer:
    """New items of the favourite categories merged newest first (Pool.newest: a head merged once per reload, then a
    lazy k-way merge), as allowed (item, category) pairs, those of the merged head found in C."""
    head, rest = pool.newest(favourites)
    allowed = itertools.chain(_allowed(head, map(_SECOND, head), excluded), (r for r in rest if r[1] not in excluded))
    return Proposer(map(_ITEM_CATEGORY, allowed), _fresh_reason(picked))


def _fresh_reason(picked: Iterable[str]) -> Callable[[str], str]:
    picked = set(picked)
    return lambda category: (
        f"new in {category}, {'which you picked' if category in picked else 'one of your favourite categories'}"
    )


def explore(
    pool: Pool, exclude: Exclusions, k: int, seed: int, settings: Settings
) -> tuple[list[Candidate], np.ndarray | None]:
    """The k best pool items by one Beta(α, β) draw each (excluded ones masked before the draw's top-k), and
    their draws θ (None under ε-greedy, which draws none: its picks are never gated).

    k exceeds the explore slots by the page size, so items other sources take first never leave
    the explore slots empty. The generator is seeded per request: same seed, same page.
    """
    policy = settings.blend.explore_policy
    if not pool.items or policy == "none":
        return [], None
    mask = np.zeros(len(pool.items), dtype=bool)
    mask[[pool.index[i] for i in pool.index.keys() & exclude.items]] = True  # the intersection runs in C
    for category in exclude.blocked:
        mask[pool.by_category.get(category, [])] = True
    if exclude.only.narrows:  # a filtered request: the pool's items one by one (the filter may name features)
        mask |= np.fromiter((item in exclude for item in pool.items), dtype=bool, count=len(pool.items))
    elif exclude.blocked or exclude.unsure:  # held back as the other sources hold them: a refused category may be
        mask[pool.uncategorized] = True  # theirs
    rng, theta = np.random.default_rng(seed), None
    if policy == "thompson":
        picks, theta = thompson_picks(pool.alpha, pool.beta, k, rng, exclude=mask)
    else:
        picks = choose_explore(
            policy, pool.alpha, pool.beta, k, rng, exclude=mask, epsilon=settings.blend.explore_epsilon
        )
    return [Candidate(pool.items[i], EXPLORE_REASON) for i in picks.tolist()], theta
