"""HNSW index over item factors (hnswlib), keyed by opaque string item ids.

Space: inner product ("ip", the default). ALS scores are dot products and factor norms
carry popularity, so the exact top-10 is a dot-product top-10; cosine ranks by angle and
retrieves a different set. Recall@10 against the exact dot top-10 at M=16,
ef_construction=200 (bench/ann_space.py, one thread):

    data                         ef   ip      cosine   µs/query (ip)
    ML-100K iALS, 1,682 items    100  0.999   0.437    ~50
    synthetic ALS-like, 20k      100  0.974   0.087    ~50
    Gaussian 64-d, 5k            100  0.967   0.667    ~60
    (ef 50: ip 0.87–0.99; ef 200: ip 0.993–1.0 at ~2× the time)

so "ip" with ef=100 is the default ("cosine" stays selectable, e.g. for normalized vectors).

One owner: hnswlib is not safe for a query concurrent with an insert, a resize or a
delete, so an `ItemIndex` belongs to one thread (the worker's event loop) and is never
shared; there is no lock here by design.

hnswlib quirks handled here: `ef` is not saved with the index (a loaded index searches
with ef = 10), so it is stored beside it and re-applied; `add_items` past `max_elements`
raises, so capacity grows geometrically before every add; re-adding an existing label
replaces its vector and un-deletes it; a query asking for more neighbours than it can
find raises, so k is capped at the live count; marked-deleted elements still route searches
but are never returned; which of exactly tied items a query returns depends on the graph, so on
the order they were added: two indexes of the same items may end a top-k in different tied items.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import hnswlib
import numpy as np

MIN_GROWTH = 1024  # capacity grows by max(this, half the current capacity)
INDEX_FILE, IDS_FILE = "index.bin", "index.json"


class ItemIndex:
    """Approximate top-k by inner product over item vectors, with string ids.

    >>> index = ItemIndex(dim=2, capacity=2)
    >>> index.add(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]))
    >>> [(item, round(score, 2)) for item, score in index.query(np.array([1.0, 0.2]), k=2, exclude={"a"})]
    [('c', 0.84), ('b', 0.2)]
    >>> index.mark_deleted("c")
    >>> [item for item, _ in index.query(np.array([1.0, 0.2]), k=2)]
    ['a', 'b']
    """

    def __init__(
        self,
        dim: int,
        space: str = "ip",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 100,
        capacity: int = MIN_GROWTH,
        num_threads: int = 1,
    ) -> None:
        if space not in ("ip", "cosine"):
            raise ValueError(f"space must be 'ip' or 'cosine', got {space!r}")
        index = hnswlib.Index(space=space, dim=dim)
        index.init_index(max_elements=max(capacity, 1), M=M, ef_construction=ef_construction)
        self._attach(index, ef, num_threads, ids=[], deleted=set())

    def _attach(self, index: hnswlib.Index, ef: int, num_threads: int, ids: list[str], deleted: set[int]) -> None:
        index.set_ef(ef)
        index.set_num_threads(num_threads)  # 1: builds are reproducible, the event loop keeps its core
        self._index = index
        self.ef = ef
        self._ids = ids  # label → id
        self._labels = {item_id: label for label, item_id in enumerate(ids)}  # id → label
        self._deleted = deleted

    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def space(self) -> str:
        return self._index.space

    @property
    def capacity(self) -> int:
        return self._index.get_max_elements()

    def __len__(self) -> int:
        """Live (not deleted) items."""
        return len(self._ids) - len(self._deleted)

    def __contains__(self, item_id: object) -> bool:
        label = self._labels.get(item_id)  # type: ignore[arg-type]
        return label is not None and label not in self._deleted

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert new ids, or replace the vector of (and un-delete) existing ones."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        labels = np.empty(len(ids), dtype=np.int64)
        for i, item_id in enumerate(ids):
            label = self._labels.get(item_id)
            if label is None:
                label = self._labels[item_id] = len(self._ids)
                self._ids.append(item_id)
            labels[i] = label
        needed = len(self._ids)
        if needed > self.capacity:
            self._index.resize_index(max(needed, self.capacity + max(MIN_GROWTH, self.capacity // 2)))
        self._index.add_items(vectors, labels)
        self._deleted.difference_update(labels.tolist())

    def mark_deleted(self, item_id: str) -> None:
        """Stop returning `item_id` (idempotent). Its node still routes searches."""
        label = self._labels[item_id]
        if label not in self._deleted:
            self._index.mark_deleted(label)
            self._deleted.add(label)

    def restore(self, item_id: str) -> None:
        """Return `item_id` again, with its last vector (idempotent)."""
        label = self._labels[item_id]
        if label in self._deleted:
            self._index.unmark_deleted(label)
            self._deleted.discard(label)

    def query(self, vector: np.ndarray, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to k (id, score) pairs, best first, never an excluded or deleted id.

        Score is the dot product for space "ip", the cosine for "cosine".
        """
        return self.query_batch(np.asarray(vector)[None, :], k, exclude)[0]

    def query_batch(
        self,
        vectors: np.ndarray,
        k: int,
        exclude: Collection[str] = (),
        exclude_per_row: Sequence[Collection[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """`query` for each row of `vectors`, excluding `exclude` and, per row, `exclude_per_row[i]`.

        Over-fetches by the largest number of excluded ids present, so exactly
        min(k, live − excluded) results survive each row's filter.
        """
        rows = exclude_per_row if exclude_per_row is not None else [()] * len(vectors)
        if len(rows) != len(vectors):
            raise ValueError("exclude_per_row needs one collection per vector")
        shared = {self._labels[i] for i in exclude if i in self}
        excluded = [shared | {self._labels[i] for i in row if i in self} for row in rows]
        fetch = min(k + max((len(e) for e in excluded), default=0), len(self))
        if fetch <= 0:
            return [[] for _ in range(len(vectors))]
        labels, distances = self._index.knn_query(np.asarray(vectors, dtype=np.float32), k=fetch)
        # vectorized filter: (row, label) pairs coded as row·n + label, one isin for the whole batch
        n = len(self._ids)
        codes = np.fromiter((r * n + lb for r, skip in enumerate(excluded) for lb in skip), dtype=np.int64)
        kept = ~np.isin(labels.astype(np.int64) + n * np.arange(len(labels))[:, None], codes)
        kept &= np.cumsum(kept, axis=1) <= k
        # every row's pairs made at once, in C (a Python frame per row and item was most of a worker's query cost),
        # then cut per row; 1 − d in float64 as Python computes it from the float32 distance: the same bits
        scores = 1.0 - distances[kept].astype(np.float64)
        pairs = list(zip(map(self._ids.__getitem__, labels[kept].tolist()), scores.tolist(), strict=True))
        ends = np.cumsum(kept.sum(axis=1)).tolist()
        return [pairs[a:b] for a, b in zip([0, *ends], ends, strict=False)]  # one more start than ends

    def save(self, directory: str | Path) -> None:
        """Write `index.bin` (hnswlib) and `index.json` (ids, deleted, parameters) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._index.save_index(str(directory / INDEX_FILE))
        meta = {
            "space": self.space,
            "dim": self.dim,
            "ef": self.ef,
            "capacity": self.capacity,
            "ids": self._ids,
            "deleted": sorted(self._deleted),
        }
        (directory / IDS_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str | Path, num_threads: int = 1) -> ItemIndex:
        directory = Path(directory)
        meta = json.loads((directory / IDS_FILE).read_text())
        index = hnswlib.Index(space=meta["space"], dim=meta["dim"])
        index.load_index(str(directory / INDEX_FILE), max_elements=meta["capacity"])
        loaded = cls.__new__(cls)
        loaded._attach(index, meta["ef"], num_threads, ids=list(meta["ids"]), deleted=set(meta["deleted"]))
        if index.element_count != len(loaded._ids) or len(loaded._labels) != len(loaded._ids):
            raise ValueError(
                f"{directory / INDEX_FILE} holds {index.element_count} elements, "
                f"{directory / IDS_FILE} lists {len(loaded._ids)} distinct ids"
            )
        return loaded
