"""SpatialBinding: both parts against per-row and per-relation loops, the
sign flip of a swapped relation, the zero start and the config round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.layers.spatial_binding import SpatialBinding
from cora_keras.model import text_graph
from cora_keras.synthetic import synthetic_batch
from tests.helpers import (
    assert_config_round_trip,
    dense_numpy,
    numpy64,
    randomize_weights,
    real_relations,
    small_model_config,
)

CONFIG = small_model_config()
AXES, HIDDEN, WORD, BATCH = 3, 8, 5, 4


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    """A binding with random weights, a region batch and a packed caption batch."""
    rng = np.random.default_rng(0)
    d, n, e, k = CONFIG.embed_size, CONFIG.num_regions, CONFIG.max_entities, CONFIG.max_caption_relations
    counts = np.array([6, 2, 4, 1], np.int32)
    valid = (np.arange(n)[None, :] < counts[:, None])[..., None]
    rows = _unit(rng.standard_normal((BATCH, n, d))) * valid
    regions = rng.standard_normal((BATCH, n, CONFIG.region_feature_size)).astype(np.float32) * valid
    x, _ = synthetic_batch(CONFIG, BATCH, rng, regions=(2, 6), words=(1, 2))
    graph = text_graph(x, CONFIG, None)
    entity_rows = _unit(rng.standard_normal((BATCH * e, d)))  # dense (b * E + e) slots
    predicate_rows = rng.standard_normal((BATCH * k, WORD)).astype(np.float32)
    entities = entity_rows[numpy64(graph["entity_slot"]).astype(int)]
    predicates = predicate_rows[numpy64(graph["relation_packed_slot"]).astype(int)]
    binding = SpatialBinding(AXES, HIDDEN)
    zero_start = numpy64(binding.caption_part(entities, predicates, graph, BATCH, e))
    binding.image_part(rows, regions, counts)
    randomize_weights(binding, seed=1)
    return dict(binding=binding, rows=rows, regions=regions, counts=counts, x=x, graph=graph, entities=entities,
                predicates=predicates, entity_rows=entity_rows, predicate_rows=predicate_rows,
                zero_start=zero_start)


def test_image_part_by_loops(case) -> None:
    # Coordinates of each region's features, centred over the image's valid
    # rows, then weighting the encoded rows.
    binding, rows, regions, counts = case["binding"], case["rows"], case["regions"], case["counts"]
    got = numpy64(binding.image_part(rows, regions, counts)).reshape(BATCH, AXES, -1)
    for b in range(BATCH):
        places = []
        for r in range(counts[b]):
            hidden = dense_numpy(binding.coordinate_hidden, regions[b, r].astype(np.float64))
            places.append(np.tanh(hidden @ numpy64(binding.coordinates.kernel) + numpy64(binding.coordinates.bias)))
        centre = sum(places) / counts[b]
        expected = np.zeros((AXES, rows.shape[-1]))
        for r, place in enumerate(places):
            expected += (place - centre)[:, None] * rows[b, r][None, :]
        np.testing.assert_allclose(got[b], expected, atol=1e-5)


def test_caption_part_by_loops_and_starts_at_zero(case) -> None:
    binding, x, e = case["binding"], case["x"], CONFIG.max_entities
    got = numpy64(binding.caption_part(case["entities"], case["predicates"], case["graph"], BATCH, e))
    expected = np.zeros((BATCH, AXES, CONFIG.embed_size))
    relations = real_relations(x)
    for b, k, s, o in relations:
        signs = dense_numpy(binding.predicate_signs, case["predicate_rows"][b * CONFIG.max_caption_relations + k])
        difference = case["entity_rows"][b * e + s] - case["entity_rows"][b * e + o]
        expected[b] += signs[:, None] * difference[None, :]
    assert len(relations) >= 3
    np.testing.assert_allclose(got.reshape(BATCH, AXES, -1), expected, atol=1e-5)
    assert np.abs(case["zero_start"]).max() == 0.0  # the predicate read-out starts at zero


def test_exchanging_every_subject_and_object_negates_the_caption_part(case) -> None:
    binding, graph = case["binding"], case["graph"]
    swapped = {**graph, "relation_subject": graph["relation_object"], "relation_object": graph["relation_subject"]}
    args = (case["entities"], case["predicates"])
    forward = numpy64(binding.caption_part(*args, graph, BATCH, CONFIG.max_entities))
    backward = numpy64(binding.caption_part(*args, swapped, BATCH, CONFIG.max_entities))
    assert np.abs(forward).max() > 1e-3
    np.testing.assert_allclose(backward, -forward, atol=1e-6)


def test_config_round_trip(case) -> None:
    binding = case["binding"]

    def run(layer):
        layer.image_part(case["rows"], case["regions"], case["counts"])
        return layer.caption_part(case["entities"], case["predicates"], case["graph"], BATCH, CONFIG.max_entities)

    assert_config_round_trip(binding, run)
