"""Blending: slot counts from shares, then a deterministic interleave of ranked per-source lists.

Pure (no Redis, no I/O), so every rule of the feed page is unit-testable: a page never holds an
item twice, never an excluded one (seen, served earlier in the session, unavailable, not
interested), and filtering happens while slots are filled, so a source whose head is filtered
moves on to its next item instead of leaving the page short. For warm users the popular list's
head is ordered by the user's own candidate list first (:func:`personal_first`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Source = Literal["personal", "popular", "fresh", "explore"]
SOURCES: tuple[Source, ...] = ("personal", "popular", "fresh", "explore")
"""Every source, in the order that breaks ties between equally-owed sources."""
OVERFLOW: tuple[Source, ...] = ("personal", "popular", "fresh")
"""Who takes the slots of a source that ran dry, first with items left wins: personal first (on MovieLens
its positions 7–10 earned ~0.016 HR@10 each against ~0.005 for a popular slot, bench/prequential.py), never
explore (its cap holds)."""


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs ~3×, and a page makes ~200 of these
class Candidate:
    item: str
    reason: str


@dataclass(slots=True, unsafe_hash=True)  # not frozen (see Candidate), hashed by value: the ranked page completes the
class Served:  # interleave's records (source, score, top feature) before anything hashes them; nothing else mutates
    """A page's item: the source it fills a slot of and why; on a ranked page its click probability and the
    feature that raised it most (serving/ranking.py)."""

    item: str
    source: Source
    reason: str
    score: float | None = None
    top_feature: str | None = None


def slot_counts(shares: Mapping[Source, float], n: int, explore_cap: float) -> dict[Source, int]:
    """Integer slots per source for a page of `n`: explore first, capped, then the rest by largest remainder.

    explore = min(⌊n·w_e + ½⌋, ⌊n·cap⌋) with w the shares normalized to sum 1; the other n − explore
    slots split in proportion to their shares, leftover slots to the largest fractional parts
    (ties in SOURCES order). The cap bounds how much CTR exploration can cost whatever the config.

    >>> slot_counts({"personal": 0.6, "popular": 0.2, "fresh": 0.1, "explore": 0.1}, 20, explore_cap=0.25)
    {'personal': 12, 'popular': 4, 'fresh': 2, 'explore': 2}
    >>> slot_counts({"personal": 0.0, "popular": 0.5, "fresh": 0.0, "explore": 0.5}, 10, explore_cap=0.25)
    {'personal': 0, 'popular': 8, 'fresh': 0, 'explore': 2}
    >>> slot_counts({"personal": 0.7, "popular": 0.1, "fresh": 0.1, "explore": 0.1}, 3, explore_cap=0.25)
    {'personal': 3, 'popular': 0, 'fresh': 0, 'explore': 0}
    """
    total = sum(shares.get(s, 0.0) for s in SOURCES)
    if n <= 0 or total <= 0:
        return {s: (n if s == "popular" else 0) for s in SOURCES} if n > 0 else dict.fromkeys(SOURCES, 0)
    explore = min(math.floor(_exact(n * shares.get("explore", 0.0) / total) + 0.5), math.floor(_exact(n * explore_cap)))
    rest = [s for s in SOURCES if s != "explore"]
    rest_total = sum(shares.get(s, 0.0) for s in rest)
    if rest_total <= 0:  # only explore was configured: the capped remainder goes to popular
        return {**dict.fromkeys(rest, 0), "popular": n - explore, "explore": explore}
    quotas = {s: _exact((n - explore) * shares.get(s, 0.0) / rest_total) for s in rest}
    counts = {s: math.floor(q) for s, q in quotas.items()}
    by_remainder = sorted(rest, key=lambda s: (-_exact(quotas[s] - counts[s]), SOURCES.index(s)))
    for s in by_remainder[: n - explore - sum(counts.values())]:
        counts[s] += 1
    return {**counts, "explore": explore}


def _exact(x: float) -> float:
    """``x`` rounded to 9 decimals: a share's float arithmetic is off in the last bits (0.7 + 0.1 + 0.1 is
    0.8999999999999999), which decided ties the rule breaks in SOURCES order and floors of whole quotas.

    >>> 3 * 0.1 / (0.7 + 0.1 + 0.1), _exact(3 * 0.1 / (0.7 + 0.1 + 0.1))
    (0.3333333333333334, 0.333333333)
    """
    return round(x, 9)


def personal_first(
    popular: Iterable[Candidate], personal: Iterable[str] | Mapping[str, int], head: int
) -> Iterator[Candidate]:
    """The popular list with its first ``head`` items reordered: those also on the user's personal list first,
    in that list's order, then the other head items and the rest of the list in popular order.

    Why: a popular slot is a hedge on what people like the user enjoy; among the segment's most popular
    items, those the user's own model also ranks are the better hedge. Every item still comes from the
    segment's popular ranking and keeps its reason; only the order within its head changes, so popular
    slots stay popular. On MovieLens (bench/prequential.py, both blends in one run) the 2.1 popular slots
    per feed earned HR@10 0.0084 by smoothed CTR alone and 0.0286 with head 50: served feed 0.1815 → 0.1959,
    86% → 93% of the candidate list's 0.2103 (head 20: 0.1927, 100: 0.2008). The default is 100 since the ranked
    pages' validation (MovieLens' served HR@10 0.1898 → 0.1942, the closed-loop worlds' ranked rows unchanged
    within noise; the fixed blend lost ~0.1 regret a feed in the fresh world, BENCHMARKS.md, sixteenth round).
    ``head`` 0 keeps the popular order (for cold users, whose picks come first). ``personal`` may be given as
    item → its first position (serving/user_state.UserState.candidate_positions, parsed once per request).

    >>> pop = [Candidate(i, "popular") for i in "abcdef"]
    >>> [c.item for c in personal_first(pop, ["x", "d", "b"], head=4)]
    ['d', 'b', 'a', 'c', 'e', 'f']
    >>> [c.item for c in personal_first(pop, {"x": 0, "d": 1, "b": 2}, head=4)]
    ['d', 'b', 'a', 'c', 'e', 'f']
    """
    ranked = iter(popular)
    if head <= 0:
        return ranked
    top = list(itertools.islice(ranked, head))
    if isinstance(personal, Mapping):
        rank = personal
    else:
        rank = {}
        for r, item in enumerate(personal):
            rank.setdefault(item, r)
    both = sorted((c for c in top if c.item in rank), key=lambda c: rank[c.item])
    return itertools.chain(both, (c for c in top if c.item not in rank), ranked)


def interleave(
    ranked: Mapping[Source, Iterable[Candidate]],
    counts: Mapping[Source, int],
    exclude: Container[str] = frozenset(),
    overflow: Sequence[Source] = OVERFLOW,
) -> list[Served]:
    """Fill sum(counts) positions from ranked per-source lists, deterministically by position.

    Position p (1-based) goes to the open source furthest behind its quota, argmax_s
    quota_s·p/n − taken_s (compared ×n in integers, so ties are exact; ties go in SOURCES order):
    a page of 12/4/2/2 spreads popular, fresh and explore evenly instead of bunching them at the end.
    Each source serves its best item that is neither excluded nor already on the page. A source
    that runs dry hands its remaining slots to the first ``overflow`` source with items left; the page
    is short only when no such source exists. Lists are consumed lazily: a long list costs only
    what is taken from it.

    >>> ranked = {"personal": [Candidate("a", "p"), Candidate("b", "p")], "popular": [Candidate("a", "q"),
    ...           Candidate("c", "q"), Candidate("d", "q")]}
    >>> [(s.item, s.source) for s in interleave(ranked, {"personal": 2, "popular": 1, "explore": 1}, {"b"})]
    [('a', 'personal'), ('c', 'popular'), ('d', 'popular')]
    """
    n = sum(counts.values())
    quota = {s: counts.get(s, 0) for s in SOURCES}
    taken = dict.fromkeys(SOURCES, 0)
    allowed: dict[Source, Iterator[Candidate]] = {
        s: (c for c in ranked.get(s, ()) if c.item not in exclude) for s in SOURCES
    }
    heads: dict[Source, Candidate | None] = dict.fromkeys(SOURCES)
    used: set[str] = set()

    def head(s: Source) -> Candidate | None:
        current = heads[s]
        while current is None or current.item in used:
            current = next(allowed[s], None)
            if current is None:
                break
        heads[s] = current
        return current

    page: list[Served] = []
    slotted = [s for s in SOURCES if quota[s] > 0]  # only these can be open (a ranked page has two)
    while len(page) < n:
        p, source, behind = len(page) + 1, None, 0
        for s in slotted:  # the open source furthest behind; strict > keeps the first on ties
            if taken[s] < quota[s] and (source is None or quota[s] * p - taken[s] * n > behind):
                source, behind = s, quota[s] * p - taken[s] * n  # exact integers
        if source is None:
            break
        candidate = head(source)
        if candidate is None:  # dry: its remaining slots move to an overflow source with items left
            spare = quota[source] - taken[source]
            quota[source] = taken[source]
            heir = next((s for s in overflow if s != source and head(s) is not None), None)
            if heir is not None:
                quota[heir] += spare
                slotted = [s for s in SOURCES if quota[s] > 0]
            continue
        page.append(Served(candidate.item, source, candidate.reason))
        used.add(candidate.item)
        taken[source] += 1
        heads[source] = None
    return page
