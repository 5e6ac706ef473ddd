from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from recstream.models.als import ALSConfig
from recstream.models.ann import ItemIndex
from recstream.models.artifacts import (
    ArtifactError,
    ModelArtifacts,
    latest_version,
    list_versions,
    read_model,
    write_model,
)
from recstream.models.content_map import fit_content_map

K = 4


def _model(created_at: datetime | None = None, n_items: int = 30) -> ModelArtifacts:
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
    )


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


def test_versions_sort_by_creation_time(tmp_path):
    start = datetime(2026, 11, 23, 14, 25, 1, tzinfo=UTC)
    written = [write_model(tmp_path, _model(start + timedelta(seconds=s))) for s in (3600, 0, 60)]
    assert list_versions(tmp_path) == [written[1], written[2], written[0]]
    assert latest_version(tmp_path) == written[0] and written[0].startswith("20261123T152501Z-")
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
    "name", ["metrics.json", "content_map.npz", "index/index.bin", "item_factors.npy", "user_gram.npy"]
)
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


@pytest.mark.parametrize(("name", "value"), [("item_factors", np.nan), ("user_gram", np.inf)])
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
