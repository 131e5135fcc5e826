"""Spatial binding: extra embedding dimensions whose dot product says
whether a caption's relations hold in an image (which entity where)."""

from __future__ import annotations

import keras
from keras import ops

from cora_keras.layers.position_encoding import length_mask


@keras.saving.register_keras_serializable(package="cora_keras")
class SpatialBinding(keras.layers.Layer):
    """K learned layout axes binding regions to places and relations to signs.

    Image: each region r reads K coordinates p_r = tanh(MLP(x_r)) from its
    input features x_r (the encoded rows, trained for retrieval, keep too
    little of where a region is), centred over the image's valid rows;
    slice k of the image part is sum_r p_r[k] h_r over the valid rows, h_r
    the unit encoded row, (B, K*D). Caption: each relation (s, pred, o)
    gives q_k(pred) (e_s - e_o) in slice k, summed over the caption's
    relations, with e the unit entity embeddings. Their dot product is
    sum_k q_k(pred) sum_r p_r[k] h_r . (e_s - e_o): where region rows
    match their own entity, the predicate's signed difference of the two
    entities' coordinates, so exchanging subject and object negates it.
    The predicate read-out starts at zero: the parts add nothing to a
    score until training gives them a direction.

    Args:
        axes: K.
        hidden: width of the coordinate MLP.
    """

    def __init__(self, axes: int = 4, hidden: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.axes = axes
        self.hidden = hidden
        # Seeded initialisers draw nothing from Keras's global seed stream,
        # so adding the binding leaves every other layer's start as it was.
        self.coordinate_hidden = keras.layers.Dense(
            hidden, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1),
            name="coordinate_hidden",
        )
        self.coordinates = keras.layers.Dense(
            axes, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed=2), name="coordinates"
        )
        self.predicate_signs = keras.layers.Dense(axes, kernel_initializer="zeros", name="predicate_signs")
        # No weights of its own: the three Dense layers build on first use
        # (CoraModel.build runs an example through both parts).
        self.built = True

    def places(self, regions, counts):
        """(B, N, F) region features, (B,) counts -> (B, N, K) coordinates,
        centred on the image's valid rows (what every row shares, the rows'
        common direction, then cancels from every slice; padding rows zero)."""
        valid = ops.cast(length_mask(counts, regions.shape[1]), "float32")[..., None]
        places = self.coordinates(self.coordinate_hidden(regions)) * valid
        mean = ops.sum(places, axis=1, keepdims=True) / ops.maximum(ops.sum(valid, axis=1, keepdims=True), 1.0)
        return (places - mean) * valid

    def image_part(self, rows, regions, counts):
        """(B, N, D) unit region rows (padding zero), their (B, N, F) region
        features, (B,) counts -> (B, K*D)."""
        d = rows.shape[2]
        return ops.reshape(ops.einsum("bnk,bnd->bkd", self.places(regions, counts), rows), (-1, self.axes * d))

    def relations(self, predicates, graph, num_entities):
        """Per packed relation: clamped subject and object entity indices,
        1.0 where real, and the (Pr, K) predicate read-out (zero where not)."""
        subject, obj = graph["relation_subject"], graph["relation_object"]
        real = ops.cast(subject < num_entities, "float32")
        signs = self.predicate_signs(predicates) * real[:, None]
        return ops.minimum(subject, num_entities - 1), ops.minimum(obj, num_entities - 1), real, signs

    def caption_part(self, entities, predicates, graph, batch, max_entities: int):
        """(Pe, D) unit packed entities, (Pr, W) encoded predicates, the text
        graph of `model.text_graph`, B and E -> (B, K*D)."""
        d = entities.shape[-1]
        subject, obj, _, signs = self.relations(predicates, graph, ops.shape(entities)[0])
        difference = ops.take(entities, subject, axis=0) - ops.take(entities, obj, axis=0)
        terms = ops.reshape(signs[:, :, None] * difference[:, None, :], (-1, self.axes * d))
        caption = ops.take(graph["entity_slot"], subject, axis=0) // max_entities
        owner = ops.cast(caption[None, :] == ops.arange(batch, dtype=caption.dtype)[:, None], entities.dtype)
        return ops.matmul(owner, terms)

    def get_config(self):
        config = super().get_config()
        config.update(axes=self.axes, hidden=self.hidden)
        return config
