from __future__ import annotations

import numpy as np
from recstream.streams.ranker_training import Rows, ftrl_config

from bench.ranker import replay
from recstream.contracts.ranking import FEATURES
from recstream.contracts.settings import load_settings


def test_replay_at_the_default_settings_scores_every_scorer_and_finds_a_planted_signal():
    """The bench replays with the workers' own config (a crash here once went unseen: a one-feature
    calibration inherited the ranker's standardized feature indices)."""
    rng = np.random.default_rng(0)
    rows = {}
    for partition in range(2):
        x = rng.normal(size=(3_000, len(FEATURES)))
        signal = x[:, FEATURES.index("ctr_logit")]
        y = (rng.random(3_000) < 1 / (1 + np.exp(-(2 * signal - 2)))).astype(np.float64)
        rows[partition] = Rows(x, y)
    scores = replay(rows, ftrl_config(load_settings().ranker))
    assert set(scores) == {"ranker", "ctr_only", "segment_ctr_only", "als_only", "base_rate"}
    assert scores["ranker"].auc > 0.75 and scores["ctr_only"].auc > 0.75
    assert abs(scores["als_only"].auc - 0.5) < 0.05
    assert scores["ranker"].logloss < scores["base_rate"].logloss
    assert np.isnan(scores["base_rate"].auc)
