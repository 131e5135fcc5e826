"""GraphEncoder: exact evaluation arrays, sampling invariants and rates, phrase ids."""

from __future__ import annotations

import binascii
import dataclasses
import itertools

import numpy as np
import pytest

from cora_keras.config import AugmentConfig, ModelConfig
from cora_keras.inputs import caption_specs, target_specs
from cora_keras.scene_graph.encode import ENCODED_KEYS, GraphEncoder, phrase_id
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph, SceneGraphError
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary

# ids: man 5, red 6, shirt 7, dog 8, dogs 9, very 10, tall 11, on 12, and 13,
# with 14, holding 15, cat 16, cats 17, big 18, small 19, ball 20
WORDS = list(SPECIAL_TOKENS) + (
    "man red shirt dog dogs very tall on and with holding cat cats big small ball".split()
)
CLS, SEP, MASK, UNK = 2, 3, 4, 1
NO_SAMPLING = AugmentConfig(**{f.name: 0.0 for f in dataclasses.fields(AugmentConfig)})


def vocabulary() -> Vocabulary:
    return Vocabulary(
        WORDS, {"dogs": "dog", "cats": "cat"}, {"dog": "dogs", "cat": "cats"}, ["very"]
    )


def encoder(augment: AugmentConfig = AugmentConfig(), **shapes) -> GraphEncoder:
    model = ModelConfig(**{"max_entities": 3, "max_attributes": 2,
                           "max_caption_relations": 3, "max_phrase_tokens": 5, **shapes})
    return GraphEncoder(vocabulary(), model, augment)


def graph(entities, relations=()) -> SceneGraph:
    return SceneGraph(
        "caption",
        [Entity(name, list(attributes)) for name, attributes in entities],
        [Relation(s, p, o) for s, p, o in relations],
    )


HAND_BUILT = graph(
    [("Man", ["very tall", "red", "small"]),
     ("red shirt", []),
     ("huge red dogs on grass", []),
     ("cat", ["red"])],
    [(0, "holding", 2), (2, "", 0), (0, "on", 3), (1, "on", 0), (1, "with", 2)],
)


def words(row: np.ndarray) -> list[int]:
    """Word ids between [CLS] and [SEP]; checks the phrase layout."""
    row = list(row)
    assert row[0] == CLS
    end = row.index(SEP)
    assert all(t == 0 for t in row[end + 1:])
    return row[1:end]


def test_phrase_id_is_a_normalised_31_bit_crc():
    assert phrase_id("red car") == binascii.crc32(b"red car") & 0x7FFFFFFF
    assert phrase_id("  Red \t CAR ") == phrase_id("red car")
    assert phrase_id("red car") != phrase_id("car red")
    assert all(0 < phrase_id(t) < 2**31 for t in ["", "a", "very long phrase " * 10])


def test_evaluation_arrays_of_a_hand_built_graph():
    arrays = encoder().encode(HAND_BUILT)
    model = ModelConfig(max_entities=3, max_attributes=2, max_caption_relations=3,
                        max_phrase_tokens=5)
    specs = {**caption_specs(model), **target_specs(model)}
    assert set(arrays) == set(ENCODED_KEYS) == set(specs) - {"image_ids"}
    for key, value in arrays.items():
        assert (value.shape, value.dtype) == (specs[key][0], np.dtype(specs[key][1])), key
    np.testing.assert_array_equal(arrays["entity_tokens"], [
        [CLS, 5, SEP, 0, 0],
        [CLS, 6, 7, SEP, 0],
        [CLS, UNK, 6, 9, SEP],  # "huge red dogs on grass" cut to three words
    ])
    expected_attributes = np.zeros((3, 2, 5), np.int32)
    expected_attributes[0] = [[CLS, 10, 11, SEP, 0], [CLS, 6, SEP, 0, 0]]
    np.testing.assert_array_equal(arrays["attribute_tokens"], expected_attributes)
    # (0, on, 3) touches an entity past E; (1, with, 2) is past K.
    np.testing.assert_array_equal(arrays["relation_tokens"], [
        [CLS, 15, SEP, 0, 0],
        [CLS, 13, SEP, 0, 0],  # empty predicate -> "and"
        [CLS, 12, SEP, 0, 0],
    ])
    np.testing.assert_array_equal(arrays["relation_subject"], [0, 2, 1])
    np.testing.assert_array_equal(arrays["relation_object"], [2, 0, 0])
    names = [phrase_id(t) for t in ["Man", "red shirt", "huge red dogs on grass"]]
    attributes = [[phrase_id("very tall"), phrase_id("red")], [0, 0], [0, 0]]
    for prefix in ("entity", "graph"):
        np.testing.assert_array_equal(arrays[f"{prefix}_name_ids"], names)
        np.testing.assert_array_equal(arrays[f"{prefix}_attribute_ids"], attributes)


def test_encode_batch_stacks_encode():
    enc = encoder()
    graphs = [HAND_BUILT, graph([("dog", ["red"])])]
    batch = enc.encode_batch(graphs)
    for i, g in enumerate(graphs):
        for key, value in enc.encode(g).items():
            np.testing.assert_array_equal(batch[key][i], value)
    assert enc.encode_batch([])["entity_tokens"].shape == (0, 3, 5)


def check_invariants(arrays: dict, g: SceneGraph, enc: GraphEncoder) -> None:
    """What must hold for any sampled encoding of `g`."""
    E, A, K = enc.max_entities, enc.max_attributes, enc.max_relations
    names = {phrase_id(e.name): e for e in g.entities}
    real_entities = arrays["entity_tokens"][:, 0] != 0
    n = int(real_entities.sum())
    assert 1 <= n <= min(E, len(g.entities))
    assert real_entities[:n].all()  # real slots first
    assert (arrays["entity_tokens"][n:] == 0).all()
    assert (arrays["entity_name_ids"][n:] == 0).all()
    for slot in range(n):
        fed = words(arrays["entity_tokens"][slot])
        assert fed and any(t != MASK for t in fed)
        entity = names[arrays["entity_name_ids"][slot]]
        real_attributes = arrays["attribute_tokens"][slot, :, 0] != 0
        m = int(real_attributes.sum())
        assert m <= min(A, len(entity.attributes)) and real_attributes[:m].all()
        assert (arrays["attribute_tokens"][slot, m:] == 0).all()
        ids = arrays["entity_attribute_ids"][slot]
        assert (ids[m:] == 0).all()
        assert set(ids[:m]) <= {phrase_id(a) for a in entity.attributes}
        for j in range(m):
            fed = words(arrays["attribute_tokens"][slot, j])
            assert fed and any(t != MASK for t in fed)
    assert (arrays["attribute_tokens"][n:] == 0).all()
    real_relations = arrays["relation_tokens"][:, 0] != 0
    r = int(real_relations.sum())
    assert r <= min(K, len(g.relations)) and real_relations[:r].all()
    assert (arrays["relation_tokens"][r:] == 0).all()
    for end in ("relation_subject", "relation_object"):
        assert (arrays[end][:r] < n).all() and (arrays[end][r:] == 0).all()
    for k in range(r):
        fed = words(arrays["relation_tokens"][k])
        assert fed and any(t != MASK for t in fed)
    unsampled = enc.encode(g)
    for key in ("graph_name_ids", "graph_attribute_ids"):
        np.testing.assert_array_equal(arrays[key], unsampled[key])


HEAVY = AugmentConfig(entity_drop=0.3, attribute_drop=0.3, adverb_drop=0.5, singularize=0.3,
                      pluralize=0.3, token_mask=0.3, token_delete=0.2, relation_drop=0.3)


@pytest.mark.parametrize("augment", [AugmentConfig(), HEAVY])
def test_sampling_invariants_over_many_seeds(augment):
    enc = encoder(augment)
    graphs = [
        HAND_BUILT,
        graph([("dog", ["very red", "very"]), ("man", ["tall", "big", "small", "red"])],
              [(0, "", 1), (1, "holding", 0), (0, "on", 0)]),
        graph([("cats", [])]),
    ]
    for seed in range(150):
        for g in graphs:
            check_invariants(enc.encode(g, np.random.default_rng(seed)), g, enc)


def test_sampling_is_deterministic_for_a_seed():
    enc = encoder(HEAVY)
    first = enc.encode_batch([HAND_BUILT] * 4, np.random.default_rng(7))
    again = enc.encode_batch([HAND_BUILT] * 4, np.random.default_rng(7))
    other = enc.encode_batch([HAND_BUILT] * 4, np.random.default_rng(8))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert any((first[key] != other[key]).any() for key in first)


def sample(enc: GraphEncoder, g: SceneGraph, count: int = 4000) -> dict:
    return enc.encode_batch([g] * count, np.random.default_rng(0))


def test_entity_drop_rate_and_keep_at_least_one():
    g = graph([(name, []) for name in ["man", "shirt", "dog", "cat", "ball"]],
              [(0, "on", 4), (3, "with", 1)])
    enc = encoder(dataclasses.replace(NO_SAMPLING, entity_drop=0.2), max_entities=5)
    batch = sample(enc, g)
    kept = (batch["entity_tokens"][:, :, 0] != 0).sum(axis=1)
    assert kept.mean() == pytest.approx(5 * 0.8, abs=0.06)
    # a relation survives exactly when both of its entities do, re-indexed.
    for row in range(200):
        names = list(batch["entity_name_ids"][row, : kept[row]])
        pairs = {(names[s], names[o]) for s, o in zip(batch["relation_subject"][row],
                                                      batch["relation_object"][row])}
        expected = sum(phrase_id(a) in names and phrase_id(b) in names
                       for a, b in [("man", "ball"), ("cat", "shirt")])
        assert (batch["relation_tokens"][row, :, 0] != 0).sum() == expected
        if phrase_id("man") in names and phrase_id("ball") in names:
            assert (phrase_id("man"), phrase_id("ball")) in pairs
        assert names == sorted(names, key=[phrase_id(e.name) for e in g.entities].index)
    batch = sample(encoder(dataclasses.replace(NO_SAMPLING, entity_drop=1.0), max_entities=5), g)
    assert ((batch["entity_tokens"][:, :, 0] != 0).sum(axis=1) == 1).all()
    survivors = np.bincount(batch["entity_tokens"][:, 0, 1], minlength=21)
    assert set(np.flatnonzero(survivors)) == {5, 7, 8, 16, 20}  # each can be the one


def test_entities_past_E_are_cut_in_parse_order():
    g = graph([(name, []) for name in ["man", "shirt", "dog", "cat", "ball"]])
    batch = sample(encoder(NO_SAMPLING, max_entities=3), g, 10)
    assert (batch["entity_tokens"][:, :, 1] == [5, 7, 8]).all()


def test_attribute_drop_rate_and_random_subset():
    g = graph([("man", ["red", "tall", "big"])])
    batch = sample(encoder(dataclasses.replace(NO_SAMPLING, attribute_drop=0.25),
                           max_attributes=4), g)
    kept = (batch["attribute_tokens"][:, 0, :, 0] != 0).sum(axis=1)
    assert kept.mean() == pytest.approx(3 * 0.75, abs=0.05)
    g = graph([("man", ["red", "tall", "big", "small", "dog", "cat"])])
    batch = sample(encoder(NO_SAMPLING, max_attributes=4), g)
    fed = batch["attribute_tokens"][:, 0, :, 1]  # the single word of each attribute
    order = [6, 11, 18, 19, 8, 16]
    assert all(list(row) == sorted(row, key=order.index) for row in fed[:300])
    shares = [(fed == word).any(axis=1).mean() for word in order]
    np.testing.assert_allclose(shares, 4 / 6, atol=0.04)


def test_adverb_drop_rate_and_all_adverb_attributes_kept():
    g = graph([("man", ["very tall", "very"])])
    batch = sample(encoder(dataclasses.replace(NO_SAMPLING, adverb_drop=0.3)), g)
    first = batch["attribute_tokens"][:, 0, 0]
    dropped = (first[:, 1] == 11).mean()  # "tall" right after [CLS]
    assert dropped == pytest.approx(0.3, abs=0.03)
    assert ((first[:, 1] == 10) == (first[:, 2] == 11)).all()
    assert (batch["attribute_tokens"][:, 0, 1, :3] == [CLS, 10, SEP]).all()
    assert (batch["entity_attribute_ids"][:, 0, 0] == phrase_id("very tall")).all()


def test_singularize_then_pluralize_rates():
    enc = encoder(dataclasses.replace(NO_SAMPLING, singularize=0.2, pluralize=0.3))
    tokens = sample(enc, graph([("big dogs", []), ("cat", [])]))["entity_tokens"]
    last_words = tokens[:, 0, 2]
    assert (last_words == 8).mean() == pytest.approx(0.2, abs=0.03)  # dogs -> dog
    assert set(np.unique(last_words)) == {8, 9}
    assert (tokens[:, 0, 1] == 18).all()
    assert (tokens[:, 1, 1] == 17).mean() == pytest.approx(0.8 * 0.3, abs=0.03)  # cat -> cats
    batch = sample(enc, graph([("big dogs", [])]), 10)
    assert (batch["entity_name_ids"][:, 0] == phrase_id("big dogs")).all()


def test_token_mask_and_delete_rates():
    enc = encoder(dataclasses.replace(NO_SAMPLING, token_mask=0.1, token_delete=0.05))
    tokens = sample(enc, graph([("man red shirt", ["big small ball"])]))["entity_tokens"]
    lengths = (tokens[:, 0] != 0).sum(axis=1) - 2
    assert 1 - lengths.mean() / 3 == pytest.approx(0.05, abs=0.01)
    assert (tokens[:, 0] == MASK).sum() / (3 * len(tokens)) == pytest.approx(0.1, abs=0.015)
    one_word = sample(enc, graph([("dog", ["red"])], [(0, "on", 0)]))
    assert (one_word["entity_tokens"][:, 0, :3] == [CLS, 8, SEP]).all()
    assert (one_word["attribute_tokens"][:, 0, 0, :3] == [CLS, 6, SEP]).all()
    assert (one_word["relation_tokens"][:, 0, :3] == [CLS, 12, SEP]).all()


def test_relation_drop_rate_shuffle_and_empty_predicate():
    g = graph([("man", []), ("dog", [])], [(0, "on", 1), (1, "holding", 0), (0, "with", 0)])
    batch = sample(encoder(dataclasses.replace(NO_SAMPLING, relation_drop=0.2)), g)
    kept = (batch["relation_tokens"][:, :, 0] != 0).sum(axis=1)
    assert kept.mean() == pytest.approx(3 * 0.8, abs=0.05)
    batch = sample(encoder(NO_SAMPLING), g, 600)
    orders = {tuple(row) for row in batch["relation_tokens"][:, :, 1]}
    assert orders == set(itertools.permutations([12, 15, 14]))
    ends = {12: (0, 1), 15: (1, 0), 14: (0, 0)}
    for row in range(50):
        for k, word in enumerate(batch["relation_tokens"][row, :, 1]):
            assert (batch["relation_subject"][row, k], batch["relation_object"][row, k]) \
                == ends[word]
    empty = sample(encoder(NO_SAMPLING), graph([("man", [])], [(0, " - ", 0)]))
    fillers = empty["relation_tokens"][:, 0, 1]
    assert set(np.unique(fillers)) == {13, 14}
    assert (fillers == 13).mean() == pytest.approx(0.5, abs=0.03)


def test_bad_input_errors():
    with pytest.raises(SceneGraphError, match="graph 1 .*'entities' is empty"):
        encoder().encode_batch([HAND_BUILT, SceneGraph("nothing", [], [])])
    with pytest.raises(ValueError, match="augment.token_mask = 1.5"):
        encoder(AugmentConfig(token_mask=1.5))
    with pytest.raises(ValueError, match="token_mask \\+ augment.token_delete"):
        encoder(AugmentConfig(token_mask=0.6, token_delete=0.6))
    with pytest.raises(ValueError, match="model.max_phrase_tokens = 2"):
        encoder(max_phrase_tokens=2)
