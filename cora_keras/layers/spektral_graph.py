"""Spektral's GATConv as a composer graph layer (TensorFlow backend only)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cora_keras")
class SpektralGAT(keras.layers.Layer):
    """`spektral.layers.GATConv` in dense mode, then ReLU(LayerNorm(.)).

    An optional replacement for CORA's graph attention (config
    `graph_layer: spektral_gat`): GAT scores from spektral, heads
    concatenated to `hidden`. Spektral 1.3.1 is TensorFlow-only and under
    Keras 3 needs an explicit node mask (it multiplies its output by
    `mask[0]`), which this wrapper passes: nodes with no edge are masked.

    Args:
        hidden: node size H (divisible by `num_heads`).
        num_heads: attention heads.
        dropout: dropout on the attention coefficients.
    """

    def __init__(self, hidden: int, num_heads: int = 16, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "graph_layer 'spektral_gat' needs the TensorFlow backend "
                f"(KERAS_BACKEND=tensorflow); this process runs {keras.backend.backend()!r}. "
                "Use graph_layer 'cora' on other backends."
            )
        if hidden % num_heads:
            raise ValueError(f"hidden={hidden} is not divisible by num_heads={num_heads}")
        try:
            from spektral.layers import GATConv
        except ImportError as error:
            raise ImportError("graph_layer 'spektral_gat' needs spektral: pip install spektral==1.3.1") from error
        self.hidden = hidden
        self.num_heads = num_heads
        self.dropout = dropout
        self.conv = GATConv(
            channels=hidden // num_heads,
            attn_heads=num_heads,
            concat_heads=True,
            dropout_rate=dropout,
            add_self_loops=False,
            name="gat",
        )
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")

    def build(self, input_shape=None):
        self.conv.build([(None, None, self.hidden), (None, None, None)])
        self.norm.build((None, self.hidden))

    def call(self, nodes, adjacency, training=None):
        """nodes (b, n, H), adjacency (b, n, n) -> (b, n, H)."""
        adjacency = ops.cast(adjacency, nodes.dtype)
        node_mask = ops.cast(ops.max(adjacency, axis=-1, keepdims=True) > 0, nodes.dtype)
        out = self.conv([nodes, adjacency], mask=[node_mask, None], training=training)
        return ops.relu(self.norm(out))

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, num_heads=self.num_heads, dropout=self.dropout)
        return config
