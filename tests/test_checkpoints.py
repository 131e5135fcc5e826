"""Import of release checkpoints: Keras outputs equal the NumPy reference.

A random release-layout state dict (tests/reference_cora.py) is written
with torch.save, read back, loaded into one shared CoraModel, and the
model's embeddings are compared with `reference_forward` on the same
weights; then every error path. Skipped when torch is not importable.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest

pytest.importorskip("torch")
# Keras' own Variable.numpy()/convert_to_numpy trip NumPy 2's __array__(copy=) notice.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

from cora_keras.checkpoints import (  # noqa: E402
    CheckpointMismatchError,
    config_from_state_dict,
    load_release_checkpoint,
    load_release_state_dict,
    load_release_weights,
)
from cora_keras.config import ModelConfig  # noqa: E402
from tests.reference_cora import (  # noqa: E402
    random_inputs,
    random_state_dict,
    reference_forward,
    save_release_checkpoint,
)

VOCAB = 50
SIZES = dict(embed_size=64, word_dim=24, region_feature_size=48)
BATCH = 4  # one batch size everywhere: JAX compiles each op once per shape
CONFIG = ModelConfig(
    embed_size=64,
    composer_hidden=64,
    word_dim=24,
    vocab_size=VOCAB,
    region_feature_size=48,
    num_regions=6,  # the defaults of random_inputs from here on
    max_entities=4,
    max_attributes=3,
    max_caption_relations=5,
    max_phrase_tokens=5,
    entity_budget=4.0,  # budgets for every slot: no phrase is ever dropped
    attribute_budget=12.0,
    relation_budget=5.0,
    num_heads=16,
)
TOLERANCE = 1e-4


def _state_dict(seed: int = 0, **overrides) -> dict[str, np.ndarray]:
    kwargs = {**SIZES, "vocab_size": VOCAB, "seed": seed, **overrides}
    return random_state_dict(**kwargs)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "release.pth"
    save_release_checkpoint(_state_dict(seed=0), str(path))
    return load_release_checkpoint(path, CONFIG)


def _edge_inputs(seed: int) -> dict[str, np.ndarray]:
    """Row 1: one region, one entity without attributes, no relation.
    Row 2: all regions, entity 0 with A attributes, entity 1 with none."""
    x = random_inputs(VOCAB, batch_size=BATCH, seed=seed)
    a = CONFIG.max_attributes
    x["region_counts"][1] = 1
    x["regions"][1, 1:] = 0.0
    x["entity_tokens"][1, 1:] = 0
    x["attribute_tokens"][1] = 0
    x["relation_tokens"][1] = 0
    x["relation_subject"][1] = 0
    x["relation_object"][1] = 0
    x["region_counts"][2] = CONFIG.num_regions
    x["regions"][2] = np.random.default_rng(seed).normal(size=x["regions"][2].shape)
    x["entity_tokens"][2, :2, :3] = [[2, 7, 3], [2, 9, 3]]
    x["attribute_tokens"][2, 0, :a, :3] = [[2, 11 + i, 3] for i in range(a)]
    x["attribute_tokens"][2, 1] = 0
    return x


def _assert_matches_reference(model, state_dict, inputs) -> None:
    expected = reference_forward(
        state_dict,
        inputs,
        num_heads=CONFIG.num_heads,
        max_relations=CONFIG.max_relations,
    )
    image = keras.ops.convert_to_numpy(model.encode_images(inputs, training=False))
    captions = model.encode_captions(inputs, training=False)
    caption = keras.ops.convert_to_numpy(captions["caption"])
    entities = keras.ops.convert_to_numpy(captions["entities"])
    mask = keras.ops.convert_to_numpy(captions["entity_mask"])
    real = np.any(inputs["entity_tokens"] != 0, axis=-1)
    np.testing.assert_array_equal(mask, real)
    np.testing.assert_allclose(image, expected["image"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(caption, expected["caption"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        entities[real], expected["entities"][real], rtol=0, atol=TOLERANCE
    )


# ------------------------------------------------------------- equivalence


@pytest.mark.parametrize("weights_seed", [0, 1])
@pytest.mark.parametrize("inputs_seed", [2, 3])
def test_random_inputs_match_reference(model, weights_seed, inputs_seed) -> None:
    state_dict = _state_dict(seed=weights_seed)
    load_release_weights(model, state_dict)
    inputs = random_inputs(VOCAB, batch_size=BATCH, seed=inputs_seed)
    _assert_matches_reference(model, state_dict, inputs)


@pytest.mark.parametrize("weights_seed", [0, 4])
def test_edge_inputs_match_reference(model, weights_seed) -> None:
    state_dict = _state_dict(seed=weights_seed)
    load_release_weights(model, state_dict)
    _assert_matches_reference(model, state_dict, _edge_inputs(seed=weights_seed))


def test_gru_gates_are_reordered_and_transposed(model) -> None:
    state_dict = _state_dict(seed=5)
    load_release_weights(model, state_dict)
    w = CONFIG.word_dim
    w_ih = state_dict["entity_composer.rnn_ent.weight_ih_l0"]  # rows r, z, n
    b_hh = state_dict["entity_composer.rnn_ent.bias_hh_l0"]
    gru = model.phrase_encoder.grus["object"]
    kernel = gru.kernel.numpy()  # columns z, r, h
    bias = gru.bias.numpy()
    np.testing.assert_array_equal(kernel[:, :w], w_ih[w : 2 * w].T)
    np.testing.assert_array_equal(kernel[:, w : 2 * w], w_ih[:w].T)
    np.testing.assert_array_equal(kernel[:, 2 * w :], w_ih[2 * w :].T)
    np.testing.assert_array_equal(
        bias[1], np.concatenate([b_hh[w : 2 * w], b_hh[:w], b_hh[2 * w :]])
    )


# ---------------------------------------------------------------- reading


def test_config_from_state_dict_reads_every_shape() -> None:
    state_dict = _state_dict(entity_layers=2, relation_layers=3)
    assert config_from_state_dict(state_dict) == {
        "vocab_size": VOCAB,
        "word_dim": 24,
        "embed_size": 64,
        "composer_hidden": 64,
        "region_feature_size": 48,
        "entity_layers": 2,
        "relation_layers": 3,
        "num_heads": 16,
        "gpo_hidden": 32,
    }


def test_config_from_state_dict_names_a_missing_key() -> None:
    state_dict = _state_dict()
    del state_dict["image_encoder.linear.weight"]
    with pytest.raises(
        CheckpointMismatchError, match="image_encoder.linear.weight.*embed_size"
    ):
        config_from_state_dict(state_dict)


def test_wrapped_data_parallel_checkpoint_is_unwrapped(tmp_path) -> None:
    import torch

    state_dict = _state_dict()
    checkpoint = {
        "epoch": 3,
        "model": {
            "module." + k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()
        },
    }
    path = tmp_path / "wrapped.pth"
    torch.save(checkpoint, path)
    loaded = load_release_state_dict(path)
    assert sorted(loaded) == sorted(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype


def test_plain_checkpoint_round_trips_with_tied_embeddings(tmp_path) -> None:
    state_dict = _state_dict()
    path = tmp_path / "plain.pth"
    save_release_checkpoint(state_dict, str(path))
    loaded = load_release_state_dict(path)
    np.testing.assert_array_equal(
        loaded["relation_composer.word_embeddings.weight"],
        state_dict["entity_composer.word_embeddings.weight"],
    )
    assert sorted(loaded) == sorted(state_dict)


def test_non_state_dict_file_is_rejected_with_its_name(tmp_path) -> None:
    import torch

    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="list.pth.*not a state dict"):
        load_release_state_dict(path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_release_state_dict(tmp_path / "absent.pth")


def test_missing_torch_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install cora-keras\[torch\]"):
        load_release_state_dict(tmp_path / "any.pth")


# ----------------------------------------------------------------- errors


def _weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


def _assert_unchanged(model, before: list[np.ndarray]) -> None:
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(old, new)


def test_missing_key_is_listed_and_nothing_is_assigned(model) -> None:
    before = _weights(model)
    state_dict = _state_dict(seed=6)
    del state_dict["relation_composer.lnorm.bias"]
    del state_dict["image_encoder.gpool.gru.bias_hh_l0_reverse"]
    with pytest.raises(CheckpointMismatchError) as error:
        load_release_weights(model, state_dict)
    message = str(error.value)
    assert (
        "missing keys (2): image_encoder.gpool.gru.bias_hh_l0_reverse, "
        "relation_composer.lnorm.bias" in message
    )
    assert "unexpected" not in message and "shape mismatch" not in message
    _assert_unchanged(model, before)


def test_wrong_vocabulary_size_names_key_shapes_and_config_value(model) -> None:
    before = _weights(model)
    with pytest.raises(CheckpointMismatchError) as error:
        load_release_weights(model, _state_dict(vocab_size=VOCAB + 10))
    message = str(error.value)
    assert (
        "shape mismatch: entity_composer.word_embeddings.weight "
        "expected (50, 24), found (60, 24)" in message
    )
    assert "vocab_size: config has 50, checkpoint has 60" in message
    _assert_unchanged(model, before)


def test_wrong_word_dim_reports_every_misshapen_gru_key(model) -> None:
    with pytest.raises(CheckpointMismatchError) as error:
        load_release_weights(model, _state_dict(word_dim=16))
    message = str(error.value)
    assert (
        "entity_composer.rnn_ent.weight_ih_l0 expected (72, 24), found (48, 16)"
        in message
    )
    assert (
        "relation_composer.word_fc.0.weight expected (64, 24), found (64, 16)"
        in message
    )
    assert "word_dim: config has 24, checkpoint has 16" in message


def test_extra_layer_is_unexpected_and_blames_the_layer_count(model) -> None:
    with pytest.raises(CheckpointMismatchError) as error:
        load_release_weights(model, _state_dict(relation_layers=3))
    message = str(error.value)
    assert (
        "unexpected keys (10): relation_composer.graph_attention.fc.2.bias" in message
    )
    assert "relation_layers: config has 2, checkpoint has 3" in message
    assert "missing" not in message


def test_num_batches_tracked_is_optional(model) -> None:
    state_dict = _state_dict(seed=7)
    del state_dict["image_encoder.mlp.1.num_batches_tracked"]
    load_release_weights(model, state_dict)
    np.testing.assert_array_equal(
        model.region_encoder.mlp_norm.moving_variance.numpy(),
        state_dict["image_encoder.mlp.1.running_var"],
    )


def test_untied_word_embeddings_are_rejected(model) -> None:
    state_dict = _state_dict()
    untied = state_dict["entity_composer.word_embeddings.weight"].copy()
    untied[3, 0] += 0.5
    state_dict["relation_composer.word_embeddings.weight"] = untied
    with pytest.raises(CheckpointMismatchError, match="differ .max abs difference 0.5"):
        load_release_weights(model, state_dict)


@pytest.mark.parametrize(
    "key, variant",
    [
        ("relation_composer.fc_out.weight", "composer_hidden != embed_size"),
        ("relation_composer.graph_global.fc.0.weight", "use_graph_global"),
        ("bert_embedding.embeddings.word_embeddings.weight", "BERT"),
    ],
)
def test_other_variants_name_their_keys(model, key, variant) -> None:
    state_dict = {**_state_dict(), key: np.zeros((2, 2), np.float32)}
    with pytest.raises(NotImplementedError, match=variant) as error:
        load_release_weights(model, state_dict)
    assert key in str(error.value)


def test_checkpoint_config_mismatch_fails_before_building(tmp_path) -> None:
    path = tmp_path / "release.pth"
    save_release_checkpoint(_state_dict(embed_size=32), str(path))
    with pytest.raises(
        CheckpointMismatchError,
        match="release.pth.*embed_size: config has 64, checkpoint has 32",
    ):
        load_release_checkpoint(path, CONFIG)
