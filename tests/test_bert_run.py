"""A tiny BERT run: captions reach a random tiny BertBackbone as WordPiece ids
through the training and evaluation pipelines (`model.bert_vocabulary`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cora_keras.config import config_from_dict
from cora_keras.data.datasets import load_split
from cora_keras.data.pipeline import TrainingBatches, training_dataset
from cora_keras.evaluation import evaluate_split
from cora_keras.inputs import CAPTION_INPUTS
from cora_keras.model import CoraModel
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.training import compile_model
from tiny_run import SPLIT, TINY_CONFIG, write_split

# "sphere" splits into two pieces; "metal" is [UNK].
TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cube", "sp", "##here", "cone", "red",
    "blue", "green", "large", "small", "next", "to", "left", "of", "and", "with",
]
CLS, SEP, UNK = 2, 3, 1


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    (root / "vocabulary.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    model = dict(TINY_CONFIG["model"], text_encoder="bert", bert_vocabulary=str(root / "vocabulary.txt"),
                 bert_backbone={"vocabulary_size": len(TOKENS), "num_layers": 1, "num_heads": 2,
                                "hidden_dim": 8, "intermediate_dim": 16, "max_sequence_length": 5})
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
