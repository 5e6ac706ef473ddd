"""A model version the worker cannot build is refused once and the previous one kept: any error of the version's own,
not only a missing or corrupt file. No Kafka or Redis: a refused version never reaches them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from recstream.models.artifacts import ModelArtifacts, write_model
from recstream.streams import metrics
from recstream.streams.live_model import LiveModel

from recstream.contracts.settings import load_settings
from tests.models.test_artifacts import _model


def without_created_at(root: Path) -> str:
    version = write_model(root, _model())
    manifest = root / version / "manifest.json"
    doc = orjson.loads(manifest.read_bytes())
    del doc["created_at"]
    manifest.write_bytes(orjson.dumps(doc))
    return version


def with_a_gram_that_is_not_positive_definite(root: Path) -> str:
    model = _model()  # λ 40 (ALSConfig's) against −100: the user step's Cholesky fails
    return write_model(root, ModelArtifacts(**{**model.__dict__, "user_gram": -100.0 * np.eye(model.config.factors)}))


@pytest.mark.parametrize("broken", [without_created_at, with_a_gram_that_is_not_positive_definite])
async def test_a_version_that_cannot_be_built_is_refused_once_and_nothing_raises(tmp_path: Path, broken):
    """A KeyError from the manifest or a LinAlgError from the gram escaped ``ensure``: every batch of every agent
    retried the load forever, and applied nothing."""
    version = broken(tmp_path)
    model = LiveModel(load_settings(model_dir=tmp_path))
    failures = metrics.MODEL_LOAD_FAILURES._value.get()
    await model.ensure(version)
    await model.ensure(version)  # refused once: not read again
    assert model.current is None and metrics.MODEL_LOAD_FAILURES._value.get() == failures + 1


async def test_a_load_whose_wait_was_cancelled_is_waited_for_again_not_started_again(tmp_path: Path, monkeypatch):
    """A batch attempt hung past its stuck limit is cancelled, and the thread building the model went on: the next
    attempt started a second build beside it, each slower than the last on a loaded machine, so none finished."""
    version = with_a_gram_that_is_not_positive_definite(tmp_path)
    model = LiveModel(load_settings(model_dir=tmp_path))
    builds, slow_build = [], model._build

    def counted_build(v: str):
        builds.append(threading.get_ident())
        time.sleep(0.5)
        return slow_build(v)

    monkeypatch.setattr(model, "_build", counted_build)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(model.ensure(version), timeout=0.1)  # the stuck limit of one attempt
    await model.ensure(version)
    assert len(builds) == 1 and model._failed == version
