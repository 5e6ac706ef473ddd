"""``recstream train --engine spark``: the same iALS fitted by Spark's ALS, for a matrix one process cannot solve.

Same input: the matrix r of summed event weights that the implicit path fits
(:func:`recstream.jobs.training.interactions`) goes to Spark as (user, item, rating) rows, written
in parts to a scratch folder that Spark reads (no Python row serialisation, no pandas).

Same confidence: Spark's implicit ALS (Hu, Koren, Volinsky, as in implicit) weights an entry by
``c = 1 + alpha·|rating|`` with preference ``p = [rating > 0]``; with ``rating = r`` (``log1p(r/ε)``
when log-scaled) and ``alpha = α`` that is :func:`models.als.confidence`.

Different λ: implicit solves every user and item row with λ alone; Spark with ``regParam·n``, n being
the row's positive ratings ("ALS-WR", Zhou et al. 2008). We pass ``regParam = λ·(U + I) / (2·nnz)``
over the U users and I items that have a rating (:func:`spark_reg_param`): since Σ n_u = Σ n_i = nnz,
the summed penalty weight over all rows is λ·(U + I) under both engines, and a row with the mean
count gets λ itself; heavier users and items are held tighter under Spark, lighter ones looser.
That difference costs: on MovieLens 100K at the default config Spark's offline HR@10 is 0.083
against implicit's 0.089, and regParam ×0.5 or ×2 scores the same (tests/jobs/test_spark_training.py).

Same output: Spark's factors land at the rows of the log's user and item indices (a row without
a rating is zero), so :func:`recstream.jobs.training.train` builds the same artifacts (item order,
content map, HNSW index, the batch user vectors) and the workers hot-swap to the version unchanged; the user vectors
their step is anchored to (models/user_step.py) are Spark's, fitted under the scaled λ above. The loss reported is
implicit's, computed on Spark's factors.

pyspark is an optional extra (``pip install 'recstream[spark]'``), imported only when this engine
runs. The session runs where ``RECSTREAM_SPARK_MASTER`` says (``local[2]`` by default: threads of
this machine), its driver on loopback with the UI off and a bounded heap. The ratings and the
checkpoints go to this machine's temporary folder, so a cluster's executors must see ``TMPDIR``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from recstream.contracts.settings import Settings
from recstream.jobs import training
from recstream.models.als import ALSConfig, ALSFit, confidence_matrix, fitted, scaled_weights
from recstream.models.artifacts import ModelArtifacts

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ROWS_PER_PART = 1_000_000  # rating rows per file Spark reads; parts are read in parallel
# Each sweep adds to the factors' lineage; unbroken, 15 sweeps overflowed the stack deserialising a task
# (java.lang.StackOverflowError, which kills the driver). Checkpoints cut it; ALS skips them without a folder.
CHECKPOINT_EVERY = 5
LOG_CONFIG = Path(__file__).with_name("spark-log4j2.properties")
MISSING = "--engine spark needs pyspark, the optional extra: pip install 'recstream[spark]'"


class SparkMissing(RuntimeError):
    """pyspark is not installed; the message names the extra that installs it."""


def require_pyspark() -> None:
    """Fail before any work when pyspark is absent, with one line naming the extra."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkMissing(MISSING) from None


@contextmanager
def spark_session(settings: Settings) -> Iterator[SparkSession]:
    """A session on ``settings.model.spark_master``: driver on loopback, no UI, heap bounded, errors only."""
    require_pyspark()
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(settings.model.spark_master)
        .appName("recstream-train")
        .config("spark.driver.memory", settings.model.spark_driver_memory)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG}")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    try:
        yield spark
    finally:
        spark.stop()


def spark_reg_param(r: sp.csr_matrix, regularization: float) -> float:
    """Spark's regParam giving implicit's λ on average: λ·(U + I) / (2·nnz), U and I the rated users and items.

    >>> spark_reg_param(sp.csr_matrix(np.array([[1.0, 2.0], [0.0, 3.0], [0.0, 0.0]])), 40.0)
    26.666666666666668
    """
    coo = sp.coo_matrix(r)
    positive = coo.data > 0  # Spark counts a row's ratings above 0
    count = int(np.count_nonzero(positive))
    if count == 0:
        return regularization
    rated = np.unique(coo.row[positive]).size + np.unique(coo.col[positive]).size
    return regularization * rated / (2 * count)


def fit_als(spark: SparkSession, r: sp.csr_matrix, cfg: ALSConfig) -> ALSFit:
    """Spark's implicit ALS on r with the confidence, λ and seed of ``cfg``: a :data:`training.Fit`."""
    from pyspark.ml.recommendation import ALS

    stored = sp.csr_matrix(r, dtype=np.float32, copy=True)
    stored.eliminate_zeros()  # as implicit: a zero sum is no positive
    coo = stored.tocoo()
    blocks = spark.sparkContext.defaultParallelism
    als = ALS(rank=cfg.factors, maxIter=cfg.iterations, regParam=spark_reg_param(stored, cfg.regularization),
              alpha=cfg.alpha, implicitPrefs=True, seed=cfg.random_state, numUserBlocks=blocks,
              numItemBlocks=blocks, checkpointInterval=CHECKPOINT_EVERY, userCol="user", itemCol="item",
              ratingCol="rating")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="recstream-spark-") as folder:
        spark.sparkContext.setCheckpointDir(str(Path(folder) / "checkpoints"))
        _write_ratings(Path(folder), coo.row, coo.col, scaled_weights(coo.data, cfg))
        started = time.perf_counter()
        model = als.fit(spark.read.csv(folder, schema="user INT, item INT, rating FLOAT"))
        user_factors = _factors(model.userFactors, r.shape[0], cfg.factors)
        item_factors = _factors(model.itemFactors, r.shape[1], cfg.factors)
    return fitted(confidence_matrix(stored, cfg), user_factors, item_factors, cfg, time.perf_counter() - started)


def _write_ratings(folder: Path, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> None:
    """(user, item, rating) as CSV parts of at most :data:`ROWS_PER_PART` rows; 9 digits: exact for float32."""
    for part, start in enumerate(range(0, len(ratings), ROWS_PER_PART)):
        rows = slice(start, start + ROWS_PER_PART)
        table = np.column_stack((users[rows], items[rows], ratings[rows]))
        np.savetxt(folder / f"part-{part:05d}.csv", table, fmt=("%d", "%d", "%.9g"), delimiter=",")


def _factors(frame: DataFrame, rows: int, factors: int) -> np.ndarray:
    """Spark's (id, features) rows as a matrix indexed by id; ids Spark never saw stay zero."""
    out = np.zeros((rows, factors), dtype=np.float32)
    for row in frame.toLocalIterator():
        out[row.id] = row.features
    return out


def train(
    log: training.TrainingLog, cfg: ALSConfig, settings: Settings, holdout: float = 0.1
) -> tuple[ModelArtifacts, dict]:
    """:func:`training.train` with Spark's ALS as the engine, both fits (held-out and whole) in one session."""
    with spark_session(settings) as spark:
        return training.train(log, cfg, holdout, fit=partial(fit_als, spark))
