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
    GPO pooling over the valid regions. With `pair_size` > 0, pairwise
    relation features are added: ReLU(U r_i + V r_j + b) for every ordered
    pair (i, j) of the `pair_regions` regions a learned gate rates highest,
    averaged with the pair's gate weights and projected to D. Unlike
    pooled single regions, they can say which region stands where relative
    to which (for relations such as "left of").

    Every per-row step runs on packed rows: with `row_budget` set, only the
    valid rows (at most `row_budget` per batch) are computed; padded rows
    are zero, so their only effect, on the BatchNorm statistics, is added
    exactly (they all equal the MLP's first bias).

    Args:
        embed_size: D.
        num_heads: self-attention heads (16).
        dropout: dropout on the input features and the position codes.
        gpo_hidden: GPO GRU size.
        pair_size: width of the pairwise relation features (0: none).
        pair_regions: regions, picked by a learned gate, whose pairs are used.
    """

    def __init__(
        self,
        embed_size: int = 1024,
        num_heads: int = 16,
        dropout: float = 0.1,
        gpo_hidden: int = 32,
        pair_size: int = 0,
        pair_regions: int = 12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_size = embed_size
        self.num_heads = num_heads
        self.dropout = dropout
        self.gpo_hidden = gpo_hidden
        self.pair_size = pair_size
        self.pair_regions = pair_regions
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
        if pair_size:
            self.pair_first = keras.layers.Dense(pair_size, name="pair_first")
            self.pair_second = keras.layers.Dense(pair_size, use_bias=False, name="pair_second")
            self.pair_gate = keras.layers.Dense(1, name="pair_gate")
            # Zero at the start: the tower begins as the paper's.
            self.pair_out = keras.layers.Dense(d, kernel_initializer="zeros", name="pair_out")

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
        if self.pair_size:
            self.pair_gate.build((None, d))
            self.pair_first.build((None, d))
            self.pair_second.build((None, d))
            self.pair_out.build((None, self.pair_size))

    def call(self, regions, counts, row_budget: int | None = None, training=None):
        return self.pool(self.encode_regions(regions, counts, row_budget, training=training), counts)

    def pool(self, features, counts):
        """(B, N, D) encoded regions -> (B, D): GPO (plus the pair features)."""
        image = self.gpo(features, counts)
        if self.pair_size:
            image = image + self.pair_features(features, counts)
        return image

    def encode_regions(self, regions, counts, row_budget: int | None = None, training=None):
        """(B, N, D) encoded regions, the input of GPO: steps 1-5 of MODEL.md 1
        (padded rows zero)."""
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
        return to_slots(features + self.feed_forward_out(h), d)

    def pair_features(self, regions, counts):
        """(B, D) from encoded regions (B, N, D): over the ordered pairs (i, j)
        of the `pair_regions` valid regions with the highest gate logits,
        the mean of ReLU(U r_i + V r_j + b) weighted by g_i g_j, projected
        to D; g = sigmoid(gate(r))."""
        n = regions.shape[1]
        k = min(self.pair_regions, n)
        valid = length_mask(counts, n)
        logits = ops.squeeze(self.pair_gate(regions), -1)
        _, top = ops.top_k(ops.where(valid, logits, -1e9), k)
        flat = top + ops.arange(ops.shape(regions)[0], dtype=top.dtype)[:, None] * n
        chosen = ops.take(ops.reshape(regions, (-1, regions.shape[2])), flat, axis=0)  # (B, k, D)
        gates = ops.take(ops.reshape(ops.sigmoid(logits), (-1,)), flat, axis=0)
        gates = gates * ops.cast(ops.take(ops.reshape(valid, (-1,)), flat, axis=0), gates.dtype)
        first, second = self.pair_first(chosen), self.pair_second(chosen)
        pairs = ops.relu(first[:, :, None, :] + second[:, None, :, :])
        weights = gates[:, :, None] * gates[:, None, :]
        total = ops.einsum("bijp,bij->bp", pairs, weights)
        count = ops.sum(weights, axis=(1, 2))[:, None]
        return self.pair_out(total / ops.maximum(count, 1e-6))

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_size=self.embed_size,
            num_heads=self.num_heads,
            dropout=self.dropout,
            gpo_hidden=self.gpo_hidden,
            pair_size=self.pair_size,
            pair_regions=self.pair_regions,
        )
        return config
