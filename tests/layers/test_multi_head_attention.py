"""FusedSelfAttention: PyTorch nn.MultiheadAttention's computation and layout."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.multi_head_attention import FusedSelfAttention
from tests.helpers import assert_config_round_trip, numpy64, randomize_weights
from tests.reference_cora import multihead_attention

HIDDEN, HEADS, ROWS = 8, 2, 5


@pytest.fixture(scope="module")
def attention() -> FusedSelfAttention:
    layer = FusedSelfAttention(HIDDEN, HEADS)
    layer.build()
    randomize_weights(layer, seed=0)
    return layer


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((2, ROWS, HIDDEN)).astype(np.float32)
    key_mask = (np.arange(ROWS)[None, :] < np.array([[3], [5]])).astype(np.float32)
    return x, key_mask


def test_hidden_must_split_into_heads() -> None:
    with pytest.raises(ValueError, match="hidden=6 is not divisible by num_heads=4"):
        FusedSelfAttention(6, 4)


def test_matches_numpy_with_pytorch_weight_layout(attention: FusedSelfAttention) -> None:
    x, key_mask = _inputs(1)
    # PyTorch keeps in_proj_weight (3D, D) with rows (q, k, v): the transposed Keras kernel.
    expected = multihead_attention(
        x.astype(np.float64),
        key_mask > 0,
        numpy64(attention.in_projection.kernel).T,
        numpy64(attention.in_projection.bias),
        numpy64(attention.out_projection.kernel).T,
        numpy64(attention.out_projection.bias),
        HEADS,
    )
    np.testing.assert_allclose(numpy64(attention(x, key_mask)), expected, atol=1e-5)


def test_masked_keys_have_no_influence(attention: FusedSelfAttention) -> None:
    x, key_mask = _inputs(2)
    perturbed = np.where(key_mask[..., None] > 0, x, 50.0).astype(np.float32)
    before, after = numpy64(attention(x, key_mask)), numpy64(attention(perturbed, key_mask))
    np.testing.assert_allclose(after[0, :3], before[0, :3], atol=1e-5)
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)


def test_config_round_trip(attention: FusedSelfAttention) -> None:
    x, key_mask = _inputs(3)
    assert_config_round_trip(attention, lambda layer: layer(x, key_mask))
