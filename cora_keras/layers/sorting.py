"""Descending sort order along axis 1, for GPO's per-channel ranking.

On JAX, XLA's CPU sort and its gradient took most of GPO's time on the
demo shapes: GPO's forward and gradient on (32, 36, 256) 32 ms, 10 ms
with the order from a bitonic network of elementwise compare-and-swap
steps and the features gathered by it (2 cores). TensorFlow and PyTorch
run their own argsort faster than the network (23 vs 32 ms and 53 vs
101 ms for the same GPO step), so they keep it.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def descending_order(values):
    """(B, K, d) values -> (B, K, d) int32 indices along axis 1 that sort
    each (row, channel) in descending order; no gradient flows through them."""
    values = ops.stop_gradient(ops.convert_to_tensor(values))
    if keras.backend.backend() != "jax":
        return ops.cast(ops.argsort(-values, axis=1), "int32")
    return _bitonic_order(values)


def _bitonic_order(values):
    """`descending_order` by a bitonic sorting network (K padded to a power of 2)."""
    batch, length, depth = ops.shape(values)[0], values.shape[1], values.shape[2]
    size = 1 << max(length - 1, 0).bit_length()
    order = ops.broadcast_to(ops.arange(size, dtype="int32")[None, :, None], (batch, size, depth))
    if size > length:
        pad = ops.full((batch, size - length, depth), -np.inf, dtype=values.dtype)
        values = ops.concatenate([values, pad], axis=1)
    block = 2
    while block <= size:
        stride = block // 2
        while stride >= 1:
            groups = size // (2 * stride)
            # Pair i with i + stride inside groups of 2 * stride; a group sorts
            # descending when its bit `block` is clear, ascending otherwise.
            descending = (np.arange(groups) * 2 * stride & block) == 0
            descending = ops.convert_to_tensor(descending[None, :, None, None])
            v = ops.reshape(values, (batch, groups, 2, stride, depth))
            o = ops.reshape(order, (batch, groups, 2, stride, depth))
            first, second = v[:, :, 0], v[:, :, 1]
            swap = ops.where(descending, first < second, first > second)
            values = ops.reshape(
                ops.stack([ops.where(swap, second, first), ops.where(swap, first, second)], axis=2),
                (batch, size, depth),
            )
            order = ops.reshape(
                ops.stack([ops.where(swap, o[:, :, 1], o[:, :, 0]), ops.where(swap, o[:, :, 0], o[:, :, 1])], axis=2),
                (batch, size, depth),
            )
            stride //= 2
        block *= 2
    return order[:, :length]
