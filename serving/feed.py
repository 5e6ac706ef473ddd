"""One feed page from a user's state and the shared snapshot: the four ranked sources, then the blend.

Pure (no Redis): ``build_page`` is what the feed route runs between its read and its write, and
what the unit tests drive directly.

Sources, each a ranked list explained item by item:

* **personal** — the workers' candidate list ``user:<u>:cand``, best first ("because you watched X");
* **popular** — the segment's items by P(i|s) for warm users; for cold users by
  λ·P(i|s) + (1−λ)·P(i|global), with the categories they picked at onboarding first;
* **fresh** — new (pool) items in the user's favourite categories, newest first: the categories
  they picked, then those weighing most in their recent history;
* **explore** — Thompson sampling (or ε-greedy) over the new-item pool: one Beta(α, β) draw per
  item, vectorized, from a generator seeded per request.

Under an experiment, ``settings`` are the user's variant's (serving/variants.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from recstream.models.bandit import choose_explore
from recstream.serving.blend import Candidate, Served, Source, interleave, personal_first, slot_counts
from recstream.serving.snapshot import Categories, Pool, Snapshot
from recstream.serving.user_state import UserState

from recstream.contracts.settings import Settings

DEFAULT_SEGMENT = "default"
"""recstream.contracts.events.segment_of's answer for unknown attributes; the workers count such users there."""
FAVOURITE_CATEGORIES = 3
TASTE_ITEMS = 20
"""Most recent history items whose categories decide the favourite ones: recent taste, bounded cost."""
EXPLORE_REASON = "new — we're exploring it"
POPULAR_REASON = "popular with people like you"
TRENDING_REASON = "popular right now"


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Served]
    warm: bool


class Exclusions:
    """What this user's page must not hold: seen, served in the session, unavailable, not interested.

    A "not interested" entry is an item id, or a category when some item carries it. With blocked
    categories, an item whose categories are not known yet is held back rather than risked.
    """

    __slots__ = ("_categories", "_now", "blocked", "items", "unavailable")

    def __init__(self, user: UserState, snapshot: Snapshot, now: float) -> None:
        self.items = {*user.seen, *user.served, *user.not_interested}
        self.unavailable = snapshot.unavailable
        self.blocked = user.not_interested.intersection(snapshot.categories.known)
        self._categories = snapshot.categories
        self._now = now

    def __contains__(self, item: object) -> bool:
        if item in self.items or item in self.unavailable:
            return True
        if self.blocked:
            categories = self._categories.get(item, self._now)  # type: ignore[arg-type]
            return categories is None or not self.blocked.isdisjoint(categories)
        return False


def build_page(user: UserState, snapshot: Snapshot, settings: Settings, limit: int, seed: int, now: float) -> Page:
    """The blended page: slot counts from the configured shares (explore capped), then the interleave."""
    exclude = Exclusions(user, snapshot, now)
    shares: dict[Source, float] = {
        "personal": settings.blend.share_personal,
        "popular": settings.blend.share_popular,
        "fresh": settings.blend.share_fresh,
        "explore": 0.0 if settings.blend.explore_policy == "none" else settings.blend.share_explore,
    }
    counts = slot_counts(shares, limit, settings.blend.explore_max_share)
    favourites = favourite_categories(user, snapshot.categories, now, exclude.blocked)
    ranked: dict[Source, Iterable[Candidate]] = {
        "personal": personal(user),
        "popular": personal_first(
            popular(user, snapshot, now),
            (item for item, _ in user.candidates()),
            settings.blend.popular_personal_head if user.warm else 0,
        ),
        "fresh": fresh(snapshot.pool, favourites, user.preferred),
        "explore": explore(snapshot.pool, exclude, counts["explore"] + limit, seed, settings)
        if counts["explore"]
        else (),
    }
    return Page(interleave(ranked, counts, exclude), user.warm)


def degraded_page(snapshot: Snapshot, limit: int) -> list[Served]:
    """Without Redis: the last known global popular list, minus what was last known unavailable."""
    items = (i for i in snapshot.overall if i not in snapshot.unavailable)
    return [Served(i, "popular", TRENDING_REASON) for i in itertools.islice(items, limit)]


def favourite_categories(
    user: UserState, categories: Categories, now: float, blocked: frozenset[str] | set[str] = frozenset()
) -> tuple[str, ...]:
    """Picked categories first, then the heaviest in recent history (its weights, or 1 per seen item).

    At least FAVOURITE_CATEGORIES when history allows, every picked one always, blocked ones never.
    """
    weights: dict[str, float] = {}
    taste = user.history(TASTE_ITEMS) or [(item, 1.0) for item in user.seen[:TASTE_ITEMS]]
    for item, weight in taste:
        for category in categories.get(item, now) or ():
            weights[category] = weights.get(category, 0.0) + weight
    ranked = sorted(weights, key=lambda c: (-weights[c], c))
    picks = [c for c in dict.fromkeys([*user.preferred, *ranked]) if c not in blocked]
    return tuple(picks[: max(FAVOURITE_CATEGORIES, len(user.preferred))])


def personal(user: UserState) -> Iterator[Candidate]:
    """Without a history item to name, a candidate comes from the onboarding picks (or nothing to say)."""
    fallback = "picked from the categories you chose" if user.preferred and not user.warm else "picked for you"
    for item, because in user.candidates():
        yield Candidate(item, f"because you watched {because}" if because else fallback)


def popular(user: UserState, snapshot: Snapshot, now: float) -> Iterator[Candidate]:
    """The segment's list (the global one until the snapshot has the segment); cold users: picked categories first."""
    segment = user.segment or DEFAULT_SEGMENT
    lists = snapshot.segments.get(segment)
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


def fresh(pool: Pool, favourites: Iterable[str], picked: Iterable[str]) -> Iterator[Candidate]:
    """New items of the favourite categories merged newest first (a lazy k-way merge)."""
    picked = set(picked)
    lists = [_tagged(pool.fresh.get(category, ()), category) for category in favourites]
    for _, item, category in heapq.merge(*lists):
        why = "which you picked" if category in picked else "one of your favourite categories"
        yield Candidate(item, f"new in {category}, {why}")


def _tagged(rows: Iterable[tuple[int, str]], category: str) -> Iterator[tuple[int, str, str]]:
    return ((neg_created, item, category) for neg_created, item in rows)


def explore(pool: Pool, exclude: Exclusions, k: int, seed: int, settings: Settings) -> list[Candidate]:
    """The k best pool items by one Beta(α, β) draw each (excluded ones masked before the draw's top-k).

    k exceeds the explore slots by the page size, so items other sources take first never leave
    the explore slots empty. The generator is seeded per request: same seed, same page.
    """
    if not pool.items or settings.blend.explore_policy == "none":
        return []
    mask = np.zeros(len(pool.items), dtype=bool)
    mask[[i for i in map(pool.index.get, exclude.items) if i is not None]] = True
    for category in exclude.blocked:
        mask[pool.by_category.get(category, [])] = True
    picks = choose_explore(
        settings.blend.explore_policy,
        pool.alpha,
        pool.beta,
        k,
        np.random.default_rng(seed),
        exclude=mask,
        epsilon=settings.blend.explore_epsilon,
    )
    return [Candidate(pool.items[i], EXPLORE_REASON) for i in picks.tolist()]
