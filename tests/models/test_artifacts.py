from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from recstream.models.als import ALSConfig
from recstream.models.ann import ItemIndex
from recstream.models.artifacts import (
    FILES,
    MANIFEST,
    PRUNED,
    USER_FILES,
    ArtifactError,
    ModelArtifacts,
    check_writable,
    latest_version,
    list_versions,
    prune_versions,
    read_model,
    write_model,
)
from recstream.models.content_map import fit_content_map

K = 4


def _model(created_at: datetime | None = None, n_items: int = 30, n_users: int = 12) -> ModelArtifacts:
    """A small model; ``n_users`` 0: a version without user vectors (as written before they were kept)."""
    rng = np.random.default_rng(0)
    ids = [f"movie-{i}" for i in range(n_items)]
    factors = rng.standard_normal((n_items, K)).astype(np.float32)
    categories = [["drama"] if i % 2 else ["comedy", "drama"] for i in range(n_items)]
    index = ItemIndex(K, capacity=n_items)
    index.add(ids, factors)
    index.mark_deleted(ids[0])
    return ModelArtifacts(
        item_ids=ids,
        item_factors=factors,
        user_gram=np.eye(K) * 3.0,
        content_map=fit_content_map(categories, factors, [{"year": 1990.0 + i} for i in range(n_items)]),
        index=index,
        config=ALSConfig(factors=K, alpha=7.0),
        metrics={"users": 10, "loss": 0.25},
        **({"created_at": created_at} if created_at else {}),
        **({"user_ids": [f"user-{u}" for u in range(n_users)],
            "user_factors": rng.standard_normal((n_users, K)).astype(np.float32)} if n_users else {}),
    )  # fmt: skip


def _rehash(directory: Path, name: str) -> None:
    """The manifest's checksum of a file rewritten on purpose, so that only its content is wrong."""
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_round_trip(tmp_path):
    model = _model()
    version = write_model(tmp_path, model)
    loaded = read_model(tmp_path, version)
    assert loaded.item_ids == model.item_ids and loaded.config == model.config
    assert loaded.metrics == model.metrics and loaded.created_at == model.created_at
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    np.testing.assert_array_equal(loaded.user_gram, model.user_gram)
    np.testing.assert_array_equal(loaded.content_map.vector(["comedy"]), model.content_map.vector(["comedy"]))
    assert loaded.index.query_batch(model.item_factors, k=5) == model.index.query_batch(model.item_factors, k=5)
    assert model.item_ids[0] not in loaded.index
    assert loaded.user_ids == model.user_ids and len(loaded.user_ids) == 12
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)


def test_a_version_without_user_vectors_holds_only_the_other_files_and_loads_without_them(tmp_path):
    """Versions written before the batch user vectors were kept stay loadable: their users are simply not anchored."""
    version = write_model(tmp_path, _model(n_users=0))
    on_disk = {p.relative_to(tmp_path / version).as_posix() for p in (tmp_path / version).rglob("*") if p.is_file()}
    assert on_disk == FILES | {MANIFEST}
    loaded = read_model(tmp_path, version)
    assert loaded.user_factors is None and loaded.user_ids == []


def test_versions_sort_by_creation_time(tmp_path):
    start = datetime(2026, 11, 23, 14, 25, 1, tzinfo=UTC)
    written = [write_model(tmp_path, _model(start + timedelta(seconds=s))) for s in (3600, 0, 60)]
    assert list_versions(tmp_path) == [written[1], written[2], written[0]]
    assert latest_version(tmp_path) == written[0] and written[0].startswith("20261123T152501Z.000000-")
    assert read_model(tmp_path).created_at == start + timedelta(seconds=3600)  # default: the latest


def test_failed_write_leaves_no_version_and_no_temp_dir(tmp_path, monkeypatch):
    def broken_save(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ItemIndex, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_model(tmp_path, _model())
    assert list_versions(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_half_written_temp_dir_is_invisible(tmp_path):
    (tmp_path / ".tmp-20261123T142501Z-abcdef").mkdir()
    assert list_versions(tmp_path) == [] and latest_version(tmp_path) is None
    with pytest.raises(ArtifactError, match="no model version"):
        read_model(tmp_path)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
@pytest.mark.parametrize(
    "name",
    ["metrics.json", "content_map.npz", "index/index.bin", "item_factors.npy", "user_gram.npy", "user_factors.npy",
     "user_ids.json"],
)  # fmt: skip
def test_bad_or_missing_file_is_named(tmp_path, name, damage):
    version = write_model(tmp_path, _model())
    path = tmp_path / version / name
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    else:
        path.unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        read_model(tmp_path, version)


def test_missing_manifest_is_named(tmp_path):
    version = write_model(tmp_path, _model())
    (tmp_path / version / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        read_model(tmp_path, version)


@pytest.mark.parametrize(("name", "value"), [("item_factors", np.nan), ("user_gram", np.inf), ("user_factors", np.nan)])
def test_a_model_holding_nan_or_infinity_is_refused_before_writing(tmp_path, name, value):
    """A NaN factor made every user step NaN (and a NaN score refused by Redis' ZADD mid-script)."""
    model = _model()
    array = getattr(model, name).copy()
    array[1, 1] = value
    with pytest.raises(ArtifactError, match=rf"{name}\.npy: holds NaN or infinity"):
        write_model(tmp_path, ModelArtifacts(**{**model.__dict__, name: array}))
    assert list_versions(tmp_path) == []


def test_inconsistent_model_is_refused_before_writing(tmp_path):
    model = _model()
    bad = ModelArtifacts(**{**model.__dict__, "item_factors": model.item_factors[:, :2]})
    with pytest.raises(ArtifactError, match=r"item_factors\.npy: shape"):
        write_model(tmp_path, bad)
    assert list_versions(tmp_path) == []


def test_two_versions_of_one_second_sort_by_time(tmp_path):
    """Ids had one-second resolution: within a second the random suffix decided which one was the latest."""
    start = datetime(2026, 11, 23, 14, 25, 1, tzinfo=UTC)
    for pair in range(16):  # a random suffix orders a pair right half the time: 16 pairs, in both write orders
        older = start + timedelta(minutes=pair)
        newer = older + timedelta(microseconds=1)
        for created in (older, newer) if pair % 2 else (newer, older):
            write_model(tmp_path, _model(created))
        assert read_model(tmp_path).created_at == newer  # the latest version


def test_an_id_of_the_old_format_stays_readable_and_sorts_before_a_later_one(tmp_path):
    """Ids written before the fraction (`YYYYMMDDTHHMMSSZ-<6 hex>`) are still versions, older than any written later,
    even within their second."""
    created = datetime(2026, 11, 23, 14, 25, 1, tzinfo=UTC)
    old = "20261123T142501Z-abcdef"
    (tmp_path / write_model(tmp_path, _model(created))).rename(tmp_path / old)
    new = write_model(tmp_path, _model(created + timedelta(microseconds=999_999)))
    assert new.startswith("20261123T142501Z.999999-")
    assert list_versions(tmp_path) == [old, new] and latest_version(tmp_path) == new
    assert read_model(tmp_path, old).created_at == created


def test_a_version_holds_exactly_the_files_its_manifest_lists(tmp_path):
    version = write_model(tmp_path, _model())
    on_disk = {p.relative_to(tmp_path / version).as_posix() for p in (tmp_path / version).rglob("*") if p.is_file()}
    assert on_disk == FILES | USER_FILES | {MANIFEST}
    assert set(json.loads((tmp_path / version / MANIFEST).read_text())["files"]) == FILES | USER_FILES


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"user_ids": ["user-0"] * 12}, r"user_ids\.json: duplicate user ids"),
        ({"user_ids": [f"user-{u}" for u in range(11)]}, r"user_factors\.npy: shape \(12, 4\), expected \(11, 4\)"),
    ],
)
def test_user_vectors_that_do_not_match_their_ids_are_refused_before_writing(tmp_path, edit, problem):
    with pytest.raises(ArtifactError, match=problem):
        write_model(tmp_path, dataclasses.replace(_model(), **edit))
    assert list_versions(tmp_path) == []


def test_user_ids_without_user_vectors_are_refused_before_writing(tmp_path):
    with pytest.raises(ArtifactError, match=r"user_ids\.json: user ids without their user_factors\.npy"):
        write_model(tmp_path, dataclasses.replace(_model(), user_factors=None))
    assert list_versions(tmp_path) == []


@pytest.mark.parametrize("name", ["item_factors.npy", "user_gram.npy", "user_factors.npy"])
@pytest.mark.parametrize("content", ["strings", "vector", "archive"])
def test_a_matrix_file_that_is_not_a_2d_float_array_is_named_on_reading(tmp_path, name, content):
    """Re-hashed, so only the content is wrong: a string array made the finiteness check raise TypeError, an archive
    in its place an AttributeError, a vector an IndexError; each is a file to name."""
    version = write_model(tmp_path, _model())
    path = tmp_path / version / name
    with path.open("wb") as f:
        if content == "archive":
            np.savez(f, a=np.eye(K))
        else:
            np.save(f, np.array(["a", "b"]) if content == "strings" else np.zeros(K))
    _rehash(tmp_path / version, name)
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        read_model(tmp_path, version)


@pytest.mark.parametrize("ids", [{"user-0": 1}, [1, 2], "user-0"])
def test_user_ids_that_are_not_a_list_of_ids_are_named_on_reading(tmp_path, ids):
    version = write_model(tmp_path, _model())
    path = tmp_path / version / "user_ids.json"
    path.write_text(json.dumps(ids))
    _rehash(tmp_path / version, "user_ids.json")
    with pytest.raises(ArtifactError, match=r"user_ids\.json: not a list of user ids"):
        read_model(tmp_path, version)


def _without(manifest: dict, key: str) -> dict:
    return {k: v for k, v in manifest.items() if k != key}


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {**m, "files": {}},  # every file would load unchecked
        lambda m: {**m, "files": _without(m["files"], "item_factors.npy")},
        lambda m: {**m, "files": _without(m["files"], "user_ids.json")},  # user vectors without their ids
        lambda m: {**m, "files": {**m["files"], "extra.bin": "0" * 64}},
        lambda m: {**m, "files": {**m["files"], "item_ids.json": None}},
        lambda m: {**m, "files": list(m["files"])},
        lambda m: _without(m, "files"),
        lambda m: _without(m, "created_at"),
        lambda m: {**m, "created_at": 1795443901},
        lambda m: {**m, "created_at": "yesterday"},
        lambda m: {**m, "created_at": "2026-11-23T14:25:01"},  # no offset
        lambda m: [m],
    ],
    ids=["no-files", "one-missing", "one-user-file", "one-extra", "no-digest", "files-list", "no-files-key",
         "no-created-at", "created-at-number", "created-at-text", "created-at-naive", "not-an-object"],
)  # fmt: skip
def test_a_manifest_that_does_not_list_exactly_the_models_files_or_lacks_its_time_is_named(tmp_path, edit):
    version = write_model(tmp_path, _model())
    path = tmp_path / version / MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ArtifactError, match=r"manifest\.json: "):
        read_model(tmp_path, version)


@pytest.mark.parametrize(("extra", "refused"), [([], False), (["movie-x"], True)])
def test_an_index_over_ids_not_in_item_ids_is_refused_before_writing(tmp_path, extra, refused):
    model = _model()
    ids = [*model.item_ids, *extra]
    index = ItemIndex(K, capacity=len(ids))
    index.add(ids, np.vstack([model.item_factors, model.item_factors[: len(extra)]]))
    if refused:
        with pytest.raises(ArtifactError, match=r"index/index\.json: 1 of its 31 live ids are not in item_ids\.json"):
            write_model(tmp_path, dataclasses.replace(model, index=index))
        assert list_versions(tmp_path) == []
    else:
        assert read_model(tmp_path, write_model(tmp_path, dataclasses.replace(model, index=index))).index.dim == K


def test_an_index_over_other_ids_is_refused_on_reading(tmp_path):
    """The reader runs the same check: an index.json rewritten with its checksum is refused, not served."""
    version = write_model(tmp_path, _model())
    directory = tmp_path / version
    ids_file = directory / "index" / "index.json"
    meta = json.loads(ids_file.read_text())
    ids_file.write_text(json.dumps({**meta, "ids": [f"other-{i}" for i in range(len(meta["ids"]))]}))
    _rehash(directory, "index/index.json")
    with pytest.raises(ArtifactError, match=r"index/index\.json: 29 of its 29 live ids"):
        read_model(tmp_path, version)


@pytest.mark.parametrize("name", ["weights", "intercept", "default", "feature_mean", "feature_scale"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_content_map_holding_nan_or_infinity_is_refused_before_writing(tmp_path, name, value):
    """A NaN content map gave every new item a NaN vector."""
    model = _model()
    array = getattr(model.content_map, name).copy()
    array.flat[0] = value
    bad = dataclasses.replace(model, content_map=dataclasses.replace(model.content_map, **{name: array}))
    with pytest.raises(ArtifactError, match=r"content_map\.npz: holds NaN or infinity"):
        write_model(tmp_path, bad)
    assert list_versions(tmp_path) == []


def test_a_model_root_that_cannot_hold_versions_is_named_before_any_training(tmp_path):
    """A file, or a folder under a file: write_model failed there only after the whole training (FileExistsError,
    NotADirectoryError); checked first, the error names the path. A root yet to be made is fine, and left unmade."""
    file = tmp_path / "file"
    file.write_text("")
    for root in (file, file / "models"):
        with pytest.raises(ArtifactError, match=f"^{file} is not a folder$"):
            check_writable(root)
    check_writable(tmp_path / "new" / "models")
    assert sorted(tmp_path.iterdir()) == [file]
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")  # passed, looking past it to its folder: write_model's mkdir then failed
    with pytest.raises(ArtifactError, match=f"^{dangling} is not a folder$"):
        check_writable(dangling)


KEEP = 3


@pytest.mark.parametrize("written", [KEEP - 1, KEEP, KEEP + 1])
def test_pruning_leaves_the_keep_newest_versions_and_a_protected_one(tmp_path, written):
    start = datetime(2026, 12, 6, tzinfo=UTC)
    versions = [write_model(tmp_path, _model(start + timedelta(minutes=m))) for m in range(written)]
    (tmp_path / ".tmp-crashed-write").mkdir()  # not a version: left alone
    assert prune_versions(tmp_path, KEEP, protect={None}) == versions[: max(written - KEEP, 0)]
    assert list_versions(tmp_path) == versions[-KEEP:] and (tmp_path / ".tmp-crashed-write").is_dir()
    assert read_model(tmp_path, versions[-1]).created_at == start + timedelta(minutes=written - 1)


def test_a_prune_stopped_after_its_rename_is_finished_by_the_next(tmp_path):
    start = datetime(2026, 12, 6, tzinfo=UTC)
    versions = [write_model(tmp_path, _model(start + timedelta(minutes=m))) for m in range(2)]
    (tmp_path / versions[0]).rename(tmp_path / f"{PRUNED}{versions[0]}")  # killed before its rmtree
    (tmp_path / ".tmp-crashed-write").mkdir()
    assert prune_versions(tmp_path, KEEP) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-crashed-write", versions[1]]


def test_a_protected_version_outlives_pruning_and_keep_0_is_refused(tmp_path):
    start = datetime(2026, 12, 6, tzinfo=UTC)
    versions = [write_model(tmp_path, _model(start + timedelta(minutes=m))) for m in range(4)]
    assert prune_versions(tmp_path, 1, protect={versions[0]}) == versions[1:3]
    assert list_versions(tmp_path) == [versions[0], versions[3]]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        prune_versions(tmp_path, 0)
