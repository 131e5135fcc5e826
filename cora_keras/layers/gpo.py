"""Generalised pooling operator (GPO) over a variable number of features."""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from cora_keras.layers.gru import LengthMaskedGRU
from cora_keras.layers.position_encoding import length_mask, sinusoid_table
from cora_keras.layers.sorting import descending_order


@keras.saving.register_keras_serializable(package="cora_keras")
class GPO(keras.layers.Layer):
    """Learned weighted sum of per-channel sorted features (MODEL.md 4).

    A bidirectional GRU over sinusoid position codes scores each rank k;
    the weights are a softmax over the valid ranks (temperature 0.1), and
    the output is sum_k w_k * (k-th largest value of each channel).

    The weights depend only on the valid count L, so they are computed
    once per call for every L in 1..K (a (K, K) table) and gathered per
    row: the same numbers as running the GRU per row, at a cost
    independent of the batch size. Channels are ranked by
    `sorting.descending_order` (a sorting network on JAX) and gathered,
    so the gradient is the gather's.

    Args:
        hidden: size of the position codes and of the GRU (32).
    """

    def __init__(self, hidden: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.forward_gru = LengthMaskedGRU(hidden, return_sequences=True, name="forward_gru")
        self.backward_gru = LengthMaskedGRU(hidden, return_sequences=True, name="backward_gru")
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def build(self, features_shape, counts_shape=None):
        self.forward_gru.build((None, None, self.hidden))
        self.backward_gru.build((None, None, self.hidden))
        self.score.build((None, self.hidden))

    def weight_table(self, length: int):
        """(length, length): row l holds the pooling weights for L = l + 1."""
        codes = sinusoid_table(length, self.hidden)
        l_idx, t_idx = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
        valid = t_idx <= l_idx
        # Row l reads positions l, l-1, .., 0: the backward pass of length l+1.
        reversed_codes = np.where(valid[..., None], codes[np.clip(l_idx - t_idx, 0, None)], 0)
        lengths = np.arange(1, length + 1, dtype=np.int32)
        _, forward = self.forward_gru(ops.convert_to_tensor(codes[None]), np.array([length], np.int32))
        _, backward = self.backward_gru(ops.convert_to_tensor(reversed_codes.astype(np.float32)), lengths)
        # State at position k of row l is the backward output at step l - k.
        back_index = np.where(valid, l_idx * length + np.clip(l_idx - t_idx, 0, None), 0)
        backward = ops.take(
            ops.reshape(backward, (length * length, self.hidden)), back_index.reshape(-1), axis=0
        )
        hidden = (forward[0][None] + ops.reshape(backward, (length, length, self.hidden))) / 2.0
        scores = ops.squeeze(self.score(hidden), -1)
        scores = ops.where(ops.convert_to_tensor(valid), scores, -10000.0)
        return ops.softmax(scores / 0.1, axis=-1)

    def call(self, features, counts):
        """features (B, K, d), counts (B,) valid rows first -> (B, d)."""
        length = features.shape[1]
        counts = ops.clip(ops.cast(counts, "int32"), 1, length)
        weights = ops.take(self.weight_table(length), counts - 1, axis=0)
        mask = length_mask(counts, length)[:, :, None] > 0
        masked = ops.where(mask, features, -10000.0)
        ranked = ops.take_along_axis(masked, descending_order(masked), axis=1)
        ranked = ops.where(mask, ranked, 0.0)
        return ops.sum(weights[:, :, None] * ranked, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden)
        return config
