"""EntityComposer (MODEL.md 2.3): the packed star path equals dense star-graph attention."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.entity_composer import EntityComposer
from tests.helpers import (
    assert_config_round_trip,
    dense_numpy,
    graph_attention_numpy,
    numpy64,
    randomize_weights,
)
from tests.reference_cora import star_adjacency

WORD, HIDDEN, HEADS, A = 6, 16, 4, 3

# Three packed entities: entity 0 has attributes at positions 0 and 1, entity 1
# none, entity 2 one at position 0. Packed attribute rows: e0a0, e0a1, e2a0.
ATTRIBUTE_INDEX = np.array([[0, 1, 3], [3, 3, 3], [2, 3, 3]], np.int32)  # 3 = empty
ATTRIBUTE_SLOT = np.array([0 * A + 0, 0 * A + 1, 2 * A + 0], np.int32)


def _phrases(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((3, WORD)).astype(np.float32),
        rng.standard_normal((3, WORD)).astype(np.float32),
    )


def _composer(num_layers: int, embed_size: int) -> EntityComposer:
    composer = EntityComposer(HIDDEN, embed_size, num_layers, HEADS)
    names, attributes = _phrases(0)
    composer(names, attributes, ATTRIBUTE_INDEX, ATTRIBUTE_SLOT)
    randomize_weights(composer, seed=num_layers)
    return composer


def dense_star_composition(composer: EntityComposer, names, attributes) -> np.ndarray:
    """Every entity as a dense (1 + A)-node star graph, all nodes updated per layer."""
    x0 = dense_numpy(composer.word_fc, names.astype(np.float64))
    xa = dense_numpy(composer.word_fc, attributes.astype(np.float64))
    nodes = np.random.default_rng(9).standard_normal((3, 1 + A, HIDDEN))  # empty slots: garbage
    nodes[:, 0] = x0
    present = ATTRIBUTE_INDEX < len(attributes)
    for entity, position in zip(*np.nonzero(present)):
        nodes[entity, 1 + position] = xa[ATTRIBUTE_INDEX[entity, position]]
    adjacency = star_adjacency(present.astype(np.float64))
    for layer in composer.graph_layers:
        nodes = graph_attention_numpy(layer, nodes, adjacency)
    if composer.output_projection is None:
        return nodes[:, 0]
    return dense_numpy(composer.output_projection, nodes[:, 0])


@pytest.mark.parametrize("num_layers, embed_size", [(1, HIDDEN), (2, HIDDEN), (2, 8)])
def test_packed_star_equals_dense_graph_attention(num_layers: int, embed_size: int) -> None:
    composer = _composer(num_layers, embed_size)
    names, attributes = _phrases(1)
    packed = numpy64(composer(names, attributes, ATTRIBUTE_INDEX, ATTRIBUTE_SLOT))
    assert packed.shape == (3, embed_size)
    np.testing.assert_allclose(packed, dense_star_composition(composer, names, attributes), atol=1e-5)


def test_an_entity_depends_only_on_its_own_attributes() -> None:
    composer = _composer(2, HIDDEN)
    names, attributes = _phrases(2)
    changed = attributes.copy()
    changed[2] += 5.0  # entity 2's attribute
    before = numpy64(composer(names, attributes, ATTRIBUTE_INDEX, ATTRIBUTE_SLOT))
    after = numpy64(composer(names, changed, ATTRIBUTE_INDEX, ATTRIBUTE_SLOT))
    np.testing.assert_allclose(after[:2], before[:2], atol=1e-6)
    assert not np.allclose(after[2], before[2])


def test_config_round_trip() -> None:
    composer = _composer(2, 8)
    names, attributes = _phrases(3)
    assert_config_round_trip(
        composer, lambda layer: layer(names, attributes, ATTRIBUTE_INDEX, ATTRIBUTE_SLOT)
    )
