"""Batch normalisation over packed rows, with absent zero rows accounted for."""

from __future__ import annotations

import keras
from keras import ops

from cora_keras.distribution import replica_sum


@keras.saving.register_keras_serializable(package="cora_keras")
class RowBatchNorm(keras.layers.Layer):
    """BatchNorm of (P, C) rows whose batch also holds `absent` rows equal to
    a known vector (e.g. a Linear's bias applied to zero padding rows).

    Training statistics are those of the whole batch: the weighted rows
    (`row_weight` 1 = present, 0 = budget padding) plus `absent` copies of
    `absent_value`, so packing out padded rows changes nothing. Under
    tf.distribute the sums run over every replica's rows, so the
    statistics are the global batch's (as under JAX). Momentum
    and epsilon follow Keras (PyTorch momentum 0.1 = Keras 0.9).

    Args:
        momentum: moving statistics momentum.
        epsilon: variance epsilon.
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros")
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(c,), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(c,), initializer="ones", trainable=False
        )

    def call(self, rows, row_weight, absent, absent_value, training=None):
        """rows (P, C), row_weight (P,), absent () count, absent_value (C,)."""
        if training:
            w = ops.cast(row_weight, rows.dtype)[:, None]
            absent = ops.cast(absent, rows.dtype)
            total = replica_sum(ops.sum(w) + absent)
            mean = replica_sum(ops.sum(w * rows, axis=0) + absent * absent_value) / total
            variance = replica_sum(
                ops.sum(w * ops.square(rows - mean), axis=0)
                + absent * ops.square(absent_value - mean)
            ) / total
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return (rows - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config
