"""Versioned model directories: what a batch train hands to the workers for a hot swap.

    <root>/<version>/manifest.json        format, version, creation time, sha256 of every file
                    item_factors.npy      (items, k) float32, row i ↔ item_ids[i]
                    item_ids.json
                    user_gram.npy         (k, k) float64 XᵀX of the batch user factors, for item fold-in
                    content_map.npz       ridge map and its category / feature vocabularies
                    index/index.bin       HNSW snapshot (hnswlib)
                    index/index.json      its id map, deleted ids, ef
                    config.json           ALSConfig
                    metrics.json          training report and evaluation figures
                    user_factors.npy      (users, k) float32, the batch fit's user vectors, row u ↔ user_ids[u]
                    user_ids.json         (both optional: a version written before them has none; the online
                                          user step's anchor, models/user_step.py, then pulls no user)

Version ids are `YYYYMMDDTHHMMSSZ.ffffff-<6 hex>` (UTC creation time to the microsecond, random
suffix), so they sort by time as strings, also two written within one second. The fraction follows
the `Z` so that the ids written before it had one, `YYYYMMDDTHHMMSSZ-<6 hex>`, stay valid and sort
before any later one (`-` sorts before `.`), and the first 16 characters are still the second
(what the reader's `version_created_at` parses). A version is written into a hidden temp directory beside it, fsynced,
then renamed into place: rename is atomic on POSIX, so a reader sees a whole version or
none. The manifest's checksums turn a damaged file into an error naming it instead of a
crash inside numpy or hnswlib; it must list exactly FILES, so none loads unchecked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from recstream.models.als import ALSConfig
from recstream.models.ann import IDS_FILE, INDEX_FILE, ItemIndex
from recstream.models.content_map import ContentMap

FORMAT = 1
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z(\.\d{6})?-[0-9a-f]{6}$")  # without the fraction: ids of before
MANIFEST = "manifest.json"
FILES = frozenset({"item_factors.npy", "item_ids.json", "user_gram.npy", "content_map.npz", f"index/{INDEX_FILE}",
                   f"index/{IDS_FILE}", "config.json", "metrics.json"})  # fmt: skip
"""The files of a version besides the manifest, each listed in it with its sha256."""
USER_FILES = frozenset({"user_factors.npy", "user_ids.json"})
"""The batch user vectors: listed in the manifest with the others, both or neither (versions written before them)."""
PRUNED = ".tmp-pruned-"
"""Prefix of a version being removed (:func:`prune_versions`)."""
T = TypeVar("T")


class ArtifactError(Exception):
    """A model version is missing, incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class ModelArtifacts:
    item_ids: list[str]
    item_factors: np.ndarray
    user_gram: np.ndarray  # XᵀX: the item fold-in's fixed-side Gram (`ALSStep(..., gram=user_gram)`)
    content_map: ContentMap
    index: ItemIndex
    config: ALSConfig
    metrics: dict[str, Any]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    user_ids: list[str] = field(default_factory=list)
    user_factors: np.ndarray | None = None  # (len(user_ids), k); None: the version has no user vectors

    def user_vector(self, user: str) -> np.ndarray | None:
        """The user's batch vector (a row of ``user_factors``), None when the fit did not know the user."""
        row = self._user_rows.get(user)
        return None if row is None or self.user_factors is None else self.user_factors[row]

    @functools.cached_property
    def _user_rows(self) -> dict[str, int]:
        return {user: row for row, user in enumerate(self.user_ids)}


def version_id(created_at: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ.ffffff-<6 hex>` from a timezone-aware time.

    >>> version_id(datetime(2026, 11, 23, 14, 25, 1, 2500, tzinfo=UTC))[:24]
    '20261123T142501Z.002500-'
    """
    return f"{created_at.astimezone(UTC):%Y%m%dT%H%M%SZ.%f}-{secrets.token_hex(3)}"


def write_model(root: str | Path, model: ModelArtifacts) -> str:
    """Write a new version under root atomically; returns its id."""
    _check_consistent(model, where=Path(root))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version_id(model.created_at)
    tmp = root / f".tmp-{version}"
    try:
        tmp.mkdir()
        np.save(tmp / "item_factors.npy", np.ascontiguousarray(model.item_factors, dtype=np.float32))
        (tmp / "item_ids.json").write_text(json.dumps(model.item_ids))
        np.save(tmp / "user_gram.npy", np.asarray(model.user_gram, dtype=np.float64))
        model.content_map.save(tmp / "content_map.npz")
        model.index.save(tmp / "index")
        (tmp / "config.json").write_text(model.config.model_dump_json(indent=2))
        (tmp / "metrics.json").write_text(json.dumps(model.metrics, indent=2, sort_keys=True))
        files = FILES
        if model.user_factors is not None:
            np.save(tmp / "user_factors.npy", np.ascontiguousarray(model.user_factors, dtype=np.float32))
            (tmp / "user_ids.json").write_text(json.dumps(model.user_ids))
            files = FILES | USER_FILES
        manifest = {
            "format": FORMAT,
            "version": version,
            "created_at": model.created_at.astimezone(UTC).isoformat(),
            "files": {name: _sha256(tmp / name) for name in sorted(files)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync_tree(tmp)
        tmp.rename(root / version)
        _fsync(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version


def check_writable(root: str | Path) -> None:
    """Whether :func:`write_model` can write under ``root``, checked without leaving anything behind: the nearest
    folder of ``root`` and its parents that exists must be one, and take a temporary folder. A root that is a file
    or cannot be written failed only in write_model, after the whole training, with a traceback. ArtifactError
    says why."""
    root = Path(root)
    existing = next(path for path in (root, *root.parents) if path.exists() or path.is_symlink())  # a dangling link
    if not existing.is_dir():
        raise ArtifactError(f"{existing} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".tmp-check-").cleanup()
    except OSError as exc:
        raise ArtifactError(f"cannot create a folder in {existing}: {exc.strerror or exc}") from None


def list_versions(root: str | Path) -> list[str]:
    """Complete versions under root, oldest first (temp directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name))


def prune_versions(root: str | Path, keep: int, protect: Collection[str | None] = ()) -> list[str]:
    """Delete every complete version under root but the ``keep`` newest and those in ``protect``; returns the deleted
    ones, oldest first. Every training writes a version and nothing else ever removed one, so a model folder grew
    by a model per retraining. Each goes in one rename first (to a temp name, which :func:`list_versions` skips),
    so no reader meets half a version; what a prune stopped between rename and removal left is removed by the next.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("20261201T000000Z-aaaaaa", "20261202T000000Z-bbbbbb", "20261203T000000Z-cccccc"):
    ...     (root / name).mkdir()
    >>> prune_versions(root, keep=1, protect={"20261201T000000Z-aaaaaa"}), list_versions(root)
    (['20261202T000000Z-bbbbbb'], ['20261201T000000Z-aaaaaa', '20261203T000000Z-cccccc'])
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    doomed = [version for version in list_versions(root)[:-keep] if version not in protect]
    for version in doomed:
        (root / version).rename(root / f"{PRUNED}{version}")
    for gone in root.glob(f"{PRUNED}*"):  # none under a root that does not exist
        shutil.rmtree(gone)
    return doomed


def latest_version(root: str | Path) -> str | None:
    """The newest version, or None when none has been written yet."""
    versions = list_versions(root)
    return versions[-1] if versions else None


def read_model(root: str | Path, version: str | None = None) -> ModelArtifacts:
    """Load a version (default: the latest), verifying every file against the manifest."""
    root = Path(root)
    version = version or latest_version(root)
    if version is None:
        raise ArtifactError(f"{root}: no model version")
    directory = root / version
    if not VERSION_PATTERN.match(version) or not directory.is_dir():
        raise ArtifactError(f"{directory}: no such model version")
    files, created_at = _manifest(directory / MANIFEST)
    for name, digest in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        if _sha256(path) != digest:
            raise ArtifactError(f"{path}: checksum mismatch (corrupt or modified)")
    model = ModelArtifacts(
        item_ids=_parse(directory / "item_ids.json", lambda p: json.loads(p.read_text())),
        item_factors=_parse(directory / "item_factors.npy", _matrix),
        user_gram=_parse(directory / "user_gram.npy", _matrix),
        content_map=_parse(directory / "content_map.npz", ContentMap.load),
        index=_parse(directory / "index" / "index.bin", lambda p: ItemIndex.load(p.parent)),
        config=_parse(directory / "config.json", lambda p: ALSConfig.model_validate_json(p.read_text())),
        metrics=_parse(directory / "metrics.json", lambda p: json.loads(p.read_text())),
        created_at=created_at,
        **(_users(directory) if set(files) >= USER_FILES else {}),
    )
    _check_consistent(model, where=directory)
    return model


def _users(directory: Path) -> dict[str, Any]:
    """The version's user ids and batch user vectors, as ModelArtifacts fields."""
    user_ids = _parse(directory / "user_ids.json", lambda p: json.loads(p.read_text()))
    if not isinstance(user_ids, list) or not all(isinstance(u, str) for u in user_ids):
        raise ArtifactError(f"{directory / 'user_ids.json'}: not a list of user ids")
    return {
        "user_ids": user_ids,
        "user_factors": _parse(directory / "user_factors.npy", _matrix),
    }


def _matrix(path: Path) -> np.ndarray:
    """A 2-D float array from a .npy file; ValueError for anything else (an archive, strings, a vector), which the
    checks after loading would meet as a crash instead of a file to name."""
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray) or array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError("not a 2-D array of floats")
    return array


def _manifest(path: Path) -> tuple[dict[str, str], datetime]:
    """The manifest's checksums and creation time; ArtifactError unless it has the format, lists exactly FILES, with
    or without USER_FILES (listing fewer would let the others load unchecked) and holds a timezone-aware ISO creation
    time."""
    manifest = _parse(path, lambda p: json.loads(p.read_text()))
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    files, created_at = manifest.get("files"), manifest.get("created_at")
    listed = set(files) if isinstance(files, dict) else None
    if listed not in (FILES, FILES | USER_FILES) or not all(isinstance(d, str) for d in files.values()):
        got = sorted(files) if isinstance(files, dict) else files
        raise ArtifactError(f"{path}: 'files' must map each of {sorted(FILES)} (and {sorted(USER_FILES)}, or neither) "
                            f"to its sha256, got {got!r}")  # fmt: skip
    try:
        created = datetime.fromisoformat(created_at) if isinstance(created_at, str) else None
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        raise ArtifactError(f"{path}: 'created_at' must be an ISO time with its offset, got {created_at!r}")
    return files, created


def _check_consistent(model: ModelArtifacts, where: Path) -> None:
    n, k = len(model.item_ids), model.config.factors
    live = len(model.index)
    unknown = live - sum(item_id in model.index for item_id in model.item_ids)  # the index's ids are distinct
    content = model.content_map
    content_arrays = (content.feature_mean, content.feature_scale, content.weights, content.intercept, content.default)
    checks = [
        (
            "item_factors.npy",
            model.item_factors.shape == (n, k),
            f"shape {model.item_factors.shape}, expected {(n, k)}",
        ),
        ("item_ids.json", len(set(model.item_ids)) == n, "duplicate item ids"),
        (
            "user_gram.npy",
            model.user_gram.shape == (k, k),
            f"shape {model.user_gram.shape}, expected {(k, k)}",
        ),
        ("content_map.npz", model.content_map.dim == k, f"dim {model.content_map.dim}, expected {k}"),
        (f"index/{INDEX_FILE}", model.index.dim == k, f"dim {model.index.dim}, expected {k}"),
        (f"index/{IDS_FILE}", unknown == 0, f"{unknown} of its {live} live ids are not in item_ids.json"),
        ("item_factors.npy", bool(np.isfinite(model.item_factors).all()), "holds NaN or infinity"),
        ("user_gram.npy", bool(np.isfinite(model.user_gram).all()), "holds NaN or infinity"),
        ("content_map.npz", all(np.isfinite(a).all() for a in content_arrays), "holds NaN or infinity"),
    ]
    if model.user_factors is None and model.user_ids:
        raise ArtifactError(f"{where / 'user_ids.json'}: user ids without their user_factors.npy")
    if model.user_factors is not None:
        users = len(model.user_ids)
        checks += [
            (
                "user_factors.npy",
                model.user_factors.shape == (users, k),
                f"shape {model.user_factors.shape}, expected {(users, k)}",
            ),
            ("user_ids.json", len(set(model.user_ids)) == users, "duplicate user ids"),
            ("user_factors.npy", bool(np.isfinite(model.user_factors).all()), "holds NaN or infinity"),
        ]
    for name, ok, problem in checks:
        if not ok:
            raise ArtifactError(f"{where / name}: {problem}")


def _parse(path: Path, load: Callable[[Path], T]) -> T:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return load(path)
    except Exception as exc:  # any parse failure becomes an error naming the file
        raise ArtifactError(f"{path}: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):  # files before their directories
        _fsync(path)
    _fsync(directory)
