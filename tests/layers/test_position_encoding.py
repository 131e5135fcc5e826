"""Sinusoid position codes and length masks (layers/position_encoding.py)."""

from __future__ import annotations

import math

import numpy as np

from cora_keras.layers.position_encoding import length_mask, masked_sinusoid, sinusoid_table
from tests.helpers import numpy64


def test_sinusoid_table_by_hand() -> None:
    table = sinusoid_table(3, 4)
    # Channels (sin, cos) of p / 10000^(0/4) and of p / 10000^(2/4) = p / 100.
    for p in range(3):
        expected = [math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)]
        np.testing.assert_allclose(table[p], expected, atol=1e-7)
    assert table.dtype == np.float32


def test_length_mask_by_hand() -> None:
    mask = numpy64(length_mask(np.array([0, 2, 4], np.int32), 4))
    np.testing.assert_array_equal(mask, [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def test_masked_sinusoid_zeroes_positions_past_the_count() -> None:
    codes = numpy64(masked_sinusoid(np.array([1, 3], np.int32), 3, 4))
    table = sinusoid_table(3, 4)
    np.testing.assert_allclose(codes[0], np.concatenate([table[:1], np.zeros((2, 4))]), atol=1e-7)
    np.testing.assert_allclose(codes[1], table, atol=1e-7)
