"""The release-style PyTorch baseline (benchmarks/release_baseline.py) computes CORA.

Its embeddings equal the NumPy reference's (tests/reference_cora.py) on the
same release state dict and inputs, and its objective equals the library's,
so the throughput it reports is that of the same model and loss.
"""

from __future__ import annotations

import numpy as np
import pytest

from cora_keras.config import LossConfig, ModelConfig
from tests.reference_cora import (
    random_inputs,
    random_state_dict,
    reference_forward,
    relation_slots,
)

torch = pytest.importorskip("torch")
baseline = pytest.importorskip("benchmarks.release_baseline")

pytestmark = pytest.mark.backend_free

VOCAB = 40
R = 2  # slots per entity and direction: fewer than the inputs fill, so the cap is exercised


def small_config() -> ModelConfig:
    """Dims of the reference's random state dict and inputs (D = H = 32)."""
    return ModelConfig(
        embed_size=32, composer_hidden=32, word_dim=8, vocab_size=VOCAB,
        region_feature_size=12, num_regions=6, max_entities=4, max_attributes=3,
        max_caption_relations=5, max_phrase_tokens=5, max_relations=R,
    )


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return random_inputs(VOCAB, batch_size=4, region_feature_size=12, seed=3)


def test_relation_slots_follow_the_reference_with_the_cap(inputs) -> None:
    tokens = inputs["relation_tokens"]
    subject, obj = inputs["relation_subject"], inputs["relation_object"]
    slots = baseline.per_entity_relation_slots(tokens, subject, obj, 4, R)
    active, passive = relation_slots((tokens != 0).any(-1), subject, obj, 4, R)
    real = (tokens != 0).any(-1)
    most = max(np.bincount(ends[b][real[b]]).max() for ends in (subject, obj) for b in range(4))
    assert most > R  # some entity has more relations of one kind than slots
    rows = np.arange(4)[:, None, None]

    def slot_tokens(index: np.ndarray) -> np.ndarray:
        return np.where((index >= 0)[..., None], tokens[rows, np.maximum(index, 0)], 0)

    np.testing.assert_array_equal(slots["active_tokens"], slot_tokens(active))
    np.testing.assert_array_equal(slots["passive_tokens"], slot_tokens(passive))
    objects = np.where(active >= 0, obj[rows, np.maximum(active, 0)], 0)
    np.testing.assert_array_equal(slots["active_object"], objects)


def test_forward_equals_the_numpy_reference(inputs) -> None:
    state_dict = random_state_dict(VOCAB, embed_size=32, word_dim=8, region_feature_size=12, seed=4)
    model = baseline.ReleaseCora(small_config())
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    with torch.no_grad():
        got = model.eval()(baseline.padded_inputs(inputs, R))
    expected = reference_forward(state_dict, inputs, max_relations=R)
    assert got["entity_mask"].numpy().sum() == (inputs["entity_tokens"] != 0).any(-1).sum()
    for name in ("image", "caption", "entities"):
        np.testing.assert_allclose(got[name].numpy(), expected[name], rtol=1e-4, atol=1e-4)


def test_objective_equals_the_library_objective() -> None:
    from keras import ops

    from cora_keras.losses import cora_objective

    rng = np.random.default_rng(5)
    b, e, a, d = 5, 3, 2, 8

    def unit(*shape: int) -> np.ndarray:
        x = rng.normal(size=(*shape, d))
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    mask = np.arange(e)[None, :] < np.array([3, 1, 2, 3, 2])[:, None]
    names = np.where(mask, rng.integers(1, 4, size=(b, e)), 0)  # names repeat across captions
    attributes = np.where(mask[..., None], rng.integers(0, 3, size=(b, e, a)), 0)
    targets = {
        "image_ids": np.array([0, 1, 2, 1, 3]),  # rows 1 and 3 show the same image
        "entity_name_ids": names,
        "entity_attribute_ids": attributes,
        "graph_name_ids": names,
        "graph_attribute_ids": np.where(mask[..., None], rng.integers(0, 3, size=(b, e, a)), 0),
    }
    outputs = {
        "image": unit(b), "caption": unit(b),
        "entities": unit(b, e) * mask[..., None], "entity_mask": mask,
    }
    config = LossConfig(temperature=0.1)
    expected = cora_objective(
        {k: ops.convert_to_tensor(v) for k, v in outputs.items()},
        {k: ops.convert_to_tensor(v.astype(np.int32)) for k, v in targets.items()},
        config,
    )
    got = baseline.release_objective(
        {k: torch.from_numpy(v) for k, v in outputs.items()}, baseline.padded_targets(targets), config
    )
    for name, value in got.items():
        np.testing.assert_allclose(float(value), float(ops.convert_to_numpy(expected[name])), rtol=1e-5)
    # The release has none of the optional terms; off (the default) they are 0 here too.
    optional = {"relation_swap_loss", "region_entity_loss", "relation_readout_loss"}
    assert set(expected) - set(got) == optional
    for name in optional:
        assert float(ops.convert_to_numpy(expected[name])) == 0.0, name
