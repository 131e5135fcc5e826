"""The tensors CoraModel takes: names, shapes and dtypes per config.

Framework-free: the encoders in `scene_graph/encode.py` produce these
arrays, the model consumes them, the export signatures declare them.

Images (B images):
  regions        (B, N, F) float32  valid rows first, padding rows zero
  region_counts  (B,)      int32    number of valid rows, >= 1

Captions (B captions, one scene graph each; token id 0 is padding):
  entity_tokens      (B, E, T)    int32  object name: [CLS] w1 .. wk [SEP];
                                          real entities first (parse order)
  attribute_tokens   (B, E, A, T) int32  attributes of each entity, real first
  relation_tokens    (B, K, T)    int32  predicates, real relations first
  relation_subject   (B, K)       int32  entity index of the subject (0 if pad)
  relation_object    (B, K)       int32  entity index of the object (0 if pad)

Targets of the objective (the `y` of model.fit):
  image_ids              (B,)        int32  equal ids = the same image
  entity_name_ids        (B, E)      int32  id of each fed entity's name
  entity_attribute_ids   (B, E, A)   int32  ids of its (sampled) attributes
  graph_name_ids         (B, E)      int32  the caption's un-augmented graph
  graph_attribute_ids    (B, E, A)   int32  ... and its first A attributes
Ids are positive (0 = none) and equal exactly when the strings are equal.

Image-grouped batches (training input, `train.captions_per_image` = k > 1):
the image inputs hold B / k images and
  caption_image  (B,)  int32  the row of `regions` that caption b shows

With the relation-swap term on (`loss.relation_swap_weight` > 0), training
input also holds
  swap_relation  (B,)  int32  the relation slot of caption b whose subject
                              and object the model exchanges; -1 for none
"""

from __future__ import annotations

import math
from typing import Any

IMAGE_INPUTS = ("regions", "region_counts")
CAPTION_IMAGE = "caption_image"
SWAP_RELATION = "swap_relation"
CAPTION_INPUTS = (
    "entity_tokens",
    "attribute_tokens",
    "relation_tokens",
    "relation_subject",
    "relation_object",
)
TARGETS = (
    "image_ids",
    "entity_name_ids",
    "entity_attribute_ids",
    "graph_name_ids",
    "graph_attribute_ids",
)


def image_specs(model_config: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-example (shape, dtype) of the image inputs."""
    c = model_config
    return {
        "regions": ((c.num_regions, c.region_feature_size), "float32"),
        "region_counts": ((), "int32"),
    }


def caption_specs(model_config: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-example (shape, dtype) of the caption inputs."""
    c = model_config
    e, a, k, t = c.max_entities, c.max_attributes, c.max_caption_relations, c.max_phrase_tokens
    return {
        "entity_tokens": ((e, t), "int32"),
        "attribute_tokens": ((e, a, t), "int32"),
        "relation_tokens": ((k, t), "int32"),
        "relation_subject": ((k,), "int32"),
        "relation_object": ((k,), "int32"),
    }


def target_specs(model_config: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-example (shape, dtype) of the objective's targets."""
    c = model_config
    e, a = c.max_entities, c.max_attributes
    return {
        "image_ids": ((), "int32"),
        "entity_name_ids": ((e,), "int32"),
        "entity_attribute_ids": ((e, a), "int32"),
        "graph_name_ids": ((e,), "int32"),
        "graph_attribute_ids": ((e, a), "int32"),
    }


def phrase_budgets(model_config: Any, batch_size: int) -> dict[str, int]:
    """Static per-batch numbers of phrases the text tower encodes.

    The text tower encodes only real phrases, packed into these budgets
    (batch average per caption from the config, plus room for one full
    caption so a batch of one always fits). The input pipeline checks them;
    phrases past a budget would be dropped by the model.
    """
    c = model_config
    e, a, k = c.max_entities, c.max_attributes, c.max_caption_relations
    return {
        "entities": min(batch_size * e, math.ceil(c.entity_budget * batch_size) + e),
        "attributes": min(
            batch_size * e * a, math.ceil(c.attribute_budget * batch_size) + e * a
        ),
        "relations": min(batch_size * k, math.ceil(c.relation_budget * batch_size) + k),
    }


def distinct_phrase_budgets(model_config: Any, batch_size: int) -> dict[str, int | None]:
    """Static numbers of distinct phrases per kind the text tower encodes in
    training (`model.distinct_phrase_budget` of each `phrase_budgets`
    entry); None for a kind whose phrases are all encoded."""
    share = model_config.distinct_phrase_budget
    if share is not None and not 0.0 < share <= 1.0:
        raise ValueError(f"model.distinct_phrase_budget = {share!r} must be in (0, 1] or null")
    budgets = phrase_budgets(model_config, batch_size)
    if share is None:
        return dict.fromkeys(budgets)
    return {
        kind: math.ceil(share * budget) if math.ceil(share * budget) < budget else None
        for kind, budget in budgets.items()
    }


def region_budget(model_config: Any, batch_size: int) -> int | None:
    """Region rows per batch the image tower computes; None for all B x N."""
    share = model_config.region_budget
    if share >= 1.0:
        return None
    total = batch_size * model_config.num_regions
    return min(total, math.ceil(share * total))
