"""The demo job (`cora_keras.demo.run_demo`) on a tiny world and model.

One module-scoped run: 20/4/6 scenes, a D=32 model, one epoch of two steps
for CORA and the bag-of-words ablation, no export. On TensorFlow the run
is eager (tracing the train step costs more than the run).
"""

import json
import math

import keras
import numpy as np
import pytest

from cora_keras.config import load_config
from cora_keras.demo import (
    DEMO_CONFIG,
    METRIC_KEYS,
    RESULTS_FILE,
    DemoSettings,
    format_results,
    run_demo,
)
from cora_keras.model import CoraModel, example_inputs

TINY_OVERRIDES = (
    "model.embed_size=32", "model.composer_hidden=32", "model.word_dim=16", "model.num_heads=2",
    "model.gpo_hidden=8", "model.attribute_budget=9.0",
    "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=10", "train.eval_batch_size=10",
    f"train.run_eagerly={'true' if keras.backend.backend() == 'tensorflow' else 'false'}",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings(
        overrides=TINY_OVERRIDES, train_scenes=20, dev_scenes=4, test_scenes=6,
        feature_size=32, export=False, verbose=0,
    )
    return out, run_demo(out, settings)


def test_results_file_holds_the_returned_results(demo) -> None:
    out, results = demo
    assert json.loads((out / RESULTS_FILE).read_text()) == results
    assert set(results) == {"test", "probes", "baseline_bow", "seconds"}
    assert set(results["baseline_bow"]) == {"test", "probes"}


@pytest.mark.parametrize("model", ["cora", "baseline_bow"])
def test_metrics_and_probes_are_in_range(demo, model) -> None:
    _, results = demo
    entry = results if model == "cora" else results["baseline_bow"]
    test = entry["test"]
    assert tuple(test) == METRIC_KEYS
    for direction in ("i2t", "t2i"):
        recalls = [test[f"{direction}_r{k}"] for k in (1, 5, 10)]
        assert all(0.0 <= r <= 100.0 for r in recalls)
        assert recalls == sorted(recalls)  # R@1 <= R@5 <= R@10
    assert test["rsum"] == pytest.approx(sum(v for k, v in test.items() if k != "rsum"), abs=0.05)
    # 6 test images: text -> image R@10 covers every candidate.
    assert test["t2i_r10"] == 100.0
    assert set(entry["probes"]) == {"swap_attribute", "swap_relation"}
    for value in entry["probes"].values():
        assert math.isnan(value) or 0.0 <= value <= 100.0
    assert results["seconds"] > 0


def test_both_runs_trained_with_their_text_encoder(demo) -> None:
    out, _ = demo
    for name, encoder in (("cora", "gru"), ("bow", "bow")):
        config = load_config(out / name / "config.yaml")
        assert config.model.text_encoder == encoder
        assert config.model.region_feature_size == 32
        assert (out / name / "best.weights.h5").is_file()
    assert not (out / "export").exists()


def test_table_names_both_models(demo) -> None:
    _, results = demo
    table = format_results(results)
    assert "CORA" in table and "bag-of-words" in table
    assert f"{results['test']['rsum']:.1f}" in table


def test_demo_config_is_the_shipped_file() -> None:
    assert DEMO_CONFIG.is_file()
    assert load_config(DEMO_CONFIG).data.dataset == "demo"


def test_bag_of_words_caption_ignores_word_order_and_binding() -> None:
    """Swapping two entities' attributes, or a relation's ends, keeps the
    caption's bag of words and so its bow embedding; entities still differ."""
    config = load_config(DEMO_CONFIG, ["model.text_encoder=bow", "model.vocab_size=20",
                                       "model.embed_size=8", "model.word_dim=4"]).model
    model = CoraModel(config)
    model.build()
    batch = example_inputs(config, batch_size=2)
    # caption 0: entity 0 "5" with attribute "6", entity 1 "7" with attribute "8", 0 -(9)-> 1
    batch["entity_tokens"][:, 1, :3] = [2, 7, 3]
    batch["attribute_tokens"][:, 1, 0, :3] = [2, 8, 3]
    batch["relation_tokens"][:, 0, :3] = [2, 9, 3]
    # caption 1: the attributes swapped and the relation reversed
    batch["attribute_tokens"][1, 0, 0, :3] = [2, 8, 3]
    batch["attribute_tokens"][1, 1, 0, :3] = [2, 6, 3]
    batch["relation_subject"][1, 0], batch["relation_object"][1, 0] = 1, 0
    out = model.encode_captions(batch, training=False)
    caption = keras.ops.convert_to_numpy(out["caption"])
    entities = keras.ops.convert_to_numpy(out["entities"])
    np.testing.assert_allclose(caption[0], caption[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(caption, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(entities[0, 0], entities[1, 0])
    mask = keras.ops.convert_to_numpy(out["entity_mask"])
    assert mask[:, :2].all() and not mask[:, 2:].any()
    np.testing.assert_array_equal(entities[:, 2:], 0.0)
