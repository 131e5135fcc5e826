"""The graph layer a composer stacks: CORA's own, or spektral's GATConv."""

from __future__ import annotations

import keras

from cora_keras.layers.graph_attention import GraphAttention

GRAPH_LAYERS = ("cora", "spektral_gat")


def make_graph_layer(kind: str, hidden: int, num_heads: int, dropout: float, name: str):
    """A layer mapping (nodes (b, n, H), adjacency (b, n, n)) -> (b, n, H)."""
    if kind == "cora":
        return GraphAttention(hidden, num_heads, dropout, name=name)
    if kind == "spektral_gat":
        from cora_keras.layers.spektral_graph import SpektralGAT

        return SpektralGAT(hidden, num_heads, dropout, name=name)
    raise ValueError(f"graph_layer={kind!r}; allowed: {', '.join(GRAPH_LAYERS)}")
