"""The served feature vector's rounding: the reader's vectorized rounding gives the bits of the string round trip."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from recstream.models.ranker import FTRLConfig, FTRLRanker

from recstream.contracts.ranking import (
    FEATURE_VERSION,
    FEATURES,
    MAX_VALUE_CHARS,
    decode_features,
    decode_rows,
    encode_features,
    encode_rows,
    prior_weights,
    rounded,
    rounded_rows,
)

WIDTH = len(FEATURES)


def hard_values(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Values a page meets (flags, logits, log ranks and ages, ALS scores stored with 5 decimals), values at every
    scale, decimal ties of the 5th digit, neighbours of powers of ten, signed zeros, subnormal and huge ones."""
    powers = 10.0 ** rng.integers(-5, 6, (n, WIDTH))
    return [
        rng.integers(0, 2, (n, WIDTH)).astype(float),
        rng.normal(-3, 2, (n, WIDTH)),
        np.log1p(rng.integers(0, 100_000, (n, WIDTH)).astype(float)),
        np.round(rng.normal(0, 1, (n, WIDTH)), 5),
        np.round(rng.uniform(-1, 1, (n, WIDTH)), 3) + 0.00005,  # ties at the 5th significant digit
        rng.normal(0, 1, (n, WIDTH)) * 10.0 ** rng.integers(-14, 15, (n, WIDTH)),
        np.nextafter(powers, 0),
        np.nextafter(powers, np.inf),
        np.where(rng.random((n, WIDTH)) < 0.5, -0.0, 0.0),
        rng.choice([5e-324, 1e-310, 1e-20, 1e20, 1.7e308, -2.5e-16, 9.9995e15], (n, WIDTH)),
    ]


def test_rounded_rows_rounds_as_the_4_significant_digit_string_does_and_the_context_carries_it_exactly():
    rng = np.random.default_rng(7)
    for values in hard_values(rng, 2_000):
        fast = rounded_rows(values)
        slow = np.array([[float(f"{v:.4g}") for v in row] for row in values.tolist()])
        assert (fast.view(np.int64) == slow.view(np.int64)).all(), values[fast.view(np.int64) != slow.view(np.int64)]
        assert (rounded_rows(fast).view(np.int64) == fast.view(np.int64)).all(), "a rounded row rounds to itself"
        carried = np.array([decode_features(value) for value in encode_rows(fast)])
        assert (carried.view(np.int64) == fast.view(np.int64)).all(), "decoding gives the scored vector, to the bit"


def test_rounded_rows_refuses_what_no_context_can_carry():
    with pytest.raises(ValueError, match="finite"):
        rounded_rows(np.full((1, WIDTH), np.nan))
    with pytest.raises(ValueError, match="shape"):
        rounded_rows(np.zeros((2, WIDTH - 1)))
    assert rounded_rows(np.zeros((0, WIDTH))).shape == (0, WIDTH)


def test_one_vector_encodes_as_its_row_does_and_decodes_to_its_rounding():
    values = [0.81234567, 1.0, 0.0, -0.0, 1e-5, 123456.0] + [0.5] * (WIDTH - 6)
    encoded = encode_features(values)
    assert encoded == encode_rows(rounded_rows(np.array([values])))[0]
    assert encoded.partition(":")[2].split(",")[:6] == ["0.8123", "1.0", "0.0", "-0.0", "0.00001", "123500.0"]
    assert decode_features(encoded).tolist() == rounded(values).tolist() == [float(f"{v:.4g}") for v in values]
    with pytest.raises(ValueError, match=f"expected {WIDTH} features"):
        encode_features(values[:-1])


def test_a_row_that_cannot_travel_in_a_context_is_refused():
    long = np.full((1, WIDTH), -1 / 3 * 1e-300)  # 22 characters per value unrounded
    assert len(encode_rows(rounded_rows(long))[0]) <= MAX_VALUE_CHARS
    with pytest.raises(ValueError, match="round it first"):
        encode_rows(long)
    with pytest.raises(ValueError, match="finite"):
        encode_rows(np.full((1, WIDTH), np.inf))


def test_a_matrix_encodes_as_each_of_its_rows_alone():
    """encode_rows writes the whole matrix in one call and cuts it into rows: each value is its row's own JSON."""
    rng = np.random.default_rng(7)
    rows = np.vstack([rounded_rows(values) for values in hard_values(rng, 20)])
    alone = [f"{FEATURE_VERSION}:" + orjson.dumps(row).decode()[1:-1] for row in rows.tolist()]
    for n in (0, 1, 2, len(rows)):
        assert encode_rows(rows[:n]) == alone[:n]


def _bits(rows: list[np.ndarray]) -> list[bytes]:
    return [row.tobytes() for row in rows]


def test_decoding_a_batch_gives_each_value_s_vector_to_the_bit():
    rng = np.random.default_rng(7)
    rows = np.vstack([rounded_rows(values) for values in hard_values(rng, 200)])
    values = encode_rows(rows)
    matrix, where = decode_rows(values)
    assert where == list(range(len(values)))
    assert _bits(list(matrix)) == _bits([decode_features(value) for value in values])  # signed zeros included


@pytest.mark.parametrize(
    "body",
    ["-0", "1e-0", "1e400", "1.", ".5", "+1", "1_0", "01", " 1", "true", "null", '"1"', "[1]", "nan", "Infinity",
     "0x10", "1,2", "", "1e5000000000", "123456789012345678901234567890"],
)  # fmt: skip
def test_a_batch_with_an_unusual_value_decodes_as_each_value_alone(body):
    """JSON and float() disagree or one refuses: the batch falls back to the value-by-value decoder."""
    good = encode_features([0.5] * WIDTH)
    odd = FEATURE_VERSION + ":" + ",".join([body] + ["0.25"] * (WIDTH - 1))
    values = [good, odd, None, 7, "00000000:" + good.partition(":")[2], good]
    matrix, where = decode_rows(values)
    expected = [(k, decode_features(value)) for k, value in enumerate(values)]
    expected = [(k, row) for k, row in expected if row is not None]
    assert where == [k for k, _ in expected]
    assert _bits(list(matrix)) == _bits([row for _, row in expected])
    assert matrix.shape == (len(expected), WIDTH)


@pytest.mark.parametrize("ctr", [0.0, 1.0, 2.0])
def test_a_ranker_that_learned_nothing_scores_by_the_prior_on_the_smoothed_ctr(ctr):
    """prior_weights(1): the cold score is the smoothed CTR (both logits equal), whatever the other features say."""
    ranker = FTRLRanker(WIDTH, FTRLConfig(prior=prior_weights(ctr)))
    rows = np.zeros((3, WIDTH))
    rows[:, FEATURES.index("ctr_logit")] = rows[:, FEATURES.index("segment_ctr_logit")] = [-3.0, -1.0, 0.5]
    rows[:, FEATURES.index("personal")] = [1.0, 0.0, 1.0]
    expected = 1.0 / (1.0 + np.exp(-ctr * np.array([-3.0, -1.0, 0.5])))
    np.testing.assert_allclose(ranker.score(rows), expected, rtol=1e-12)
    assert len(prior_weights(ctr)) == WIDTH + 1 and prior_weights(ctr)[0] == 0.0, "bias first, and no bias"
