"""The image tower computes only valid region rows when given a row budget."""

import keras
import numpy as np
import pytest

from cora_keras.config import ModelConfig
from cora_keras.inputs import region_budget
from cora_keras.model import CoraModel
from cora_keras.synthetic import synthetic_batch

SMALL = dict(
    embed_size=32, composer_hidden=32, word_dim=16, vocab_size=40,
    region_feature_size=24, region_dropout=0.0,
)


@pytest.fixture(scope="module")
def models():
    dense = CoraModel(ModelConfig(**SMALL))
    dense.build()
    packed = CoraModel(ModelConfig(**SMALL, region_budget=0.8))
    packed.build()
    packed.set_weights(dense.get_weights())
    return dense, packed


def _norm_state(model):
    norm = model.region_encoder.mlp_norm
    return [keras.ops.convert_to_numpy(v) for v in (norm.moving_mean, norm.moving_variance)]


@pytest.mark.parametrize("training", [False, True])
def test_packed_rows_give_the_dense_embeddings_and_norm_statistics(models, training):
    dense, packed = models
    x, _ = synthetic_batch(dense.model_config, 6, np.random.default_rng(0), regions=(10, 36))
    assert x["region_counts"].sum() <= region_budget(packed.model_config, 6) < 6 * 36
    a = keras.ops.convert_to_numpy(dense.encode_images(x, training=training))
    b = keras.ops.convert_to_numpy(packed.encode_images(x, training=training))
    np.testing.assert_allclose(a, b, atol=1e-6)
    for u, v in zip(_norm_state(dense), _norm_state(packed)):
        np.testing.assert_allclose(u, v, atol=1e-6)


def test_evaluation_encodes_every_row_past_the_training_budget(models):
    dense, packed = models
    x, _ = synthetic_batch(dense.model_config, 6, np.random.default_rng(1), regions=(36, 36))
    assert x["region_counts"].sum() > region_budget(packed.model_config, 6)
    a = keras.ops.convert_to_numpy(dense.encode_images(x, training=False))
    b = keras.ops.convert_to_numpy(packed.encode_images(x, training=False))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_region_budget_is_none_at_full_share_and_rounds_up():
    assert region_budget(ModelConfig(), 8) is None
    assert region_budget(ModelConfig(region_budget=0.5), 3) == 54
    assert region_budget(ModelConfig(region_budget=0.701), 1) == 26


def test_the_pipeline_names_the_region_budget_it_overflows():
    from cora_keras.data.pipeline import PhraseBudgetError, check_region_budget

    config = ModelConfig(region_budget=0.5)
    check_region_budget(np.array([18, 18]), config)
    with pytest.raises(PhraseBudgetError, match=r"37 valid regions, over the region budget of 36; raise model.region_budget"):
        check_region_budget(np.array([18, 19]), config)
