"""Entity composer: object name + attribute phrases -> entity embeddings."""

from __future__ import annotations

import keras
from keras import ops

from cora_keras.layers.graph_layers import make_graph_layer
from cora_keras.layers.packing import unpack


@keras.saving.register_keras_serializable(package="cora_keras")
class EntityComposer(keras.layers.Layer):
    """Composes each real entity from its name and attributes (MODEL.md 2.3).

    Per entity a star graph: node 0 = name (with a self loop), nodes
    1..A = its real attributes, edges 0 <-> k. With CORA's graph attention
    only real nodes are projected: node 0 attends over itself and its
    attributes, and an attribute node (whose only neighbour is node 0)
    gets `combine(v_0, q_k)`, exactly the dense masked computation. The
    entity embedding is node 0's output.

    Args:
        hidden: H.
        embed_size: D (a Linear H->D follows when they differ).
        num_layers: graph attention layers (1 in the paper's GRU config).
        num_heads: attention heads.
        word_dropout: dropout after word_fc.
        layer_dropout: dropout between stacked graph layers.
        graph_layer: "cora" or "spektral_gat".
    """

    def __init__(
        self,
        hidden: int = 1024,
        embed_size: int = 1024,
        num_layers: int = 1,
        num_heads: int = 16,
        word_dropout: float = 0.1,
        layer_dropout: float = 0.15,
        graph_layer: str = "cora",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.embed_size = embed_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.word_dropout = word_dropout
        self.layer_dropout = layer_dropout
        self.graph_layer = graph_layer
        self.word_fc = keras.layers.Dense(hidden, activation="relu", name="word_fc")
        self.word_fc_dropout = keras.layers.Dropout(word_dropout)
        self.graph_layers = [
            make_graph_layer(graph_layer, hidden, num_heads, 0.0, name=f"graph_{t}")
            for t in range(num_layers)
        ]
        self.between_dropout = keras.layers.Dropout(layer_dropout)
        self.output_projection = (
            keras.layers.Dense(embed_size, name="output_projection")
            if hidden != embed_size
            else None
        )

    def build(self, names_shape, attributes_shape=None, attribute_index_shape=None):
        self.word_fc.build((None, names_shape[-1]))
        for layer in self.graph_layers:
            layer.build((None, None, self.hidden))
        if self.output_projection is not None:
            self.output_projection.build((None, self.hidden))

    def call(self, names, attributes, attribute_index, attribute_slot, training=None):
        """Compose packed entities.

        Args:
            names: (Pe, W') encoded object names of the packed entities.
            attributes: (Pa, W') encoded packed attributes.
            attribute_index: (Pe, A) packed attribute row of each slot, Pa
                for an empty slot.
            attribute_slot: (Pa,) where each packed attribute sits:
                packed entity * A + position among that entity's attributes.
        Returns:
            (Pe, D) entity embeddings (not normalised).
        """
        x0 = self.word_fc_dropout(self.word_fc(names), training=training)
        xa = self.word_fc_dropout(self.word_fc(attributes), training=training)
        present = ops.cast(attribute_index < ops.shape(attributes)[0], "float32")
        star = ops.concatenate([ops.ones_like(present[:, :1]), present], axis=1)
        for t, layer in enumerate(self.graph_layers):
            if t:
                x0 = self.between_dropout(x0, training=training)
                xa = self.between_dropout(xa, training=training)
            last = t == self.num_layers - 1
            if self.graph_layer == "cora":
                x0, xa = self._cora_step(layer, x0, xa, attribute_index, attribute_slot, star, last, training)
            else:
                x0, xa = self._dense_step(layer, x0, xa, attribute_index, attribute_slot, star, training)
        if self.output_projection is not None:
            x0 = self.output_projection(x0)
        return x0

    def _cora_step(self, layer, x0, xa, attribute_index, attribute_slot, star, last, training):
        q0, k0, v0 = layer.project(x0, training=training)
        qa, ka, va = layer.project(xa, training=training)
        keys = ops.concatenate([k0[:, None], unpack(ka, attribute_index)], axis=1)
        values = ops.concatenate([v0[:, None], unpack(va, attribute_index)], axis=1)
        messages = layer.attend(q0[:, None], keys, values, star[:, None, :])[:, 0]
        new_x0 = layer.combine(messages, q0)
        if last:
            return new_x0, xa
        owner = attribute_slot // ops.shape(attribute_index)[1]
        return new_x0, layer.combine(ops.take(v0, owner, axis=0), qa)

    def _dense_step(self, layer, x0, xa, attribute_index, attribute_slot, star, training):
        nodes = ops.concatenate([x0[:, None], unpack(xa, attribute_index)], axis=1)
        n = nodes.shape[1]
        first = ops.cast(ops.arange(n) == 0, "float32")
        # Star adjacency: row 0 = star, column 0 = star, nothing else.
        adjacency = star[:, :, None] * first[None, None, :] + first[None, :, None] * star[:, None, :]
        adjacency = ops.minimum(adjacency, 1.0)
        out = layer(nodes, adjacency, training=training)
        flat = ops.reshape(out[:, 1:], (-1, ops.shape(out)[-1]))
        return out[:, 0], ops.take(flat, attribute_slot, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden=self.hidden,
            embed_size=self.embed_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            word_dropout=self.word_dropout,
            layer_dropout=self.layer_dropout,
            graph_layer=self.graph_layer,
        )
        return config

