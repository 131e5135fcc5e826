"""CoraModel: image tower, text tower and the three-term objective."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cora_keras import distribution, losses
from cora_keras.config import LossConfig, ModelConfig
from cora_keras.inputs import (
    CAPTION_IMAGE,
    SWAP_RELATION,
    caption_specs,
    distinct_phrase_budgets,
    image_specs,
    phrase_budgets,
    region_budget,
)
from cora_keras.layers.entity_composer import EntityComposer
from cora_keras.layers.packing import pack_distinct, pack_slots, unpack
from cora_keras.layers.phrase_encoder import PhraseEncoder
from cora_keras.layers.region_encoder import RegionEncoder
from cora_keras.layers.relation_composer import RelationComposer
from cora_keras.layers.spatial_binding import SpatialBinding

LOSS_TERMS = (
    "loss", "contrastive_loss", "triplet_loss", "specificity_loss", "relation_swap_loss", "region_entity_loss",
    "relation_readout_loss",
)


@keras.saving.register_keras_serializable(package="cora_keras")
class CoraModel(keras.Model):
    """The CORA dual encoder (MODEL.md).

    `call(inputs)` takes the dict of `cora_keras.inputs` (image and caption
    tensors) and returns L2-normalised `image` (B, D), `caption` (B, D) and
    `entities` (B, E, D) plus `entity_mask` (B, E); with `caption_image`
    among the inputs, the image inputs hold fewer images and `image` is
    gathered per caption. In training with `swap_relation` among the
    inputs (`loss.relation_swap_weight` > 0), `swap_caption` (B, D) and
    `swap_mask` (B,) are added (see `swapped_entity_order`); with
    `loss.region_entity_weight` > 0, `region_entity_cost` (B,) (see
    `losses.region_entity_cost`). With `model.binding_axes` K > 0, image,
    caption and entities are (1 + K) * D wide: the unit D main dimensions
    then the spatial binding (`layers.spatial_binding`; zero for
    entities), which reads the towers' rows, entities and predicates
    through stop_gradient. `encode_images` and `encode_captions` run one
    tower. Training with `fit` takes `(x, y)` with `y` the targets of
    `cora_keras.inputs`; `compute_loss` is the three-term objective (with
    the binding, term (a) is `losses.bound_contrastive_loss`), each term
    tracked as its own metric.

    Args:
        model_config: a `ModelConfig` or its dict.
        loss_config: a `LossConfig` or its dict.
    """

    def __init__(self, model_config=None, loss_config=None, **kwargs):
        super().__init__(**kwargs)
        self.model_config = _as_config(ModelConfig, model_config)
        self.loss_config = _as_config(LossConfig, loss_config)
        c = self.model_config
        self.region_encoder = RegionEncoder(
            c.embed_size, c.num_heads, c.region_dropout, c.gpo_hidden, c.region_pair_size,
            c.region_pair_regions, name="region_encoder",
        )
        self.phrase_encoder = PhraseEncoder(
            c.vocab_size, c.word_dim, c.text_encoder, c.bert_preset, c.bert_backbone,
            name="phrase_encoder",
        )
        if c.text_encoder == "bow":
            self.bow_projection = keras.layers.Dense(c.embed_size, name="bow_projection")
        else:
            self.entity_composer = EntityComposer(
                c.composer_hidden, c.embed_size, c.entity_layers, c.num_heads,
                c.word_dropout, c.composer_dropout, c.graph_layer, name="entity_composer",
            )
            self.relation_composer = RelationComposer(
                c.composer_hidden, c.embed_size, c.max_entities, c.relation_layers, c.num_heads,
                c.word_dropout, c.composer_dropout, c.relation_attention_dropout,
                c.use_graph_global, c.gpo_hidden, c.graph_layer, name="relation_composer",
            )
        # The bag-of-words ablation has no relations to bind.
        self.spatial_binding = (
            SpatialBinding(c.binding_axes, c.binding_hidden, name="spatial_binding")
            if c.binding_axes and c.text_encoder != "bow"
            else None
        )
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        # 1: the triplet term takes the hardest negative; 0: it sums over all
        # negatives (set per epoch by `training.TripletWarmup`).
        self.hardest_negatives = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="hardest_negatives"
        )

    # ------------------------------------------------------------------ build
    def build(self, input_shape=None):
        """Create every weight by running one example through both towers."""
        if self.built:
            return
        example = example_inputs(self.model_config, batch_size=1)
        # The image tower runs its parts (encode_regions, pool), not its call.
        self.region_encoder.build(example["regions"].shape)
        self.encode_images(example)
        self.encode_captions(example)
        self.built = True

    def get_build_config(self):
        # Non-empty, so that loading a .keras file calls build_from_config.
        return {"built_from": "model_config"}

    def build_from_config(self, config):
        self.build()

    # ---------------------------------------------------------------- towers
    def encode_images(self, inputs, training=None):
        """(B, D) normalised image embeddings from `regions`, `region_counts`
        ((B, (1 + K) * D) with K spatial binding axes, the first D unit)."""
        return self._image_tower(inputs, training)[0]

    def _image_tower(self, inputs, training):
        """Image embeddings and the (B, N, D) unit region rows GPO pooled."""
        regions, counts = inputs["regions"], inputs["region_counts"]
        batch = regions.shape[0]
        # A training budget: region dropout leaves a share of the rows valid,
        # while evaluation feeds all of them.
        budget = region_budget(self.model_config, batch) if batch is not None and training else None
        rows = self.region_encoder.encode_regions(regions, counts, row_budget=budget, training=training)
        image = _l2_normalize(self.region_encoder.pool(rows, counts))
        unit_rows = _l2_normalize(rows)
        if self.spatial_binding is not None:
            # The binding reads the towers' rows without training them (they
            # would lean on it: see losses.bound_contrastive_loss).
            bound = self.spatial_binding.image_part(ops.stop_gradient(unit_rows), regions, counts)
            image = ops.concatenate([image, bound], axis=-1)
        return image, unit_rows

    def encode_captions(self, inputs, training=None):
        """Normalised `caption` (B, D), `entities` (B, E, D) and `entity_mask` (B, E)."""
        return self._caption_tower(inputs, training)[0]

    def _caption_tower(self, inputs, training):
        """The caption outputs and what a relation term reads of the text
        graph: `graph`, unit packed `entities`, encoded `predicates` (None
        for the bag-of-words ablation)."""
        c = self.model_config
        if c.text_encoder == "bow":
            return self._encode_bags_of_words(inputs), None
        e_max = c.max_entities
        entity_tokens = inputs["entity_tokens"]
        batch = entity_tokens.shape[0]
        budgets = phrase_budgets(c, batch) if batch is not None else None
        graph = text_graph(inputs, c, budgets)

        t = entity_tokens.shape[-1]
        flat_entities = ops.reshape(entity_tokens, (-1, t))
        flat_attributes = ops.reshape(inputs["attribute_tokens"], (-1, t))
        flat_relations = ops.reshape(inputs["relation_tokens"], (-1, t))
        distinct = distinct_phrase_budgets(c, batch) if training and batch is not None else {}
        encode = self._encode_phrases
        names = encode(ops.take(flat_entities, graph["entity_slot"], axis=0), "object", distinct.get("entities"))
        attributes = encode(
            ops.take(flat_attributes, graph["attribute_packed_slot"], axis=0), "attribute", distinct.get("attributes")
        )
        predicates = encode(
            ops.take(flat_relations, graph["relation_packed_slot"], axis=0), "predicate", distinct.get("relations")
        )

        entities = self.entity_composer(
            names, attributes, graph["attribute_index"], graph["attribute_slot"], training=training
        )
        unit_entities = _l2_normalize(entities)
        entity_slots = ops.reshape(unpack(unit_entities, graph["entity_inverse"]), (-1, e_max, c.embed_size))
        entity_mask = ops.reshape(graph["entity_inverse"] < ops.shape(entities)[0], (-1, e_max))

        def bind(order=None):
            """The binding part, the entities taken in `order` if given."""
            arranged = unit_entities if order is None else ops.take(unit_entities, order, axis=0)
            return self.spatial_binding.caption_part(
                ops.stop_gradient(arranged), ops.stop_gradient(predicates), graph, ops.shape(entity_tokens)[0], e_max
            )

        if self.spatial_binding is not None:  # entities score the main dimensions only
            extra = self.spatial_binding.axes * c.embed_size
            entity_slots = ops.pad(entity_slots, [(0, 0), (0, 0), (0, extra)])
        caption = _l2_normalize(self.relation_composer(entities, predicates, graph, training=training))
        outputs = {"caption": caption, "entities": entity_slots, "entity_mask": entity_mask}
        if self.spatial_binding is not None:
            outputs["caption"] = ops.concatenate([caption, bind()], axis=-1)
        if training and SWAP_RELATION in inputs:
            # The two ends of one relation trade places (what a caption
            # says with those noun phrases exchanged), on permuted entity
            # embeddings. With spatial binding only its part changes, so
            # the swap term trains the binding alone (through the
            # composer it slows retrieval: dev RSUM 64 against 237 after
            # 2 epochs); else the relation composer runs again.
            order = swapped_entity_order(inputs, graph, e_max)
            if self.spatial_binding is not None:
                outputs["swap_caption"] = ops.concatenate([caption, bind(order)], axis=-1)
            else:
                outputs["swap_caption"] = _l2_normalize(
                    self.relation_composer(ops.take(entities, order, axis=0), predicates, graph, training=training)
                )
            outputs["swap_mask"] = inputs[SWAP_RELATION] >= 0
        return outputs, {"graph": graph, "entities": unit_entities, "predicates": predicates}

    def _encode_phrases(self, tokens, kind: str, distinct_budget: int | None):
        """(P, T) phrase tokens -> (P, W); with a budget, each distinct phrase
        is encoded once and gathered into its rows."""
        if distinct_budget is None:
            return self.phrase_encoder(tokens, kind=kind)
        indices, inverse = pack_distinct(tokens, distinct_budget)
        return unpack(self.phrase_encoder(ops.take(tokens, indices, axis=0), kind=kind), inverse)

    def _encode_bags_of_words(self, inputs):
        """The bag-of-words ablation (`text_encoder: bow`): the caption is the
        projected mean of the embeddings of all its words (names, attributes,
        predicates), an entity the projected mean of its name and attribute
        words; no graph, no word order, no binding."""
        entity_tokens = inputs["entity_tokens"]  # (B, E, T)
        batch, e_max = ops.shape(entity_tokens)[0], entity_tokens.shape[1]
        entity_words = ops.concatenate(
            [entity_tokens, ops.reshape(inputs["attribute_tokens"], (batch, e_max, -1))], axis=-1
        )
        caption_words = ops.concatenate(
            [ops.reshape(entity_words, (batch, -1)), ops.reshape(inputs["relation_tokens"], (batch, -1))],
            axis=-1,
        )
        entity_mask = ops.any(entity_tokens != 0, axis=-1)
        entities = self.bow_projection(self._mean_word_embedding(entity_words))
        caption = self.bow_projection(self._mean_word_embedding(caption_words))
        return {
            "caption": _l2_normalize(caption),
            "entities": _l2_normalize(entities) * ops.cast(entity_mask, "float32")[..., None],
            "entity_mask": entity_mask,
        }

    def _mean_word_embedding(self, tokens):
        """(..., T) token ids -> (..., W) mean embedding of the non-padding tokens."""
        mask = ops.cast(tokens != 0, "float32")[..., None]
        total = ops.sum(self.phrase_encoder.word_embeddings(tokens) * mask, axis=-2)
        return total / ops.maximum(ops.sum(mask, axis=-2), 1.0)

    def call(self, inputs, training=None):
        outputs, text = self._caption_tower(inputs, training)
        image, rows = self._image_tower(inputs, training)
        owner = inputs[CAPTION_IMAGE] if CAPTION_IMAGE in inputs else ops.arange(ops.shape(image)[0])
        loss = self.loss_config
        # The region terms compare this replica's captions with this
        # replica's images (rows are not gathered across replicas).
        if training and loss.region_entity_weight:
            outputs["region_entity_cost"] = losses.region_entity_cost(
                rows, inputs["region_counts"], outputs["entities"][..., : self.model_config.embed_size],
                outputs["entity_mask"], owner, loss.region_entity_temperature,
            )
        if training and loss.relation_readout_weight and self.spatial_binding is not None:
            outputs.update(self._relation_readout(text, rows, inputs, owner))
        outputs["image"] = ops.take(image, owner, axis=0) if CAPTION_IMAGE in inputs else image
        return outputs

    def _relation_readout(self, text, rows, inputs, owner):
        """`relation_readout_cost` and `relation_readout_real` (Pr,) of the
        packed relations (see `losses.relation_readout_cost`); like the
        binding, it reads rows, entities and predicates without training them."""
        binding, graph, entities = self.spatial_binding, text["graph"], ops.stop_gradient(text["entities"])
        subject, obj, real, signs = binding.relations(ops.stop_gradient(text["predicates"]), graph, ops.shape(entities)[0])
        caption = ops.take(graph["entity_slot"], subject, axis=0) // self.model_config.max_entities
        rows, counts = ops.stop_gradient(rows), inputs["region_counts"]
        cost = losses.relation_readout_cost(
            rows, counts, binding.places(inputs["regions"], counts), ops.take(entities, subject, axis=0),
            ops.take(entities, obj, axis=0), ops.take(owner, caption, axis=0), signs,
            self.loss_config.relation_readout_temperature,
        )
        return {"relation_readout_cost": cost, "relation_readout_real": real}

    # ------------------------------------------------------------- objective
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Total three-term loss of the global batch; updates one metric per term.

        Under tf.distribute every replica gathers all replicas' embeddings
        and targets and returns its share of the global loss (see
        `cora_keras.distribution`); elsewhere the batch is already global.
        """
        grouped = x is not None and CAPTION_IMAGE in x  # rows share image embeddings
        y_pred, y = distribution.gather_replicas((y_pred, y))
        bound = self.spatial_binding is not None
        terms = losses.cora_objective(
            y_pred, y, self.loss_config, self.hardest_negatives, pool_same_image=grouped,
            main_width=self.model_config.embed_size if bound else None,
        )
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return distribution.replica_share(terms["loss"])

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        config = super().get_config()
        config.update(
            model_config=vars(self.model_config).copy(),
            loss_config=vars(self.loss_config).copy(),
        )
        return config


def _as_config(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    return cls(**value)


def _l2_normalize(x):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def text_graph(inputs, config: ModelConfig, budgets: dict | None) -> dict:
    """Packing and graph index tensors of a caption batch.

    Real entities, attributes and relations are packed into the per-batch
    budgets (`inputs.phrase_budgets`; all slots when the batch size is not
    static). Returns the indices the composers use; see
    `RelationComposer.call` and `EntityComposer.call`.
    """
    e_max, a_max, r_cap = config.max_entities, config.max_attributes, config.max_relations
    entity_real = ops.any(inputs["entity_tokens"] != 0, axis=-1)  # (B, E)
    attribute_real = ops.any(inputs["attribute_tokens"] != 0, axis=-1)  # (B, E, A)
    relation_real = ops.any(inputs["relation_tokens"] != 0, axis=-1)  # (B, K)
    subject = ops.cast(inputs["relation_subject"], "int32")
    obj = ops.cast(inputs["relation_object"], "int32")
    batch = ops.shape(entity_real)[0]
    k_max = relation_real.shape[1]

    def budget(name):
        return None if budgets is None else budgets[name]

    entity_slot, _, entity_inverse = pack_slots(ops.reshape(entity_real, (-1,)), budget("entities"))
    num_entities = ops.shape(entity_slot)[0]
    attribute_real = ops.logical_and(attribute_real, entity_real[:, :, None])
    attr_slot, _, attr_inverse = pack_slots(ops.reshape(attribute_real, (-1,)), budget("attributes"))
    num_attributes = ops.shape(attr_slot)[0]
    # attribute_index (Pe, A): packed attribute of each attribute slot of each packed entity.
    slots = entity_slot[:, None] * a_max + ops.arange(a_max, dtype="int32")[None, :]
    attribute_index = ops.take(attr_inverse, slots, axis=0)
    # attribute_slot (Pa,): packed entity * A + position, for each packed attribute.
    owner = ops.take(entity_inverse, attr_slot // a_max, axis=0)
    attribute_slot = ops.minimum(owner, num_entities - 1) * a_max + attr_slot % a_max

    relation_real = ops.logical_and(
        relation_real,
        ops.logical_and(
            ops.take_along_axis(entity_real, subject, axis=1),
            ops.take_along_axis(entity_real, obj, axis=1),
        ),
    )
    rel_slot, rel_valid, _ = pack_slots(ops.reshape(relation_real, (-1,)), budget("relations"))
    caption_of = ops.arange(batch, dtype="int32")[:, None] * e_max
    subject_packed = ops.take(entity_inverse, ops.reshape(caption_of + subject, (-1,)), axis=0)
    object_packed = ops.take(entity_inverse, ops.reshape(caption_of + obj, (-1,)), axis=0)
    # Per-entity caps: at most R active (as subject) and R passive messages, in parse order.
    earlier = ops.cast(ops.arange(k_max)[None, :] < ops.arange(k_max)[:, None], "bool")  # [k, j]: j < k
    real_pair = ops.logical_and(relation_real[:, :, None], relation_real[:, None, :])

    def within_cap(ends):
        same = ops.logical_and(ends[:, :, None] == ends[:, None, :], real_pair)
        rank = ops.sum(ops.cast(ops.logical_and(same, earlier[None]), "int32"), axis=-1)
        return ops.reshape(ops.logical_and(relation_real, rank < r_cap), (-1,))

    def packed_weight(flag):
        return ops.cast(ops.logical_and(ops.take(flag, rel_slot, axis=0), rel_valid), "float32")

    one_s = ops.one_hot(subject, e_max) * ops.cast(relation_real, "float32")[:, :, None]
    one_o = ops.one_hot(obj, e_max) * ops.cast(relation_real, "float32")[:, :, None]
    edges = ops.einsum("bke,bkf->bef", one_s, one_o)
    kept = ops.cast(ops.reshape(entity_inverse < num_entities, (-1, e_max)), "float32")
    adjacency = ops.minimum(edges + ops.transpose(edges, (0, 2, 1)) + kept[:, :, None] * ops.eye(e_max)[None], 1.0)
    adjacency = adjacency * kept[:, :, None] * kept[:, None, :]
    return {
        "entity_slot": entity_slot,
        "entity_inverse": entity_inverse,
        "entity_counts": ops.cast(ops.sum(kept, axis=1), "int32"),
        "attribute_packed_slot": attr_slot,
        "attribute_index": attribute_index,
        "attribute_slot": attribute_slot,
        "relation_packed_slot": rel_slot,
        "relation_subject": ops.where(rel_valid, ops.take(subject_packed, rel_slot, axis=0), num_entities),
        "relation_object": ops.where(rel_valid, ops.take(object_packed, rel_slot, axis=0), num_entities),
        "active_weight": packed_weight(within_cap(subject)),
        "passive_weight": packed_weight(within_cap(obj)),
        "adjacency": adjacency,
    }


def swapped_entity_order(inputs, graph: dict, max_entities: int):
    """(Pe,) packed entity indices that exchange, in each caption, the
    subject and object of relation slot `swap_relation` (none where it is
    -1): taking the packed entities in this order gives the caption with
    those two noun phrases trading places, relations and positions kept."""
    slot = ops.cast(inputs[SWAP_RELATION], "int32")
    has_swap = slot >= 0
    chosen = ops.maximum(slot, 0)[:, None]
    subject = ops.take_along_axis(ops.cast(inputs["relation_subject"], "int32"), chosen, axis=1)[:, 0]
    obj = ops.take_along_axis(ops.cast(inputs["relation_object"], "int32"), chosen, axis=1)[:, 0]
    subject, obj = ops.where(has_swap, subject, -1), ops.where(has_swap, obj, -1)
    caption, entity = graph["entity_slot"] // max_entities, graph["entity_slot"] % max_entities
    s, o = ops.take(subject, caption, axis=0), ops.take(obj, caption, axis=0)
    partner = ops.where(entity == s, o, ops.where(entity == o, s, entity))
    order = ops.take(graph["entity_inverse"], caption * max_entities + partner, axis=0)
    packed = ops.arange(ops.shape(order)[0], dtype=order.dtype)
    return ops.where(order < ops.shape(order)[0], order, packed)  # padding rows stay


def example_inputs(config: ModelConfig, batch_size: int = 1) -> dict[str, np.ndarray]:
    """A tiny valid batch (one entity, one attribute, one relation)."""
    arrays = {}
    for name, (shape, dtype) in {**image_specs(config), **caption_specs(config)}.items():
        arrays[name] = np.zeros((batch_size, *shape), dtype=dtype)
    arrays["region_counts"][:] = 1
    arrays["entity_tokens"][:, :2, :3] = [2, 5, 3]
    arrays["attribute_tokens"][:, 0, 0, :3] = [2, 6, 3]
    arrays["relation_tokens"][:, 0, :3] = [2, 7, 3]
    arrays["relation_object"][:, 0] = 1
    return arrays

