"""The descending order GPO ranks channels by."""

import numpy as np
import pytest

from cora_keras.layers.sorting import _bitonic_order, descending_order


@pytest.mark.parametrize("order_of", [descending_order, _bitonic_order])
@pytest.mark.parametrize("length", [1, 2, 3, 8, 17, 36])
def test_order_sorts_each_channel_descending(order_of, length: int) -> None:
    rng = np.random.default_rng(length)
    values = rng.standard_normal((3, length, 4)).astype(np.float32)
    values[0, :, 0] = 1.0  # all tied
    values[1, : length // 2, 1] = -10000.0  # masked rows, tied among themselves
    order = np.asarray(order_of(values))
    assert order.shape == values.shape and order.dtype == np.int32
    # A permutation of 0..K-1 per (row, channel) ...
    np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(length)[None, :, None], values.shape))
    # ... that puts the values in descending order.
    np.testing.assert_array_equal(np.take_along_axis(values, order, axis=1), -np.sort(-values, axis=1))
