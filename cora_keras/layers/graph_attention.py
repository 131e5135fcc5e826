"""Dense multi-head graph attention with an adjacency mask (MODEL.md 2.2)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cora_keras")
class GraphAttention(keras.layers.Layer):
    """One graph attention layer with a GATv2-style score.

    For node i attending to node j in head c:
    `s_ijc = a_c . LeakyReLU_0.2(q_ic + k_jc) + beta_c`, masked to -1e9
    where the adjacency is 0, softmax over j, and
    `out_i = ReLU(LayerNorm(concat_c sum_j alpha_ijc v_jc + q_i))`.

    The three steps are exposed separately (`project`, `attend`,
    `combine`) so composers can project only real nodes and attend over
    dense slots; `call` chains them on dense node tensors.

    Args:
        hidden: node size H (divisible by `num_heads`).
        num_heads: attention heads (16).
        dropout: dropout on the value projection.
    """

    def __init__(self, hidden: int, num_heads: int = 16, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if hidden % num_heads:
            raise ValueError(f"hidden={hidden} is not divisible by num_heads={num_heads}")
        self.hidden = hidden
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = keras.layers.Dense(hidden, name="query")
        self.key = keras.layers.Dense(hidden, name="key")
        self.value = keras.layers.Dense(hidden, name="value")
        self.value_dropout = keras.layers.Dropout(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")

    def build(self, input_shape=None):
        for dense in (self.query, self.key, self.value):
            dense.build((None, self.hidden))
        self.norm.build((None, self.hidden))
        head = self.hidden // self.num_heads
        self.score_vectors = self.add_weight(
            name="score_vectors", shape=(self.num_heads, head), initializer="glorot_uniform"
        )
        self.score_bias = self.add_weight(
            name="score_bias", shape=(self.num_heads,), initializer="zeros"
        )

    def project(self, nodes, training=None):
        """nodes (..., H) -> query, key, value (..., H)."""
        value = self.value_dropout(self.value(nodes), training=training)
        return self.query(nodes), self.key(nodes), value

    def attend(self, query, key, value, adjacency):
        """Dense (b, n, H) q/k/v and (b, n, m) adjacency -> (b, n, H) messages.

        `query` may hold fewer nodes (n) than `key`/`value` (m).
        """
        h, c = self.num_heads, self.hidden // self.num_heads
        b, n, m = ops.shape(query)[0], query.shape[1], key.shape[1]
        q = ops.reshape(query, (b, n, 1, h, c))
        k = ops.reshape(key, (b, 1, m, h, c))
        pairs = ops.leaky_relu(q + k, negative_slope=0.2)
        scores = ops.sum(pairs * self.score_vectors, axis=-1) + self.score_bias
        scores = ops.where(adjacency[..., None] > 0, scores, -1e9)
        alpha = ops.softmax(scores, axis=2)
        v = ops.reshape(value, (b, m, h, c))
        messages = ops.einsum("bnmh,bmhc->bnhc", alpha, v)
        return ops.reshape(messages, (b, n, self.hidden))

    def combine(self, messages, query):
        """ReLU(LayerNorm(messages + query)): the residual is the query."""
        return ops.relu(self.norm(messages + query))

    def call(self, nodes, adjacency, training=None):
        """nodes (b, n, H), adjacency (b, n, n) -> (b, n, H)."""
        query, key, value = self.project(nodes, training=training)
        return self.combine(self.attend(query, key, value, adjacency), query)

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, num_heads=self.num_heads, dropout=self.dropout)
        return config
