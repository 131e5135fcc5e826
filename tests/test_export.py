"""Tests of the SavedModel export and of captions_to_tensors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from tiny_run import TINY_CONFIG, split_graphs, tiny_vocabulary, write_run

from cora_keras.config import AugmentConfig, config_from_dict
from cora_keras.export import (
    EXTRA_ASSETS_DIR,
    ExportError,
    captions_to_tensors,
    require_tensorflow_backend,
)
from cora_keras.inputs import CAPTION_INPUTS, caption_specs
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.parser import SceneGraphParser

REPO = Path(__file__).resolve().parents[1]

# Runs with plain TensorFlow: loads the SavedModel, feeds the inputs of
# inputs.npz, writes every endpoint output to outputs.npz.
LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, outputs_path = sys.argv[1:]
    towers = tf.saved_model.load(export_dir)
    assert "cora_keras" not in sys.modules, "the loader imported cora_keras"
    assert {"encode_image", "encode_text"} <= set(towers.signatures), list(towers.signatures)
    inputs = np.load(inputs_path)
    outputs = {}
    for batch in ("3", "1"):
        def part(names):
            return {name: tf.constant(inputs[f"{batch}/{name}"]) for name in names}
        image = towers.encode_image(part(["regions", "region_counts"]))
        text = towers.encode_text(part(["entity_tokens", "attribute_tokens", "relation_tokens",
                                        "relation_subject", "relation_object"]))
        for name, value in {**image, **text}.items():
            outputs[f"{batch}/{name}"] = value.numpy()
    outputs["cora_keras_imported"] = np.array("cora_keras" in sys.modules)
    np.savez(outputs_path, **outputs)
    """
)


@pytest.fixture(scope="module")
def parser():
    return SceneGraphParser()


def test_captions_to_tensors_shapes_dtypes_and_tokens(parser):
    config = config_from_dict(TINY_CONFIG)
    vocab = tiny_vocabulary()
    ids = vocab.word2idx
    cls, sep = vocab.cls_id, vocab.sep_id
    tensors = captions_to_tensors(
        ["A red cube.", "There is a blue cone next to a green cube."], vocab, config.model, parser
    )
    assert list(tensors) == list(CAPTION_INPUTS)
    for name, (shape, dtype) in caption_specs(config.model).items():
        assert tensors[name].shape == (2, *shape), name
        assert tensors[name].dtype == np.dtype(dtype), name
    np.testing.assert_array_equal(tensors["entity_tokens"][0, 0], [cls, ids["cube"], sep, 0, 0])
    red = tensors["attribute_tokens"][0, 0, 0]
    np.testing.assert_array_equal(red, [cls, ids["red"], sep, 0, 0])
    assert not tensors["entity_tokens"][0, 1:].any()
    assert not tensors["relation_tokens"][0].any()
    np.testing.assert_array_equal(tensors["entity_tokens"][1, 1], [cls, ids["cube"], sep, 0, 0])
    np.testing.assert_array_equal(
        tensors["relation_tokens"][1, 0], [cls, ids["next"], ids["to"], sep, 0]
    )
    assert (tensors["relation_subject"][1, 0], tensors["relation_object"][1, 0]) == (0, 1)


def test_captions_to_tensors_rejects_a_bare_string_and_no_captions(parser):
    config = config_from_dict(TINY_CONFIG)
    with pytest.raises(TypeError, match="not one string"):
        captions_to_tensors("A red cube.", tiny_vocabulary(), config.model, parser)
    with pytest.raises(ValueError, match="at least one caption"):
        captions_to_tensors([], tiny_vocabulary(), config.model, parser)


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="checks the error on other backends"
)
def test_export_on_another_backend_says_to_use_tensorflow():
    with pytest.raises(ExportError, match="KERAS_BACKEND=tensorflow"):
        require_tensorflow_backend()


def _inputs(config, batch, seed):
    """Image and caption inputs of `batch` examples (varied region counts)."""
    rng = np.random.default_rng(seed)
    c = config.model
    regions = rng.normal(size=(batch, c.num_regions, c.region_feature_size)).astype(np.float32)
    counts = rng.integers(1, c.num_regions + 1, size=batch).astype(np.int32)
    for row, count in enumerate(counts):
        regions[row, count:] = 0.0
    encoder = GraphEncoder(tiny_vocabulary(), c, AugmentConfig())
    encoded = encoder.encode_batch(split_graphs()[:batch], rng=None)
    return {"regions": regions, "region_counts": counts, **{n: encoded[n] for n in CAPTION_INPUTS}}


@pytest.fixture(scope="module", params=[0, 2], ids=["plain", "spatial_binding"])
def exported(tmp_path_factory, request):
    """A tiny run exported by the CLI, started under the JAX backend."""
    root = tmp_path_factory.mktemp("export")
    config, model, _ = write_run(root / "run", seed=3, binding_axes=request.param)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "cora_keras", "export",
         "--run", str(root / "run"), "--out", str(root / "saved")],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, config, model


@pytest.mark.tf_only
def test_plain_tensorflow_loads_the_export_and_gives_the_keras_embeddings(exported):
    root, config, model = exported
    inputs = {b: _inputs(config, int(b), seed=int(b)) for b in ("3", "1")}
    flat = {f"{b}/{n}": v for b, arrays in inputs.items() for n, v in arrays.items()}
    np.savez(root / "inputs.npz", **flat)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    loader = root / "loader.py"
    loader.write_text(LOADER, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(loader), str(root / "saved"), str(root / "inputs.npz"),
         str(root / "out.npz")],
        env=env, cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(root / "out.npz")
    assert not outputs["cora_keras_imported"]
    for b, arrays in inputs.items():
        image = keras.ops.convert_to_numpy(model.encode_images(arrays, training=False))
        text = model.encode_captions(arrays, training=False)
        text = {name: keras.ops.convert_to_numpy(value) for name, value in text.items()}
        np.testing.assert_allclose(outputs[f"{b}/image"], image, atol=1e-5)
        np.testing.assert_allclose(outputs[f"{b}/caption"], text["caption"], atol=1e-5)
        np.testing.assert_allclose(outputs[f"{b}/entities"], text["entities"], atol=1e-5)
        np.testing.assert_array_equal(outputs[f"{b}/entity_mask"], text["entity_mask"])
        width = (1 + config.model.binding_axes) * config.model.embed_size
        assert outputs[f"{b}/image"].shape == (int(b), width)
    # The batch of 3 holds a caption with more entities than E, and relations.
    assert outputs["3/entity_mask"].sum(axis=1).tolist() == [4, 1, 2]
    if config.model.binding_axes:  # the binding parts are not zero
        d = config.model.embed_size
        assert min(np.abs(outputs[f"3/{name}"][:, d:]).max() for name in ("image", "caption")) > 1e-3


@pytest.mark.tf_only
def test_export_carries_the_config_and_vocabulary(exported):
    root, _, _ = exported
    for name in ("config.yaml", "vocab.json"):
        exported_file = root / "saved" / EXTRA_ASSETS_DIR / name
        assert exported_file.read_bytes() == (root / "run" / name).read_bytes()
