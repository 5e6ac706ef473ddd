"""The worker's live model: user steps with fixed item factors, the item index, candidate lists.

One owner: every method runs on the worker's event loop without awaiting, so an hnswlib
query never overlaps an insert (hnswlib is not safe for that). A new model version is
loaded in a thread into a *new* :class:`Personalizer` and swapped in between batches, so
no batch ever sees half a model.

Per touched user and batch: history ← merge(history, events) (models/history.py);
x_u ← the exact user step over the history's known items (models/user_step.py), recent items weighing more
(models/als.history_confidence), pulled toward the user's batch vector when the model version has one;
candidates ← HNSW top-M by x_u·y_i, minus the history; each candidate carries the history
item most like it (argmax y_c·y_h) for the reader's "because you watched X". For a user the batch fit knew, the
batch list too: the same query by the fit's own vector x̄ (``user:<u>:bcand``), twice as long by default: x̄ reproduces
the fit's events, which the worker excludes only within the history cap and the reader within the seen cap, so for
a long history most of its head is consumed (``batch_candidates_m``); a user the version's fit did not know loses
an older version's (deleted at the user's next step). The step sees the recent history,
the fit every event of its window: where a user's taste holds still, the fit's list is the better one (shuffled
MovieLens: HR@10 0.288 against the step's 0.251), where it drifts the step's; the reader's ranker weighs the two
lists' positions (``als_rank``, ``batch_rank``) from the stream, so each deployment learns which to trust.

New items: a content vector at once; once graduated, the item fold-in over the users who
interacted with it, y_i = (XᵀX + λI + Σ_u (c_ui − 1) x_u x_uᵀ)⁻¹ Σ_u c_ui x_u with the model
version's XᵀX, replaces it (streams/live_model.py gathers the users and broadcasts the result).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import orjson
from recstream.models.als import confidence, event_weights, history_confidence
from recstream.models.artifacts import ModelArtifacts
from recstream.models.content_map import onboarding_vector
from recstream.models.history import History, history_rows, merge_history
from recstream.models.user_step import ALSStep
from recstream.streams import metrics

from recstream.contracts.events import Event, ItemEvent
from recstream.contracts.feedback import DEFAULT_FEEDBACK, FeedbackTypes
from recstream.store.state import DELETE

Blob = tuple[str, bytes]  # (key suffix under the prefix, value)
Exclusion = tuple[frozenset[str], int]  # (items a user's lists drop, extra results a search fetches for them)
SIMILAR_K = 20  # neighbours kept per item for the reader's similar-items route
EXPLAIN_RECENT = 20  # history items a "because you watched X" may name
FETCH_STEP = 25  # a candidate search over-fetches its exclusion count rounded up to this (see Personalizer._query)


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """What a batch of events does to its users: values to write, new histories (for the store's cache), and
    the timestamps of the events that refreshed a candidate list (for the click → candidates metric)."""

    blobs: list[Blob]
    histories: dict[str, History]
    refreshed_ts: list[int]
    item_users: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Users of items this model version was not trained on, in this batch: item → user → event weights in
    order (for the item's fold-in). Whether an item counts depends on the version alone, not on when the
    item feed applied it, so a restarted worker tracks what a clean run tracks."""


def encode_similar(neighbours: list[tuple[str, float]]) -> bytes:
    """The ``item:<i>:similar`` value: ``[[item, score], …]``, best first."""
    return orjson.dumps([[j, round(score, 5)] for j, score in neighbours])


class Personalizer:
    """User vectors and candidates for one model version, plus the items appended since."""

    def __init__(
        self,
        version: str,
        artifacts: ModelArtifacts,
        history_cap: int,
        candidates: int,
        feedback: FeedbackTypes = DEFAULT_FEEDBACK,
        batch_candidates: int | None = None,
    ) -> None:
        self.version = version
        self.feedback = feedback
        self.refreshing = feedback.with_role("positive", "negative")
        signed = feedback.signed_weight
        self.shown_and_clicked = max(signed[t] for t in feedback.views) + max(signed[t] for t in feedback.clicks)
        self.cfg = artifacts.config
        self.content_map = artifacts.content_map
        self.index = artifacts.index
        self.step = ALSStep(artifacts.item_factors, self.cfg.regularization, anchor=self.cfg.anchor)
        self.user_prior = artifacts.user_vector  # user → batch vector x̄ (None: unknown), the anchored step's prior
        k = artifacts.item_factors.shape[1]
        self.fold = ALSStep(np.empty((0, k), dtype=np.float32), self.cfg.regularization, gram=artifacts.user_gram)
        self.folded: dict[str, np.ndarray] = {}  # new item → its fold-in vector (replaces the content vector)
        self.rows = {item: row for row, item in enumerate(artifacts.item_ids)}
        self.trained = len(artifacts.item_ids)  # rows past this are appended content vectors
        self.history_cap = history_cap
        self.candidates = candidates
        self.batch_candidates = candidates if batch_candidates is None else batch_candidates
        self._ids = list(artifacts.item_ids)  # row → item; a list: appending a new item is O(1), not a copy

    # --- items ---------------------------------------------------------------------------

    def apply_item(self, item: ItemEvent) -> None:
        """Idempotent. New item → content vector appended to the index at once (a content update
        recomputes it, unless the item has its fold-in vector); unavailable → deleted from the
        index; available again → restored.
        """
        available = item.available and item.op != "remove"
        row = self.rows.get(item.item_id)
        if row is None and not available:
            return
        if row is None or row >= self.trained:
            vector = self.folded.get(item.item_id)
            if vector is None:
                vector = self.content_map.vector(item.categories, item.features).astype(np.float32)
            self._place(item.item_id, vector)
        if not available and item.item_id in self.index:
            self.index.mark_deleted(item.item_id)
        elif available and item.item_id not in self.index:
            self.index.restore(item.item_id)

    def fold_in(self, user_vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
        """A new item's vector from its users: the user step with roles swapped (models/user_step.py), the
        users' vectors fixed and c = confidence(summed weights), as in training; None when no user's weight is an
        observation (a zero sum is none: training drops it, models/als.interaction_matrix)."""
        weights = np.asarray(weights, dtype=np.float64)
        observed = weights != 0
        if not observed.any():
            return None
        return self.fold.solve_vectors(np.asarray(user_vectors)[observed], confidence(weights[observed], self.cfg))

    def apply_fold_in(self, item_id: str, vector: np.ndarray) -> bool:
        """Idempotent. The item's fold-in vector replaces its content vector (now, or when the item is
        announced); a trained item keeps its trained factor. Returns whether the vector is the item's."""
        row = self.rows.get(item_id)
        if row is not None and row < self.trained:
            return False
        vector = np.asarray(vector, dtype=np.float32)
        self.folded[item_id] = vector
        if row is not None:
            self._place(item_id, vector)
        return True

    def _place(self, item_id: str, vector: np.ndarray) -> None:
        """Append the item with ``vector``, or replace its vector; a deleted item stays deleted.

        Re-adding an unchanged vector is skipped on purpose: hnswlib re-links a replaced
        point, so the graph (and how exact ties among candidates break) would depend on how
        often an item was applied (the items agent and the item feed both apply it), and a
        restarted worker would not reproduce a clean run's candidate lists.
        """
        row = self.rows.get(item_id)
        if row is None:
            self.rows[item_id] = int(self.step.append(vector)[0])
            self._ids.append(item_id)
            self.index.add([item_id], vector[None, :])
            metrics.ITEM_INSERTS.inc()
        elif not np.array_equal(self.step.factors[row], vector):
            deleted = item_id not in self.index
            self.step.update(np.array([row]), vector[None, :])
            self.index.add([item_id], vector[None, :])  # hnswlib un-deletes a replaced point
            if deleted:
                self.index.mark_deleted(item_id)

    def similar(self, item_id: str) -> bytes | None:
        row = self.rows.get(item_id)
        if row is None:
            return None
        return encode_similar(self.index.query(self.step.factors[row], SIMILAR_K, exclude={item_id}))

    # --- users ---------------------------------------------------------------------------

    def update_users(self, events: Sequence[Event], histories: Mapping[str, History]) -> UserUpdate:
        """New history of every user in ``events`` (in stream order); new vector and candidates for
        users with a *refresh point* in the batch: an event of a positive or negative type (a click, a like, a
        dislike, …), or their very first event. Weights: models/als.event_weights, as batch training.

        An impression (a view) is a weak signal: it joins the history (and counts in the next
        step) but does not pay for a step and an index query on its own, which is what lets a
        worker keep up with live traffic (most events are views). The vector is computed from the
        history as it stood at the user's last refresh point, so it is the same function of the
        event sequence however the stream was cut into batches.
        """
        per_user: dict[str, list[tuple[str, float]]] = {}
        refresh_at: dict[str, tuple[int, int]] = {}  # user → (position in the user's events, ts)
        item_users: dict[str, dict[str, list[float]]] = {}
        weights = event_weights([e.type for e in events], [e.value for e in events], self.feedback).tolist()
        rows, trained, folded, refreshing = self.rows, self.trained, self.folded, self.refreshing
        for event, weight in zip(events, weights, strict=True):
            seq = per_user.setdefault(event.user_id, [])
            if event.type in refreshing or (not seq and not histories.get(event.user_id)):
                refresh_at[event.user_id] = (len(seq), event.ts)
            seq.append((event.item_id, weight))
            if rows.get(event.item_id, trained) >= trained and event.item_id not in folded:  # not trained
                item_users.setdefault(event.item_id, {}).setdefault(event.user_id, []).append(weight)
        blobs: list[Blob] = []
        new_histories: dict[str, History] = {}
        refreshed, at_refresh = [], []
        for user, seq in per_user.items():
            history = histories.get(user, {})
            if user in refresh_at:
                cut = refresh_at[user][0] + 1
                history = merge_history(history, seq[:cut], self.history_cap)
                refreshed.append(user)
                at_refresh.append(history)
                seq = seq[cut:]
            # no event after the refresh point: the history at it is the new one (no copy)
            new_histories[user] = merge_history(history, seq, self.history_cap) if seq else history
            blobs.append((f"user:{user}:hist", orjson.dumps(history_rows(new_histories[user]))))
        blobs += self._vectors_and_candidates(refreshed, at_refresh)
        return UserUpdate(blobs, new_histories, [ts for _, ts in refresh_at.values()], item_users)

    def onboard(self, picks: Mapping[str, list[str]]) -> list[Blob]:
        """Initial vector and candidates from picked categories, for users without history: each picked category
        is a pseudo-item shown and clicked (the heaviest CTR view and click types' weights: a view and a click)."""
        one_click = float(confidence(np.array(self.shown_and_clicked), self.cfg))
        users = list(picks)
        vectors = np.array([onboarding_vector(self.step, self.content_map, picks[u], one_click) for u in users])
        nothing = (frozenset[str](), 0)
        return self._store(users, vectors.reshape(len(users), self.step.dim), [nothing] * len(users),
                           [[] for _ in users])  # fmt: skip

    def _vectors_and_candidates(self, users: list[str], histories: list[History]) -> list[Blob]:
        """One exact step per user, all solved together (`ALSStep.solve_batch`: each user's vector is bit-identical
        to its step alone, whoever shares the batch, so a restarted worker reproduces a clean run's vectors)."""
        rows, weights, ranks, lengths, known, liked = [], [], [], [], [], []  # liked: never explains when disliked
        for history in histories:
            entries = [e for e in history_rows(history) if e[0] in self.rows]
            user_rows = [self.rows[item] for item, _ in entries]
            observed = [(row, weight) for row, (_, weight) in zip(user_rows, entries, strict=True) if weight != 0]
            rows += [row for row, _ in observed]  # a zero weight (an impression type of weight 0) is no observation:
            weights += [weight for _, weight in observed]  # training drops it too (models/als.interaction_matrix)
            ranks += range(len(observed))
            lengths.append(len(observed))
            known.append(user_rows)
            liked.append([row for row, (_, weight) in zip(user_rows, entries, strict=True) if weight >= 0])
        confidences = history_confidence(np.array(weights), self.cfg, np.array(ranks, dtype=np.intp))
        indptr = np.r_[0, np.cumsum(lengths, dtype=np.intp)]
        priors = [self.user_prior(user) for user in users]
        vectors = self.step.solve_batch(indptr, np.array(rows, dtype=np.intp), confidences, priors)
        exclusions = self._exclusions(known)  # both lists drop the same history
        blobs = self._store(users, vectors, exclusions, liked)
        fitted = [k for k, prior in enumerate(priors) if prior is not None]
        lists: dict[int, bytes] = {}  # row → the encoded batch list
        if fitted:  # the batch list, by the same rule from the fit's vector
            found = self._lists(np.array([priors[k] for k in fitted]), [exclusions[k] for k in fitted],
                                [liked[k] for k in fitted], self.batch_candidates)  # fmt: skip
            lists = {fitted[j]: orjson.dumps(rows) for j, rows in found.items()}
        # a user this version's fit did not know loses an older version's list (DELETE): the reader would rank by
        # it however old, and a rolling training window drops users for good
        return blobs + [(f"user:{user}:bcand", lists.get(k, DELETE)) for k, user in enumerate(users)]

    def _exclusions(self, history_rows: list[list[int]]) -> list[Exclusion]:
        """Per user, the history's items (a list drops them) and how many more results a search fetches for them:
        those in the index, rounded up to ``FETCH_STEP`` (see :meth:`_query`)."""
        ids, found = self._ids, []
        for rows in history_rows:
            items = frozenset(ids[row] for row in rows)
            present = sum(map(self.index.__contains__, items))
            found.append((items, min(-(-present // FETCH_STEP) * FETCH_STEP, self.history_cap)))
        return found

    def _store(
        self, users: list[str], vectors: np.ndarray, exclusions: list[Exclusion], because_rows: list[list[int]]
    ) -> list[Blob]:
        """Vector and candidates per user (:meth:`_lists`)."""
        blobs: list[Blob] = []
        for k, candidates in self._lists(vectors, exclusions, because_rows, self.candidates).items():
            blobs.append((f"user:{users[k]}:vec", vectors[k].astype("<f4").tobytes()))
            blobs.append((f"user:{users[k]}:cand", orjson.dumps(candidates)))
        return blobs

    def _lists(
        self, vectors: np.ndarray, exclusions: list[Exclusion], because_rows: list[list[int]], m: int
    ) -> dict[int, list[tuple]]:
        """Row → its top ``m`` candidates, for the rows with a vector (not all zero): they drop the row's excluded
        items, and each names its most similar item of ``because_rows`` (the history without disliked items)."""
        active = np.flatnonzero(vectors.any(axis=1)).tolist()
        if not active:
            return {}
        found = self._query(vectors[active], [exclusions[k] for k in active], m)
        return dict(zip(active, self._explain(found, [because_rows[k] for k in active]), strict=True))

    def _query(self, vectors: np.ndarray, exclusions: list[Exclusion], m: int) -> list[list[tuple[str, float]]]:
        """Top-m per row minus that row's exclusions (its history), each row a function of its own vector and history.

        Why not one ``query_batch`` with exclusions: it fetches k + the largest exclusion count among its rows and
        hnswlib searches with ef = max(ef, fetch), so a row beside a longer history searched wider, and which of
        several exactly tied items (new items with the same content vector) made its list depended on its batch
        neighbours: a restarted worker did not reproduce a clean run. Here a row fetches m + its own exclusion
        count rounded up to ``FETCH_STEP`` (a few searches per batch, not one per count; never more than the history
        cap, which bounds the count; :meth:`_exclusions`) and drops its exclusions.
        """
        groups: dict[int, list[int]] = {}
        for k, (_, extra) in enumerate(exclusions):
            groups.setdefault(extra, []).append(k)
        found: list[list[tuple[str, float]]] = [[] for _ in exclusions]
        for extra, rows in groups.items():
            for k, hits in zip(rows, self._search(vectors[rows], m + extra), strict=True):
                skip = exclusions[k][0]
                found[k] = [hit for hit in hits if hit[0] not in skip][:m]
        return found

    def _search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """``index.query_batch(vectors, k)``, asking for fewer results for a row hnswlib cannot fill.

        hnswlib raises rather than return fewer than k, which happens when many items share one vector
        (new items with the same content) and the graph around them is poorly connected: measured on the
        kill test's world with the tuned defaults, every search for 60 or more failed. The worker would
        fail that batch on every retry. Such a row is searched alone with k halved until the search
        succeeds: a shorter list, and still a function of that row alone.
        """
        try:
            return self.index.query_batch(vectors, k)
        except RuntimeError as exc:
            if "contiguous 2D array" not in str(exc):  # hnswlib's "Cannot return the results in a contiguous ..."
                raise
            if len(vectors) > 1:
                return [hits for row in vectors for hits in self._search(row[None, :], k)]
            return self._search(vectors, k // 2) if k > 1 else [[]]

    def _explain(self, found: list[list[tuple[str, float]]], history_rows: list[list[int]]) -> list[list[tuple]]:
        """Per user, [(item, score, because)]: because = the recent history item whose factor is most like the
        candidate's (among the last ``EXPLAIN_RECENT``: a reason the user remembers, and a bounded cost).

        Users with as many candidates and as many recent items share one stacked matmul: numpy makes the same
        BLAS call per user, with the same shapes and strides, as a matmul of that user alone, so every product,
        and which of tied items argmax names, is the same bit for bit. (One padded product would change the
        shapes BLAS sees, and with them the rounding.)
        """
        bounds = np.cumsum([0] + [len(hits) for hits in found]).tolist()  # user j: candidates bounds[j]:bounds[j + 1]
        items = [item for hits in found for item, _ in hits]
        scores = np.round([score for hits in found for _, score in hits], 5).tolist()
        recent = [rows[:EXPLAIN_RECENT] for rows in history_rows]
        shapes: dict[tuple[int, int], list[int]] = {}
        for j, hits in enumerate(found):
            if hits and recent[j]:
                shapes.setdefault((len(hits), len(recent[j])), []).append(j)
        factors = self.step.factors
        cand_rows = np.fromiter(map(self.rows.__getitem__, items), dtype=np.intp, count=len(items))
        nearest = np.full(len(items), -1)  # candidate → row of its because item; −1: no history to name
        for (m, _), users in shapes.items():
            at = np.asarray(bounds)[users][:, None] + np.arange(m)  # (users, m) positions of their candidates
            hist = np.array([recent[j] for j in users], dtype=np.intp)
            products = factors[cand_rows[at]] @ factors[hist].transpose(0, 2, 1)
            nearest[at] = np.take_along_axis(hist, np.argmax(products, axis=2), axis=1)
        ids = self._ids
        because = [None if row < 0 else ids[row] for row in nearest.tolist()]
        return [list(zip(items[a:b], scores[a:b], because[a:b], strict=True)) for a, b in pairwise(bounds)]
