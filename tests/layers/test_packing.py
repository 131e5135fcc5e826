"""Packing real slots into static budgets and scattering back (layers/packing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.packing import pack_distinct, pack_slots, unpack
from tests.helpers import numpy64

MASK = np.array([False, True, True, False, True, False])  # real slots 1, 2, 4


def _pack(budget):
    return [numpy64(a).astype(int) for a in pack_slots(MASK, budget)]


def test_no_budget_keeps_every_slot() -> None:
    indices, valid, inverse = _pack(None)
    np.testing.assert_array_equal(indices, np.arange(6))
    np.testing.assert_array_equal(valid, MASK)
    np.testing.assert_array_equal(inverse, [6, 1, 2, 6, 4, 6])


def test_budget_puts_real_slots_first_in_slot_order() -> None:
    indices, valid, inverse = _pack(4)
    np.testing.assert_array_equal(indices[:3], [1, 2, 4])
    np.testing.assert_array_equal(valid, [1, 1, 1, 0])
    assert indices[3] in (0, 3, 5)  # a padding slot fills the spare row
    np.testing.assert_array_equal(inverse, [4, 0, 1, 4, 2, 4])


def test_budget_exactly_full() -> None:
    indices, valid, inverse = _pack(3)
    np.testing.assert_array_equal(indices, [1, 2, 4])
    np.testing.assert_array_equal(valid, [1, 1, 1])
    np.testing.assert_array_equal(inverse, [3, 0, 1, 3, 2, 3])


def test_real_slots_past_the_budget_are_dropped() -> None:
    indices, valid, inverse = _pack(2)
    np.testing.assert_array_equal(indices, [1, 2])
    np.testing.assert_array_equal(valid, [1, 1])
    # Slot 4 is real but past the budget: it unpacks to the zero row, like padding.
    np.testing.assert_array_equal(inverse, [2, 0, 1, 2, 2, 2])


def test_unpack_scatters_rows_and_zeros_padding() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    inverse = np.array([3, 0, 1, 3, 2, 3], np.int32)
    expected = [[0, 0], [1, 2], [3, 4], [0, 0], [5, 6], [0, 0]]
    np.testing.assert_array_equal(numpy64(unpack(values, inverse)), expected)


@pytest.mark.parametrize("budget", [None, 3, 5])
def test_pack_then_unpack_restores_real_slots(budget) -> None:
    rng = np.random.default_rng(0)
    slots = rng.standard_normal((6, 3)).astype(np.float32)
    indices, _, inverse = pack_slots(MASK, budget)
    packed = np.take(slots, numpy64(indices).astype(int), axis=0)
    restored = numpy64(unpack(packed, inverse))
    np.testing.assert_array_equal(restored, np.where(MASK[:, None], slots, 0.0))


ROWS = np.array([[2, 5, 3], [2, 6, 3], [2, 5, 3], [0, 0, 0], [2, 6, 3], [0, 0, 0]], np.int32)


def test_pack_distinct_keeps_first_occurrences_in_order() -> None:
    indices, inverse = (numpy64(a).astype(int) for a in pack_distinct(ROWS, 4))
    np.testing.assert_array_equal(indices[:3], [0, 1, 3])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1, 2])
    values = np.array([[10.0], [20.0], [30.0], [40.0]], np.float32)[: len(indices)]
    gathered = numpy64(unpack(values, inverse))[:, 0]
    np.testing.assert_array_equal(gathered, [10, 20, 10, 30, 20, 30])


def test_pack_distinct_rows_past_the_budget_get_the_zero_row() -> None:
    indices, inverse = (numpy64(a).astype(int) for a in pack_distinct(ROWS, 2))
    np.testing.assert_array_equal(indices, [0, 1])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1, 2])
