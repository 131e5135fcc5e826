"""A tiny BERT run: captions reach a random tiny BertBackbone as WordPiece ids
through the training and evaluation pipelines (`model.bert_vocabulary`); a
run trained from a tiny local keras_hub preset evaluates, searches and
exports after its preset directory is gone."""

from __future__ import annotations

import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from cora_keras.config import config_from_dict
from cora_keras.data.datasets import load_split
from cora_keras.data.pipeline import TrainingBatches, training_dataset
from cora_keras.evaluation import evaluate_split
from cora_keras.inputs import CAPTION_INPUTS
from cora_keras.model import CoraModel
from cora_keras.run import BERT_BACKBONE_FILE, BERT_VOCABULARY_FILE, load_run
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.wordpiece import PRESET_VOCABULARY
from cora_keras.search import SplitSearch
from cora_keras.training import compile_model, train
from tiny_run import SPLIT, TINY_CONFIG, write_split

# "sphere" splits into two pieces; "metal" is [UNK].
TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cube", "sp", "##here", "cone", "red",
    "blue", "green", "large", "small", "next", "to", "left", "of", "and", "with",
]
CLS, SEP, UNK = 2, 3, 1
BACKBONE = {"vocabulary_size": len(TOKENS), "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "intermediate_dim": 16, "max_sequence_length": 5}


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    (root / "vocabulary.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    model = dict(TINY_CONFIG["model"], text_encoder="bert", bert_vocabulary=str(root / "vocabulary.txt"),
                 bert_backbone=BACKBONE)
    train = dict(TINY_CONFIG["train"], batch_size=5,
                 run_eagerly=keras.backend.backend() == "tensorflow")
    config = config_from_dict({**TINY_CONFIG, "model": model, "train": train})
    write_split(root / "data", config)
    split = load_split(root / "data", SPLIT, config)
    return config, split, root / "data"


def test_training_batches_carry_wordpiece_ids(bert_run):
    config, split, _ = bert_run
    encoder = GraphEncoder(split.vocabulary, config.model, config.augment)
    # Caption 3: one entity "cube" with attributes "red large metal" (A = 2 kept).
    tokens = encoder.encode(split.graphs[3])
    np.testing.assert_array_equal(tokens["entity_tokens"][0], [CLS, 5, SEP, 0, 0])
    np.testing.assert_array_equal(tokens["attribute_tokens"][0], [[CLS, 9, SEP, 0, 0],
                                                                   [CLS, 12, SEP, 0, 0]])
    x, _ = TrainingBatches(split, encoder, config, seed=0).batch(0, np.arange(10))
    for key in ("entity_tokens", "attribute_tokens", "relation_tokens"):
        assert x[key].max() < len(TOKENS)
    assert (x["entity_tokens"] == 6).sum() == (x["entity_tokens"] == 7).sum() > 0  # sp ##here


def test_a_tiny_bert_model_trains_and_evaluates_on_wordpieces(bert_run):
    config, split, data_dir = bert_run
    keras.utils.set_random_seed(0)
    model = CoraModel(config.model, config.loss)
    model.build()
    compile_model(model, config.train, steps_per_epoch=1)
    encoder = GraphEncoder(split.vocabulary, config.model, config.augment)
    history = model.fit(training_dataset(split, encoder, config, seed=0), epochs=1,
                        steps_per_epoch=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    embeddings, _ = evaluate_split(model, config, split.vocabulary, data_dir, SPLIT)
    # Evaluation builds its own encoder: it must feed the same WordPiece ids.
    captions = encoder.encode_batch(split.graphs[:5])
    wanted = model.encode_captions({k: captions[k] for k in CAPTION_INPUTS}, training=False)
    np.testing.assert_allclose(embeddings.captions[:5], keras.ops.convert_to_numpy(wanted["caption"]),
                               atol=1e-5)


@pytest.fixture(scope="module")
def preset_run(bert_run, tmp_path_factory):
    """One training step from a tiny local preset (`train`), then the preset
    directory is deleted. Gives the config, data and run directories, the
    trained model and its embeddings of the split (taken before the deletion)."""
    keras_hub = pytest.importorskip("keras_hub")
    config, split, _ = bert_run
    root = tmp_path_factory.mktemp("preset_run")
    preset = root / "preset"
    keras_hub.models.BertBackbone(**BACKBONE).save_to_preset(str(preset))
    (preset / PRESET_VOCABULARY).parent.mkdir(parents=True)
    (preset / PRESET_VOCABULARY).write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    data_dir = root / "data"
    write_split(data_dir, config)
    for name in ("train", "dev"):  # the split serves as train and dev too
        shutil.copy(data_dir / f"{SPLIT}_caps.txt", data_dir / f"{name}_caps.txt")
        shutil.copy(data_dir / f"{SPLIT}_ims.npy", data_dir / f"{name}_ims.npy")
        shutil.copy(data_dir / "scene_graphs" / f"{SPLIT}.jsonl",
                    data_dir / "scene_graphs" / f"{name}.jsonl")
    model = dataclasses.replace(config.model, bert_preset=str(preset), bert_backbone=None,
                                bert_vocabulary=None)
    config = dataclasses.replace(config, model=model,
                                 train=dataclasses.replace(config.train, epochs=1, steps_per_epoch=1))
    trained = train(config, data_dir, root / "run", verbose=0).model
    embeddings, _ = evaluate_split(trained, config, split.vocabulary, data_dir, SPLIT)
    shutil.rmtree(preset)
    return config, data_dir, root / "run", trained, embeddings


def test_a_bert_run_holds_its_wordpiece_vocabulary_and_backbone_kwargs(preset_run):
    _, _, run_dir, _, _ = preset_run
    assert (run_dir / BERT_VOCABULARY_FILE).read_text(encoding="utf-8").split("\n") == [*TOKENS, ""]
    backbone = json.loads((run_dir / BERT_BACKBONE_FILE).read_text(encoding="utf-8"))
    # The preset's config.json: BACKBONE and BertBackbone's defaults.
    assert backbone == {**BACKBONE, "dropout": 0.1, "num_segments": 2, "dtype": "float32"}


def test_a_bert_run_evaluates_and_searches_without_its_preset(preset_run):
    _, data_dir, run_dir, _, wanted = preset_run
    config, model, vocabulary = load_run(run_dir)
    assert config.model.bert_preset is None
    assert config.model.bert_vocabulary == str(run_dir / BERT_VOCABULARY_FILE)
    embeddings, _ = evaluate_split(model, config, vocabulary, data_dir, SPLIT)
    np.testing.assert_allclose(embeddings.images, wanted.images, atol=1e-5)
    np.testing.assert_allclose(embeddings.captions, wanted.captions, atol=1e-5)
    index = SplitSearch(run_dir, data_dir, SPLIT).index
    np.testing.assert_allclose(index.captions, wanted.captions, atol=1e-5)


@pytest.mark.tf_only
def test_a_bert_run_exports_without_its_preset(preset_run, tmp_path):
    import tensorflow as tf

    from cora_keras.export import captions_to_tensors, export_assets, export_run
    from cora_keras.scene_graph.parser import SceneGraphParser

    _, _, run_dir, trained, _ = preset_run
    export_run(run_dir, tmp_path / "saved")
    config, vocabulary = export_assets(tmp_path / "saved")
    assert config.model.bert_vocabulary.startswith(str(tmp_path / "saved"))
    captions = ["A red cube next to a large sphere.", "A small green cone."]
    tensors = captions_to_tensors(captions, vocabulary, config.model, SceneGraphParser())
    # "sphere" reaches the export as its two WordPieces.
    assert {6, 7} <= set(tensors["entity_tokens"].ravel().tolist())
    towers = tf.saved_model.load(str(tmp_path / "saved"))
    exported = towers.encode_text({name: tf.constant(value) for name, value in tensors.items()})
    wanted = trained.encode_captions(tensors, training=False)["caption"]
    np.testing.assert_allclose(exported["caption"].numpy(), keras.ops.convert_to_numpy(wanted),
                               atol=1e-5)
