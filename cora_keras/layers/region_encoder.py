"""Image tower: region features -> image embedding ("gpo-selfattn")."""

from __future__ import annotations

import keras
from keras import ops

from cora_keras.layers.gpo import GPO
from cora_keras.layers.multi_head_attention import FusedSelfAttention
from cora_keras.layers.packing import pack_slots, unpack
from cora_keras.layers.position_encoding import length_mask, sinusoid_table
from cora_keras.layers.row_batch_norm import RowBatchNorm


@keras.saving.register_keras_serializable(package="cora_keras")
class RegionEncoder(keras.layers.Layer):
    """Region features (B, N, F) and valid counts (B,) -> (B, D) (MODEL.md 1).

    Linear + MLP(BatchNorm) projection, one self-attention block over the
    regions with sinusoid region positions, a feed-forward residual, then
    GPO pooling over the valid regions.

    Every per-row step runs on packed rows: with `row_budget` set, only the
    valid rows (at most `row_budget` per batch) are computed; padded rows
    are zero, so their only effect, on the BatchNorm statistics, is added
    exactly (they all equal the MLP's first bias).

    Args:
        embed_size: D.
        num_heads: self-attention heads (16).
        dropout: dropout on the input features and the position codes.
        gpo_hidden: GPO GRU size.
    """

    def __init__(
        self,
        embed_size: int = 1024,
        num_heads: int = 16,
        dropout: float = 0.1,
        gpo_hidden: int = 32,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_size = embed_size
        self.num_heads = num_heads
        self.dropout = dropout
        self.gpo_hidden = gpo_hidden
        d = embed_size
        self.input_dropout = keras.layers.Dropout(dropout)
        self.linear = keras.layers.Dense(d, name="linear")
        self.mlp_in = keras.layers.Dense(512, name="mlp_in")
        self.mlp_norm = RowBatchNorm(momentum=0.9, epsilon=1e-5, name="mlp_norm")
        self.mlp_out = keras.layers.Dense(d, name="mlp_out")
        self.position = keras.layers.Dense(d, name="position")
        self.position_dropout = keras.layers.Dropout(dropout)
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="attention_norm")
        self.attention = FusedSelfAttention(d, num_heads, name="attention")
        self.feed_forward_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="feed_forward_norm")
        self.feed_forward_in = keras.layers.Dense(d, name="feed_forward_in")
        self.feed_forward_out = keras.layers.Dense(d, name="feed_forward_out")
        self.gpo = GPO(gpo_hidden, name="gpo")

    def build(self, regions_shape, counts_shape=None):
        f, d = regions_shape[-1], self.embed_size
        self.linear.build((None, f))
        self.mlp_in.build((None, f))
        self.mlp_norm.build((None, 512))
        self.mlp_out.build((None, 512))
        self.position.build((None, 16))
        for norm in (self.attention_norm, self.feed_forward_norm):
            norm.build((None, d))
        self.attention.build()
        self.feed_forward_in.build((None, d))
        self.feed_forward_out.build((None, d))
        self.gpo.build((None, None, d))

    def call(self, regions, counts, row_budget: int | None = None, training=None):
        n, f, d = regions.shape[1], regions.shape[2], self.embed_size
        valid = ops.reshape(length_mask(counts, n), (-1,))
        slots, present, inverse = pack_slots(valid, row_budget)
        present = ops.cast(present, "float32")
        x = ops.take(ops.reshape(regions, (-1, f)), slots, axis=0)
        x = self.input_dropout(x, training=training)

        def to_slots(rows, width):
            return ops.reshape(unpack(rows, inverse), (-1, n, width))

        def to_rows(dense, width):
            return ops.take(ops.reshape(dense, (-1, width)), slots, axis=0)

        absent = ops.cast(ops.shape(valid)[0], "float32") - ops.sum(present)
        h = self.mlp_norm(self.mlp_in(x), present, absent, self.mlp_in.bias, training=training)
        features = self.linear(x) + self.mlp_out(ops.relu(h))
        codes = ops.convert_to_tensor(sinusoid_table(n, 16))
        positions = ops.take(self.position(codes), slots % n, axis=0)
        h = self.attention_norm(features + self.position_dropout(positions, training=training))
        qkv = to_slots(self.attention.in_projection(h), 3 * d)
        attended = to_rows(self.attention.attend(qkv, length_mask(counts, n)), d)
        features = features + self.attention.out_projection(attended)
        h = ops.relu(self.feed_forward_in(self.feed_forward_norm(features)))
        features = features + self.feed_forward_out(h)
        return self.gpo(to_slots(features, d), counts)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_size=self.embed_size,
            num_heads=self.num_heads,
            dropout=self.dropout,
            gpo_hidden=self.gpo_hidden,
        )
        return config
