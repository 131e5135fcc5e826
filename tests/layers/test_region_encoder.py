"""RegionEncoder (MODEL.md 1): padded region rows, BatchNorm statistics, config."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.region_encoder import RegionEncoder
from tests.helpers import assert_config_round_trip, numpy64, randomize_weights

EMBED, HEADS, FEATURES, ROWS = 16, 4, 6, 4
COUNTS = np.array([2, 4], np.int32)


@pytest.fixture(scope="module")
def encoder() -> RegionEncoder:
    layer = RegionEncoder(EMBED, HEADS, dropout=0.0)
    layer.build((None, ROWS, FEATURES))
    randomize_weights(layer, seed=0)
    return layer


def _regions(seed: int) -> np.ndarray:
    regions = np.random.default_rng(seed).standard_normal((2, ROWS, FEATURES)).astype(np.float32)
    regions[np.arange(ROWS)[None, :] >= COUNTS[:, None]] = 0.0  # padding rows are zero
    return regions


def test_batch_norm_statistics_include_padded_rows(encoder: RegionEncoder) -> None:
    regions = _regions(1)
    norm = encoder.mlp_norm
    norm.moving_mean.assign(np.zeros(512, np.float32))
    norm.moving_variance.assign(np.ones(512, np.float32))
    encoder(regions, COUNTS, training=True)
    # Statistics over all B x N rows; a zero padding row gives mlp_in's bias.
    hidden = regions.reshape(-1, FEATURES).astype(np.float64) @ numpy64(encoder.mlp_in.kernel)
    hidden += numpy64(encoder.mlp_in.bias)
    np.testing.assert_allclose(numpy64(norm.moving_mean), 0.1 * hidden.mean(0), atol=1e-5)
    np.testing.assert_allclose(numpy64(norm.moving_variance), 0.9 + 0.1 * hidden.var(0), rtol=1e-5)


@pytest.mark.parametrize("layer", ["encoder", "pair_encoder"])
def test_padded_rows_contents_change_nothing_in_inference(layer: str, request) -> None:
    encoder = request.getfixturevalue(layer)
    regions = _regions(2)
    noisy = regions.copy()
    noisy[np.arange(ROWS)[None, :] >= COUNTS[:, None]] = 100.0
    np.testing.assert_allclose(
        numpy64(encoder(noisy, COUNTS)), numpy64(encoder(regions, COUNTS)), atol=1e-5
    )


def test_config_round_trip(encoder: RegionEncoder) -> None:
    regions = _regions(3)
    assert_config_round_trip(encoder, lambda layer: layer(regions, COUNTS))


PAIRS, PAIR_REGIONS = 5, 3


@pytest.fixture(scope="module")
def pair_encoder() -> RegionEncoder:
    layer = RegionEncoder(EMBED, HEADS, dropout=0.0, pair_size=PAIRS, pair_regions=PAIR_REGIONS)
    layer.build((None, ROWS, FEATURES))
    randomize_weights(layer, seed=1)
    return layer


def test_pair_features_match_loops_over_gated_region_pairs(pair_encoder: RegionEncoder) -> None:
    # Image 0 has 2 valid rows (fewer than 3: all are used), image 1 has 4
    # (the 3 with the highest gate logits are used).
    encoded = np.random.default_rng(4).standard_normal((2, ROWS, EMBED)).astype(np.float32)
    encoded[0, 2:] = 50.0  # padding rows: never picked, whatever they hold
    layer = pair_encoder
    u, b = numpy64(layer.pair_first.kernel), numpy64(layer.pair_first.bias)
    v = numpy64(layer.pair_second.kernel)
    expected = []
    for rows, n in zip(encoded.astype(np.float64), COUNTS):
        logits = rows[:n] @ numpy64(layer.pair_gate.kernel)[:, 0] + numpy64(layer.pair_gate.bias)[0]
        top = np.argsort(-logits)[:PAIR_REGIONS]
        gate = 1.0 / (1.0 + np.exp(-logits))
        total, weight = 0.0, 0.0
        for i in top:
            for j in top:
                w = gate[i] * gate[j]
                total = total + w * np.maximum(rows[i] @ u + b + rows[j] @ v, 0.0)
                weight += w
        expected.append((total / weight) @ numpy64(layer.pair_out.kernel) + numpy64(layer.pair_out.bias))
    measured = numpy64(layer.pair_features(encoded, COUNTS))
    np.testing.assert_allclose(measured, np.array(expected), rtol=1e-4, atol=1e-5)


def test_pair_encoder_config_round_trip(pair_encoder: RegionEncoder) -> None:
    regions = _regions(6)
    assert_config_round_trip(pair_encoder, lambda layer: layer(regions, COUNTS))
