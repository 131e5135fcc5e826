"""Relation-swap slots: which relation of each encoded caption is reversed."""

from __future__ import annotations

import dataclasses

import numpy as np

from cora_keras.config import AugmentConfig, LossConfig, ModelConfig
from cora_keras.data.relation_swaps import swap_relation_slots, symmetric_predicate_rows
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary

WORDS = list(SPECIAL_TOKENS) + "man dog red big holding next to with near left of on".split()
NO_SAMPLING = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)})


def _encoder() -> GraphEncoder:
    model = ModelConfig(max_entities=3, max_attributes=2, max_caption_relations=3, max_phrase_tokens=5)
    return GraphEncoder(Vocabulary(WORDS, {}, {}, []), model, NO_SAMPLING)


def _graph(entities, relations) -> SceneGraph:
    return SceneGraph(
        "caption",
        [Entity(name, list(attributes)) for name, attributes in entities],
        [Relation(s, p, o) for s, p, o in relations],
    )


GRAPHS = [
    # A symmetric predicate first: the asymmetric relation after it is chosen.
    _graph([("man", []), ("dog", [])], [(0, "next to", 1), (1, "left of", 0)]),
    # Both ends described alike (attributes in another order): no swap.
    _graph([("dog", ["red", "big"]), ("dog", ["big", "red"])], [(0, "holding", 1)]),
    # Same name, different attributes: a real swap.
    _graph([("dog", ["red"]), ("dog", ["big"])], [(0, "on", 1)]),
    # No relation, or only symmetric ones.
    _graph([("man", [])], []),
    _graph([("man", []), ("dog", [])], [(0, "with", 1), (1, "near", 0)]),
]


def test_swap_slots_skip_symmetric_predicates_and_alike_ends() -> None:
    encoder = _encoder()
    rows = symmetric_predicate_rows(encoder, LossConfig().symmetric_predicates)
    captions = encoder.encode_batch(GRAPHS)
    np.testing.assert_array_equal(swap_relation_slots(captions, rows), [1, -1, 0, -1, -1])


def test_symmetric_rows_are_the_encoded_predicate_rows() -> None:
    encoder = _encoder()
    captions = encoder.encode_batch([GRAPHS[0]])
    rows = symmetric_predicate_rows(encoder, ["next to"])
    assert rows == {captions["relation_tokens"][0, 0].tobytes()}
    # With no symmetric predicates the first relation is taken.
    assert swap_relation_slots(captions, frozenset()).tolist() == [0]
