"""make_graph_layer: the composers' choice of graph layer."""

from __future__ import annotations

import pytest

from cora_keras.layers.graph_attention import GraphAttention
from cora_keras.layers.graph_layers import make_graph_layer


def test_cora_kind_is_graph_attention_with_the_arguments() -> None:
    layer = make_graph_layer("cora", 32, 4, 0.05, name="graph_0")
    assert isinstance(layer, GraphAttention)
    assert (layer.hidden, layer.num_heads, layer.dropout, layer.name) == (32, 4, 0.05, "graph_0")


def test_unknown_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="graph_layer='gcn'; allowed: cora, spektral_gat"):
        make_graph_layer("gcn", 32, 4, 0.0, name="graph_0")
