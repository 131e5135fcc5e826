"""GPO pooling (MODEL.md 4): the (K, K) weight table against a per-row GRU run."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.gpo import GPO
from tests.helpers import assert_config_round_trip, gru_weights, numpy64, randomize_weights
from tests.reference_cora import gru_sequence, sinusoid, softmax

K = 5  # feature rows
DIM = 3  # feature channels


@pytest.fixture(scope="module")
def gpo() -> GPO:
    layer = GPO(32)
    layer.build((None, K, DIM))
    randomize_weights(layer, seed=0)
    return layer


def weights_row_by_row(layer: GPO, length: int) -> np.ndarray:
    """(length, length) pooling weights, each valid count L run on its own."""
    forward, backward = gru_weights(layer.forward_gru), gru_weights(layer.backward_gru)
    score = numpy64(layer.score.kernel)[:, 0]
    table = np.zeros((length, length))
    for count in range(1, length + 1):
        codes = sinusoid(count, layer.hidden)[None]
        ahead, _ = gru_sequence(codes, [count], forward)
        behind, _ = gru_sequence(codes, [count], backward, reverse=True)
        scores = ((ahead[0] + behind[0]) / 2.0) @ score
        table[count - 1, :count] = softmax(scores / 0.1, axis=0)
    return table


def pool_row_by_row(table: np.ndarray, features: np.ndarray, counts) -> np.ndarray:
    rows = []
    for row, count in zip(features, counts):
        ranked = -np.sort(-row[:count], axis=0)  # descending per channel
        rows.append(table[count - 1, :count] @ ranked)
    return np.stack(rows)


def test_weight_table_equals_per_row_gru(gpo: GPO) -> None:
    np.testing.assert_allclose(numpy64(gpo.weight_table(K)), weights_row_by_row(gpo, K), atol=1e-5)


def test_weights_sum_to_one_and_vanish_past_the_count(gpo: GPO) -> None:
    table = numpy64(gpo.weight_table(K))
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-6)
    past = np.triu(np.ones((K, K), bool), k=1)  # row l, positions > l
    assert np.all(table[past] == 0.0)


def test_pooling_equals_per_row_sorted_sum(gpo: GPO) -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((4, K, DIM)).astype(np.float32)
    counts = np.array([1, 3, 5, 2], np.int32)
    expected = pool_row_by_row(weights_row_by_row(gpo, K), features.astype(np.float64), counts)
    np.testing.assert_allclose(numpy64(gpo(features, counts)), expected, atol=1e-5)


def test_a_single_feature_is_returned(gpo: GPO) -> None:
    features = np.random.default_rng(2).standard_normal((3, K, DIM)).astype(np.float32)
    pooled = gpo(features, np.ones(3, np.int32))
    np.testing.assert_allclose(numpy64(pooled), features[:, 0], atol=1e-6)


def test_identical_features_are_returned(gpo: GPO) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3, 1, DIM)).astype(np.float32)
    counts = np.array([2, 4, 5], np.int32)
    features = np.where(np.arange(K)[None, :, None] < counts[:, None, None], rows, 7.0).astype(np.float32)
    np.testing.assert_allclose(numpy64(gpo(features, counts)), rows[:, 0], atol=1e-5)


def test_padded_rows_contents_change_nothing(gpo: GPO) -> None:
    rng = np.random.default_rng(4)
    features = rng.standard_normal((3, K, DIM)).astype(np.float32)
    counts = np.array([1, 2, 4], np.int32)
    padded = np.arange(K)[None, :, None] >= counts[:, None, None]
    garbage = np.where(padded, rng.choice([-1e6, 1e6], features.shape), features).astype(np.float32)
    clean = np.where(padded, 0.0, features).astype(np.float32)
    np.testing.assert_allclose(numpy64(gpo(garbage, counts)), numpy64(gpo(clean, counts)), atol=1e-6)


def test_config_round_trip(gpo: GPO) -> None:
    features = np.random.default_rng(5).standard_normal((2, K, DIM)).astype(np.float32)
    assert_config_round_trip(gpo, lambda layer: layer(features, np.array([2, 5], np.int32)))
