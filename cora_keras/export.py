"""SavedModel export of CoraModel's two towers, and captions -> text tower tensors.

The SavedModel (written on the TensorFlow backend) has two endpoints, each
also a serving signature, with a dynamic batch dimension:

  encode_image({"regions": (B, N, F) float32, "region_counts": (B,) int32})
      -> {"image": (B, D) float32}
  encode_text({the caption tensors of `cora_keras.inputs`, int32})
      -> {"caption": (B, D) float32, "entities": (B, E, D) float32,
          "entity_mask": (B, E) bool}

Embeddings are L2-normalised (similarity = dot product), computed in
inference mode. Plain TensorFlow loads it, without cora_keras:

    >>> towers = tf.saved_model.load(out_dir)
    >>> config, vocab = export_assets(out_dir)  # needs cora_keras
    >>> towers.encode_text(captions_to_tensors(["A red cube."], vocab, config.model))

`export_run` also copies the run's `config.yaml` and `vocab.json` (and a
BERT run's `bert_vocabulary.txt` and `bert_backbone.json`) into
`assets.extra/`, which is what `captions_to_tensors` needs: an export
works without the BERT preset directory the run was trained from.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cora_keras.config import AugmentConfig, Config, ModelConfig
from cora_keras.inputs import CAPTION_INPUTS, caption_specs, image_specs
from cora_keras.run import BERT_FILES, CONFIG_FILE, VOCAB_FILE, load_run, load_run_config
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.parser import SceneGraphParser
from cora_keras.scene_graph.schema import SceneGraph
from cora_keras.scene_graph.vocabulary import Vocabulary

if TYPE_CHECKING:
    from cora_keras.model import CoraModel

IMAGE_ENDPOINT = "encode_image"
TEXT_ENDPOINT = "encode_text"
EXTRA_ASSETS_DIR = "assets.extra"


class ExportError(RuntimeError):
    """The export cannot run (wrong Keras backend)."""


def captions_to_tensors(
    captions: Sequence[str],
    vocabulary: Vocabulary,
    model_config: ModelConfig,
    parser: SceneGraphParser | None = None,
) -> dict[str, np.ndarray]:
    """The text tower's inputs for `captions`: parsed, encoded for evaluation.

    Args:
        captions: the caption strings (non-empty).
        vocabulary: the run's vocabulary (`vocab.json`).
        model_config: the run's `config.model` (shapes E, A, K, T; the
            WordPiece vocabulary of BERT), as `load_run_config` or
            `export_assets` read it.
        parser: a loaded `SceneGraphParser` to reuse (loads spaCy if None).

    Returns:
        The arrays of `inputs.CAPTION_INPUTS`, int32, batch = len(captions).
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string")
    if not captions:
        raise ValueError("captions is empty: give at least one caption")
    graphs = (parser or SceneGraphParser()).parse_many(captions)
    return graphs_to_tensors(graphs, vocabulary, model_config)


def graphs_to_tensors(
    graphs: Sequence[SceneGraph], vocabulary: Vocabulary, model_config: ModelConfig
) -> dict[str, np.ndarray]:
    """The text tower's inputs for parsed captions, encoded for evaluation
    (arguments as in `captions_to_tensors`)."""
    encoder = GraphEncoder(vocabulary, model_config, AugmentConfig())
    encoded = encoder.encode_batch(graphs, rng=None)
    return {name: encoded[name] for name in CAPTION_INPUTS}


def require_tensorflow_backend() -> None:
    """Select the TensorFlow backend if Keras is not imported yet; raise
    ExportError if Keras runs on another backend."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"SavedModel export needs the TensorFlow backend, but Keras runs on "
            f"{keras.backend.backend()!r}; run with KERAS_BACKEND=tensorflow (the "
            "weights are the same on every backend)"
        )


def export_saved_model(model: CoraModel, out_dir: str | os.PathLike) -> Path:
    """Write `model`'s `encode_image` and `encode_text` endpoints as a SavedModel."""
    require_tensorflow_backend()
    import keras

    config = model.model_config
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        IMAGE_ENDPOINT,
        lambda inputs: {"image": model.encode_images(inputs, training=False)},
        input_signature=_input_signature(image_specs(config)),
    )
    archive.add_endpoint(
        TEXT_ENDPOINT,
        lambda inputs: model.encode_captions(inputs, training=False),
        input_signature=_input_signature(caption_specs(config)),
    )
    out_dir = Path(out_dir)
    archive.write_out(str(out_dir), verbose=False)
    return out_dir


def _input_signature(specs: dict[str, tuple[tuple[int, ...], str]]) -> list[dict]:
    """One dict argument of `tf.TensorSpec`s with a dynamic batch dimension."""
    import tensorflow as tf

    return [
        {
            name: tf.TensorSpec((None, *shape), dtype, name=name)
            for name, (shape, dtype) in specs.items()
        }
    ]


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export a run's model (best weights, else last) with its config,
    vocabulary and BERT files in `assets.extra/`; selects the TensorFlow
    backend when Keras is not imported yet."""
    require_tensorflow_backend()
    run_dir = Path(run_dir)
    _, model, _ = load_run(run_dir)
    out_dir = export_saved_model(model, out_dir)
    extra = out_dir / EXTRA_ASSETS_DIR
    extra.mkdir(exist_ok=True)
    bert_files = [name for name in BERT_FILES if (run_dir / name).is_file()]
    for name in (CONFIG_FILE, VOCAB_FILE, *bert_files):
        shutil.copyfile(run_dir / name, extra / name)
    return out_dir


def export_assets(export_dir: str | os.PathLike) -> tuple[Config, Vocabulary]:
    """The config (`load_run_config` of `assets.extra/`: a BERT text side
    reads the export's own copies) and vocabulary an export carries."""
    extra = Path(export_dir) / EXTRA_ASSETS_DIR
    return load_run_config(extra), Vocabulary.load(extra / VOCAB_FILE)
