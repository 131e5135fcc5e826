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


def test_padded_rows_contents_change_nothing_in_inference(encoder: RegionEncoder) -> None:
    regions = _regions(2)
    noisy = regions.copy()
    noisy[np.arange(ROWS)[None, :] >= COUNTS[:, None]] = 100.0
    np.testing.assert_allclose(
        numpy64(encoder(noisy, COUNTS)), numpy64(encoder(regions, COUNTS)), atol=1e-5
    )


def test_config_round_trip(encoder: RegionEncoder) -> None:
    regions = _regions(3)
    assert_config_round_trip(encoder, lambda layer: layer(regions, COUNTS))
