"""RelationComposer: config round trip (with H != D projections and the global stack).

Its numbers are checked end to end against the NumPy reference in
tests/test_checkpoints.py and for packing invariance in tests/test_model.py.
"""

from __future__ import annotations

import numpy as np

from cora_keras.layers.relation_composer import RelationComposer
from cora_keras.model import text_graph
from cora_keras.synthetic import synthetic_batch
from tests.helpers import assert_config_round_trip, randomize_weights, small_model_config

CONFIG = small_model_config()
WORD = 6


def test_config_round_trip() -> None:
    x, _ = synthetic_batch(CONFIG, 2, np.random.default_rng(0), regions=(2, 6), words=(1, 2))
    graph = text_graph(x, CONFIG, None)
    rng = np.random.default_rng(1)
    entities = rng.standard_normal((2 * CONFIG.max_entities, CONFIG.embed_size)).astype(np.float32)
    predicates = rng.standard_normal((2 * CONFIG.max_caption_relations, WORD)).astype(np.float32)
    composer = RelationComposer(32, CONFIG.embed_size, CONFIG.max_entities, num_heads=4, use_graph_global=True)
    composer(entities, predicates, graph)
    randomize_weights(composer, seed=2)
    assert_config_round_trip(composer, lambda layer: layer(entities, predicates, graph))
