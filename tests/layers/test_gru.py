"""LengthMaskedGRU: the PyTorch-form GRU read to each row's length."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cora_keras.layers.gru import LengthMaskedGRU
from tests.helpers import assert_config_round_trip, gru_weights, numpy64, randomize_weights
from tests.reference_cora import gru_sequence

STEPS, DIM, UNITS = 5, 4, 3


@pytest.fixture(scope="module")
def gru() -> LengthMaskedGRU:
    layer = LengthMaskedGRU(UNITS, return_sequences=True)
    layer.build((None, STEPS, DIM))
    randomize_weights(layer, seed=0)
    return layer


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, STEPS, DIM)).astype(np.float32), np.array([1, 3, 5, 2], np.int32)


def test_states_match_numpy_pytorch_form(gru: LengthMaskedGRU) -> None:
    x, lengths = _inputs(1)
    final, states = gru(x, lengths)
    expected_states, expected_final = gru_sequence(x.astype(np.float64), lengths, gru_weights(gru))
    np.testing.assert_allclose(numpy64(final), expected_final, atol=1e-5)
    states = numpy64(states)
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(states[row, :length], expected_states[row, :length], atol=1e-5)
        # Past the length the state is carried unchanged.
        carried = np.broadcast_to(expected_final[row], states[row, length:].shape)
        np.testing.assert_allclose(states[row, length:], carried, atol=1e-5)


def test_matches_keras_gru_with_reset_after(gru: LengthMaskedGRU) -> None:
    x, lengths = _inputs(2)
    reference = keras.layers.GRU(UNITS, reset_after=True)
    reference.build((None, STEPS, DIM))
    reference.set_weights([numpy64(w) for w in (gru.kernel, gru.recurrent_kernel, gru.bias)])
    mask = np.arange(STEPS)[None, :] < lengths[:, None]
    expected = reference(x, mask=mask)
    np.testing.assert_allclose(numpy64(gru(x, lengths)[0]), numpy64(expected), atol=1e-5)


def test_steps_past_the_length_are_ignored(gru: LengthMaskedGRU) -> None:
    x, lengths = _inputs(3)
    garbage = np.where(np.arange(STEPS)[None, :, None] < lengths[:, None, None], x, 1e3).astype(np.float32)
    np.testing.assert_allclose(numpy64(gru(garbage, lengths)[0]), numpy64(gru(x, lengths)[0]), atol=1e-6)


def test_config_round_trip(gru: LengthMaskedGRU) -> None:
    x, lengths = _inputs(4)
    assert_config_round_trip(gru, lambda layer: layer(x, lengths)[1])
