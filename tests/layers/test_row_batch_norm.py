"""RowBatchNorm: BatchNorm over packed rows plus absent copies of a known row."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cora_keras.layers.row_batch_norm import RowBatchNorm
from tests.helpers import assert_config_round_trip, numpy64, randomize_weights

CHANNELS = 3
ABSENT = np.array(2.0, np.float32)  # absent rows in the batch


@pytest.fixture()
def norms() -> tuple[RowBatchNorm, keras.layers.BatchNormalization]:
    """A RowBatchNorm and a Keras BatchNormalization with the same weights."""
    rows = RowBatchNorm(momentum=0.9, epsilon=1e-5)
    rows.build((None, CHANNELS))
    randomize_weights(rows, seed=0)
    rows.moving_variance.assign(np.abs(numpy64(rows.moving_variance)).astype(np.float32) + 0.5)
    dense = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    dense.build((None, CHANNELS))
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        getattr(dense, name).assign(getattr(rows, name))
    return rows, dense


def _case():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((5, CHANNELS)).astype(np.float32)
    rows[3] = 1e3  # budget padding row (weight 0): must not count
    weight = np.array([1, 1, 1, 0, 1], np.float32)
    absent_value = rng.standard_normal(CHANNELS).astype(np.float32)
    # The whole batch: the 4 present rows and 2 absent copies of absent_value.
    whole = np.concatenate([rows[[0, 1, 2, 4]], absent_value[None], absent_value[None]])
    return rows, weight, absent_value, whole


def test_training_equals_batch_norm_over_the_whole_batch(norms) -> None:
    rows_norm, dense_norm = norms
    rows, weight, absent_value, whole = _case()
    out = numpy64(rows_norm(rows, weight, ABSENT, absent_value, training=True))
    expected = numpy64(dense_norm(whole, training=True))
    np.testing.assert_allclose(out[[0, 1, 2, 4]], expected[:4], atol=1e-5)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            numpy64(getattr(rows_norm, name)), numpy64(getattr(dense_norm, name)), atol=1e-6, err_msg=name
        )


def test_inference_uses_the_moving_statistics(norms) -> None:
    rows_norm, dense_norm = norms
    rows, weight, absent_value, _ = _case()
    out = numpy64(rows_norm(rows, weight, ABSENT, absent_value, training=False))
    np.testing.assert_allclose(out, numpy64(dense_norm(rows, training=False)), atol=1e-5)


def test_config_round_trip(norms) -> None:
    rows, weight, absent_value, _ = _case()
    assert_config_round_trip(norms[0], lambda layer: layer(rows, weight, ABSENT, absent_value))
