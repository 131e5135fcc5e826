"""Multi-head self-attention with one fused q/k/v projection."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cora_keras")
class FusedSelfAttention(keras.layers.Layer):
    """Standard scaled dot-product self-attention with a key padding mask.

    One (D, 3D) input projection with columns (q, k, v), `num_heads`
    heads, and a (D, D) output projection: the layout of PyTorch's
    `nn.MultiheadAttention` (transposed), so release weights map directly.
    The projections are per row, so callers may apply them to packed rows
    and `attend` over dense (B, N) slots.

    Args:
        hidden: model size D.
        num_heads: attention heads.
    """

    def __init__(self, hidden: int, num_heads: int = 16, **kwargs):
        super().__init__(**kwargs)
        if hidden % num_heads:
            raise ValueError(f"hidden={hidden} is not divisible by num_heads={num_heads}")
        self.hidden = hidden
        self.num_heads = num_heads
        self.in_projection = keras.layers.Dense(3 * hidden, name="in_projection")
        self.out_projection = keras.layers.Dense(hidden, name="out_projection")

    def build(self, input_shape=None):
        self.in_projection.build((None, self.hidden))
        self.out_projection.build((None, self.hidden))

    def attend(self, qkv, key_mask):
        """Projected (B, N, 3D) q/k/v and (B, N) key mask -> (B, N, D), before
        the output projection."""
        h, c = self.num_heads, self.hidden // self.num_heads
        b, n = ops.shape(qkv)[0], qkv.shape[1]
        qkv = ops.reshape(qkv, (b, n, 3, h, c))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = ops.einsum("bnhc,bmhc->bhnm", q, k) / math.sqrt(c)
        scores = ops.where(key_mask[:, None, None, :] > 0, scores, -1e9)
        weights = ops.softmax(scores, axis=-1)
        return ops.reshape(ops.einsum("bhnm,bmhc->bnhc", weights, v), (b, n, self.hidden))

    def call(self, x, key_mask):
        """x (B, N, D), key_mask (B, N) with 1 at real rows -> (B, N, D)."""
        return self.out_projection(self.attend(self.in_projection(x), key_mask))

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, num_heads=self.num_heads)
        return config
