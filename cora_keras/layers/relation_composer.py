"""Relation composer: entities + relation phrases -> caption embedding."""

from __future__ import annotations

import keras
from keras import ops

from cora_keras.layers.gpo import GPO
from cora_keras.layers.graph_layers import make_graph_layer
from cora_keras.layers.packing import unpack
from cora_keras.layers.position_encoding import sinusoid_table


@keras.saving.register_keras_serializable(package="cora_keras")
class RelationComposer(keras.layers.Layer):
    """Composes a caption from its entities and relations (MODEL.md 2.4).

    Graph positions, active/passive relation messages averaged per entity,
    then graph attention layers over the entity graph (self loops and an
    undirected edge per relation) and GPO over the real entities. Only
    real entities and relations are projected; attention scores are formed
    over the dense (B, E, E) slots, where padding is masked.

    Args:
        hidden: H.
        embed_size: D (Linear D->H on input and H->D on output if they differ).
        max_entities: E.
        num_layers: graph attention layers (2 in the paper's GRU config).
        num_heads: attention heads.
        word_dropout: dropout after the predicate word_fc.
        layer_dropout: dropout on positions, messages and between layers.
        attention_dropout: dropout on the graph attention values.
        use_graph_global: add a stack over the fully connected entity graph.
        gpo_hidden: GPO GRU size.
        graph_layer: "cora" or "spektral_gat".
    """

    def __init__(
        self,
        hidden: int = 1024,
        embed_size: int = 1024,
        max_entities: int = 13,
        num_layers: int = 2,
        num_heads: int = 16,
        word_dropout: float = 0.1,
        layer_dropout: float = 0.15,
        attention_dropout: float = 0.05,
        use_graph_global: bool = False,
        gpo_hidden: int = 32,
        graph_layer: str = "cora",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.embed_size = embed_size
        self.max_entities = max_entities
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.word_dropout = word_dropout
        self.layer_dropout = layer_dropout
        self.attention_dropout = attention_dropout
        self.use_graph_global = use_graph_global
        self.gpo_hidden = gpo_hidden
        self.graph_layer = graph_layer
        projected = hidden != embed_size
        self.input_projection = keras.layers.Dense(hidden, name="input_projection") if projected else None
        self.output_projection = keras.layers.Dense(embed_size, name="output_projection") if projected else None
        self.word_fc = keras.layers.Dense(hidden, activation="relu", name="word_fc")
        self.word_fc_dropout = keras.layers.Dropout(word_dropout)
        self.position = keras.layers.Dense(hidden, name="position")
        self.position_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="position_norm")
        self.active = keras.layers.Dense(hidden, activation="relu", name="active")
        self.passive = keras.layers.Dense(hidden, activation="relu", name="passive")
        self.message_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="message_norm")
        self.dropout = keras.layers.Dropout(layer_dropout)
        self.graph_layers = self._stack("graph")
        self.gpo = GPO(gpo_hidden, name="gpo")
        if use_graph_global:
            self.global_layers = self._stack("global")
            self.global_gpo = GPO(gpo_hidden, name="global_gpo")

    def _stack(self, prefix: str) -> list:
        return [
            make_graph_layer(
                self.graph_layer, self.hidden, self.num_heads, self.attention_dropout,
                name=f"{prefix}_{t}",
            )
            for t in range(self.num_layers)
        ]

    def build(self, entities_shape, predicates_shape=None, graph_shape=None):
        h = self.hidden
        if self.input_projection is not None:
            self.input_projection.build((None, self.embed_size))
            self.output_projection.build((None, h))
        self.word_fc.build((None, predicates_shape[-1]))
        self.position.build((None, 16))
        self.position_norm.build((None, h))
        self.active.build((None, 2 * h))
        self.passive.build((None, 2 * h))
        self.message_norm.build((None, h))
        for layer in self.graph_layers + getattr(self, "global_layers", []):
            layer.build((None, None, h))
        self.gpo.build((None, None, h))
        if self.use_graph_global:
            self.global_gpo.build((None, None, h))

    def call(self, entities, predicates, graph, training=None):
        """Compose captions.

        Args:
            entities: (Pe, D) packed entity embeddings from the entity composer.
            predicates: (Pr, W') encoded packed predicates.
            graph: index tensors from `CoraModel.text_graph`: `entity_slot`
                (Pe,), `entity_inverse` (B*E,), `entity_counts` (B,),
                `relation_subject` / `relation_object` (Pr,) packed entity
                indices, `active_weight` / `passive_weight` (Pr,) 1 for a
                real relation within the per-entity cap R, `adjacency`
                (B, E, E).
        Returns:
            (B, D) caption embeddings (not normalised).
        """
        e_max = self.max_entities
        x = entities if self.input_projection is None else self.input_projection(entities)
        codes = ops.convert_to_tensor(sinusoid_table(e_max, 16))
        slot_position = graph["entity_slot"] % e_max
        positions = ops.take(self.position(codes), slot_position, axis=0)
        x = self.position_norm(x + self.dropout(positions, training=training))

        pred = self.word_fc_dropout(self.word_fc(predicates), training=training)
        num_entities = ops.shape(x)[0]
        pair = ops.concatenate([pred, unpack(x, graph["relation_object"])], axis=-1)
        active = self.dropout(self.active(pair), training=training)
        passive = self.dropout(self.passive(pair), training=training)
        w_act = graph["active_weight"][:, None]
        w_pas = graph["passive_weight"][:, None]
        segments = num_entities + 1
        total = ops.segment_sum(active * w_act, graph["relation_subject"], segments) + ops.segment_sum(
            passive * w_pas, graph["relation_object"], segments
        )
        count = ops.segment_sum(w_act, graph["relation_subject"], segments) + ops.segment_sum(
            w_pas, graph["relation_object"], segments
        )
        messages = (total / ops.maximum(count, 1.0))[:num_entities]
        x = self.dropout(self.message_norm(x + messages), training=training)

        caption = self.gpo(self._run_stack(self.graph_layers, x, graph["adjacency"], graph, training), graph["entity_counts"])
        if self.use_graph_global:
            mask = ops.cast(ops.reshape(graph["entity_inverse"], (-1, e_max)) < num_entities, "float32")
            full = mask[:, :, None] * mask[:, None, :]
            caption = caption + self.global_gpo(self._run_stack(self.global_layers, x, full, graph, training), graph["entity_counts"])
        if self.output_projection is not None:
            caption = self.output_projection(caption)
        return caption

    def _run_stack(self, layers, x, adjacency, graph, training):
        """Graph layers over packed nodes -> dense (B, E, H) node slots."""
        e_max, h = self.max_entities, self.hidden
        inverse = graph["entity_inverse"]

        def to_slots(values):
            return ops.reshape(unpack(values, inverse), (-1, e_max, h))

        for t, layer in enumerate(layers):
            if t:
                x = self.dropout(x, training=training)
            if self.graph_layer == "cora":
                q, k, v = layer.project(x, training=training)
                messages = layer.attend(to_slots(q), to_slots(k), to_slots(v), adjacency)
                packed = ops.take(ops.reshape(messages, (-1, h)), graph["entity_slot"], axis=0)
                x = layer.combine(packed, q)
            else:
                out = layer(to_slots(x), adjacency, training=training)
                x = ops.take(ops.reshape(out, (-1, h)), graph["entity_slot"], axis=0)
        return to_slots(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden=self.hidden,
            embed_size=self.embed_size,
            max_entities=self.max_entities,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            word_dropout=self.word_dropout,
            layer_dropout=self.layer_dropout,
            attention_dropout=self.attention_dropout,
            use_graph_global=self.use_graph_global,
            gpo_hidden=self.gpo_hidden,
            graph_layer=self.graph_layer,
        )
        return config
