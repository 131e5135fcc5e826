"""The optional spektral graph layer: trains on TensorFlow, refuses elsewhere."""

import keras
import numpy as np
import pytest

from cora_keras.config import ModelConfig
from cora_keras.synthetic import synthetic_batch

SMALL = dict(embed_size=32, composer_hidden=32, word_dim=16, vocab_size=40, region_feature_size=24)


@pytest.mark.tf_only
def test_model_with_spektral_gat_trains_on_tensorflow():
    from cora_keras.model import CoraModel
    from cora_keras.layers.spektral_graph import SpektralGAT

    config = ModelConfig(**SMALL, graph_layer="spektral_gat")
    model = CoraModel(config)
    model.build()
    graph_layers = model.entity_composer.graph_layers + model.relation_composer.graph_layers
    assert all(isinstance(layer, SpektralGAT) for layer in graph_layers)
    keras.utils.set_random_seed(0)
    x, y = synthetic_batch(config, 8, np.random.default_rng(0))
    model.compile(optimizer=keras.optimizers.AdamW(2e-3), jit_compile=False)
    history = model.fit(x, y, batch_size=8, epochs=25, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]


@pytest.mark.tf_only
def test_spektral_gat_ignores_nodes_outside_the_graph():
    from cora_keras.layers.spektral_graph import SpektralGAT

    layer = SpektralGAT(32, num_heads=4)
    rng = np.random.default_rng(1)
    nodes = rng.standard_normal((2, 4, 32)).astype("float32")
    adjacency = np.zeros((2, 4, 4), "float32")
    adjacency[:, :2, :2] = 1.0
    out = keras.ops.convert_to_numpy(layer(nodes, adjacency))
    nodes[:, 2:] = rng.standard_normal((2, 2, 32)) * 100
    again = keras.ops.convert_to_numpy(layer(nodes, adjacency))
    np.testing.assert_allclose(out[:, :2], again[:, :2], atol=1e-5)


def test_spektral_gat_refuses_other_backends():
    if keras.backend.backend() == "tensorflow":
        pytest.skip("the refusal concerns jax and torch")
    from cora_keras.layers.spektral_graph import SpektralGAT

    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        SpektralGAT(32, num_heads=4)
