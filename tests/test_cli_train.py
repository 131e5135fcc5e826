"""`cora-keras train` and `evaluate` end to end on a tiny demo world.

One module-scoped run: `cli.main(["train", ...])` for one epoch, then a
resume to a second epoch through `training.train` (the Python path, which
also hands back the model), then `cli.main(["evaluate", ...])`. Every test
reads what those three calls left behind. On TensorFlow the run is eager
(`train.run_eagerly`): tracing the train step costs more than the run.
"""

import json
import re
import shutil
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from cora_keras import cli
from cora_keras.config import config_from_dict, save_config
from cora_keras.data.datasets import load_split
from cora_keras.data.demo_world import SPLITS, generate_demo_world
from cora_keras.evaluation import SplitEmbedder
from cora_keras.inputs import CAPTION_INPUTS
from cora_keras.retrieval import format_table_row, retrieval_metrics
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import read_jsonl
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary, tokenize
from cora_keras.training import GroupAdamW, parameter_groups, run_config, train

BASE_RATE = 0.001
LOSS_TERMS = ("loss", "contrastive_loss", "triplet_loss", "specificity_loss")
RETRIEVAL = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
TINY = {
    "model": {
        "embed_size": 32, "composer_hidden": 32, "word_dim": 16, "num_heads": 4, "gpo_hidden": 8,
        "region_feature_size": 32, "max_entities": 3, "max_attributes": 3, "max_relations": 2,
        "max_caption_relations": 2, "max_phrase_tokens": 6,
        # Demo captions: at most 3 entities, 9 attributes, 2 relations: never over budget.
        "entity_budget": 3.0, "attribute_budget": 9.0, "relation_budget": 2.0,
    },
    "data": {"dataset": "demo"},
    # Steps per epoch 2: warm-up over steps 0-1, decay x0.1 from step 4 (epoch 2).
    "train": {"batch_size": 20, "learning_rate": BASE_RATE, "warmup_epochs": 1, "decay_epochs": [2],
              "eval_batch_size": 4},
}


def _phrases(graph):
    for entity in graph.entities:
        yield entity.name
        yield from entity.attributes
    for relation in graph.relations:
        yield relation.predicate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """40/10/10 scenes, the demo's own graphs (no parse), a vocabulary without tagging."""
    root = tmp_path_factory.mktemp("world")
    generate_demo_world(root, train_scenes=40, dev_scenes=10, test_scenes=10, feature_size=32, progress=False)
    (root / "scene_graphs").mkdir()
    for split in SPLITS:
        shutil.copy(root / f"{split}_caption_facts.jsonl", root / "scene_graphs" / f"{split}.jsonl")
    graphs = read_jsonl(root / "scene_graphs" / "train.jsonl")
    words = sorted({w for g in graphs for p in _phrases(g) for w in tokenize(p)} | {"and", "with"})
    Vocabulary([*SPECIAL_TOKENS, *words], {}, {}, []).save(root / "vocab.json")
    config = config_from_dict(TINY)
    config.train.run_eagerly = keras.backend.backend() == "tensorflow"
    save_config(config, root / "tiny.yaml")
    return root


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    status = cli.main(
        ["train", "--config", str(world / "tiny.yaml"), "--data", str(world), "--out", str(out),
         "--epochs", "1", "--steps-per-epoch", "2"]
    )
    first_history = json.loads((out / "history.json").read_text())
    config = run_config(None, out, epochs=2, resume=True)
    resumed = train(config, world, out, resume=True, verbose=0)
    return SimpleNamespace(out=out, status=status, first_history=first_history, resumed=resumed, config=config)


@pytest.fixture(scope="module")
def evaluated(run, world, tmp_path_factory):
    npz = tmp_path_factory.mktemp("embeddings") / "test.npz"
    capture = _Capture()
    with capture:
        status = cli.main(
            ["evaluate", "--run", str(run.out), "--data", str(world), "--split", "test",
             "--save-embeddings", str(npz)]
        )
    return SimpleNamespace(status=status, stdout=capture.text, npz=npz)


class _Capture:
    """stdout of a block (capsys is function-scoped; the fixture is not)."""

    def __enter__(self):
        import contextlib
        import io

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self.text = self._buffer.getvalue()


def _events(directory):
    """{tag: {step: value proto}} over every event file of a TensorBoard run."""
    found = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value
    return found


def _scalar(value):
    return float(tf.make_ndarray(value.tensor))


# ------------------------------------------------------------------ the run


def test_train_writes_the_run_directory(run, world):
    assert run.status == 0
    names = {p.name for p in run.out.iterdir()}
    assert {"config.yaml", "vocab.json", "best.weights.h5", "last.weights.h5", "best.json",
            "history.json", "logs", "backup"} <= names
    assert not [n for n in names if ".tmp-" in n]
    assert (run.out / "backup" / "training_metadata.json").is_file()
    vocabulary = Vocabulary.load(world / "vocab.json")
    assert Vocabulary.load(run.out / "vocab.json") == vocabulary
    saved = run_config(None, run.out, resume=True)  # config.yaml: resolved from the dataset
    assert saved.model.vocab_size == len(vocabulary) != config_from_dict(TINY).model.vocab_size
    assert saved.train.steps_per_epoch == 2


def test_resume_continues_from_the_last_epoch(run):
    history = json.loads((run.out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0] == run.first_history[0]  # the first call's epoch is kept as written
    assert run.resumed.epoch == [1]  # the resumed call ran epoch 1 only
    assert json.loads((run.out / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    # Optimizer state came back: 4 steps done, so the rate is past the decay at step 4.
    assert int(keras.ops.convert_to_numpy(run.resumed.model.optimizer.iterations)) == 4
    assert history[0]["learning_rate"] == pytest.approx(BASE_RATE)
    assert history[1]["learning_rate"] == pytest.approx(0.1 * BASE_RATE)


def test_epoch_logs_hold_every_loss_term_and_the_dev_retrieval(run):
    history = json.loads((run.out / "history.json").read_text())
    for record in history:
        for name in (*LOSS_TERMS, *(f"val_{m}" for m in RETRIEVAL)):
            assert np.isfinite(record[name]), name
        recalls = [record[f"val_{m}"] for m in RETRIEVAL[:-1]]
        assert record["val_rsum"] == pytest.approx(sum(recalls))
        assert all(0 <= r <= 100 for r in recalls)
    best = json.loads((run.out / "best.json").read_text())
    assert best["val_rsum"] == max(r["val_rsum"] for r in history)
    assert history[best["epoch"]]["val_rsum"] == best["val_rsum"]


def test_tensorboard_has_losses_rate_retrieval_and_the_picture_per_epoch(run):
    history = json.loads((run.out / "history.json").read_text())
    train_events = _events(run.out / "logs" / "train")
    for name in (*LOSS_TERMS, "learning_rate"):
        steps = train_events[f"epoch_{name}"]
        assert sorted(steps) == [0, 1]
        for record in history:
            assert _scalar(steps[record["epoch"]]) == pytest.approx(record[name], rel=1e-5)
    dev_events = _events(run.out / "logs" / "validation")
    for name in RETRIEVAL:
        steps = dev_events[f"epoch_{name}"]
        assert [_scalar(steps[e]) for e in (0, 1)] == pytest.approx([r[f"val_{name}"] for r in history])
    pictures = dev_events["dev_similarity"]
    assert sorted(pictures) == [0, 1]
    width, height, png = tf.make_ndarray(pictures[1].tensor)
    picture = tf.io.decode_png(png).numpy()
    assert (int(width), int(height)) == (100, 100)  # 10 dev images x 50 captions, 2 px per cell
    assert picture.shape == (100, 100, 3)


def test_optimizer_groups_are_the_image_tower_and_the_word_embeddings(run):
    model = run.resumed.model
    optimizer = model.optimizer
    assert isinstance(optimizer, GroupAdamW)
    assert optimizer.get_config()["groups"] == parameter_groups(model, run.config.train)
    groups = {}
    for variable in model.trainable_variables:
        groups.setdefault(optimizer.group_of(variable), []).append(variable.path)
    assert groups[0] == [v.path for v in model.region_encoder.trainable_variables]
    assert groups[1] == [model.phrase_encoder.word_embeddings.embeddings.path]
    assert all(p.split("/")[1] in ("phrase_encoder", "entity_composer", "relation_composer") for p in groups[None])


def test_a_second_fresh_train_into_the_run_is_refused(run, world, capsys):
    status = cli.main(["train", "--config", str(world / "tiny.yaml"), "--data", str(world), "--out", str(run.out)])
    assert status == 1
    assert "exists and is not empty; pass --resume" in capsys.readouterr().err


# --------------------------------------------------------------- evaluation


def test_split_embeddings_match_the_towers_called_directly(run, world):
    model, config = run.resumed.model, run.config
    vocabulary = Vocabulary.load(run.out / "vocab.json")
    split = load_split(world, "test", config, vocabulary=vocabulary)
    encoder = GraphEncoder(vocabulary, config.model, config.augment)
    embedder = SplitEmbedder(model, config, batch_size=4)
    embedded = embedder.embed(split, encoder)  # 10 = 4 + 4 + 2 (padded)
    regions = split.features.read_many(np.arange(10))
    images = model.encode_images({"regions": regions, "region_counts": np.full(10, 36, np.int32)})
    arrays = encoder.encode_batch(split.graphs)
    captions = model.encode_captions({name: arrays[name] for name in CAPTION_INPUTS})["caption"]
    np.testing.assert_allclose(embedded.images, keras.ops.convert_to_numpy(images), atol=2e-5)
    np.testing.assert_allclose(embedded.captions, keras.ops.convert_to_numpy(captions), atol=2e-5)
    # Captions given as arrays (the demo's probe negatives) take the same tower.
    tensors = {name: arrays[name][:7] for name in CAPTION_INPUTS}  # 7 = 4 + 3 (padded)
    np.testing.assert_allclose(embedder.embed_caption_tensors(tensors), embedded.captions[:7], atol=1e-6)


def test_evaluate_prints_the_table_row_of_the_saved_embeddings(evaluated):
    assert evaluated.status == 0
    with np.load(evaluated.npz) as data:
        images, captions = data["images"], data["captions"]
    assert images.shape == (10, 32) and captions.shape == (50, 32)
    np.testing.assert_allclose(np.linalg.norm(captions, axis=1), 1.0, rtol=1e-5)
    header, row = evaluated.stdout.strip().splitlines()
    assert header.split()[0] == "protocol"
    assert row == "10 images  " + format_table_row(retrieval_metrics(images @ captions.T))
    assert re.fullmatch(r"10 images  ([\d.]+ ){3}/ ([\d.]+ ){3}/ [\d.]+", row)


def test_evaluate_reads_the_authors_checkpoint(world, tmp_path, capsys):
    pytest.importorskip("torch")
    from tests.reference_cora import random_state_dict, reference_forward, save_release_checkpoint

    words = Vocabulary.load(world / "vocab.json").idx2word
    release_vocab = tmp_path / "vocab.json"  # the release format: no linguistic lists
    release_vocab.write_text(json.dumps(
        {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": dict(enumerate(words)), "idx": len(words)}
    ))
    state_dict = random_state_dict(len(words), embed_size=32, word_dim=16, region_feature_size=32)
    save_release_checkpoint(state_dict, str(tmp_path / "release.pth"))
    config = config_from_dict({**TINY, "model": {**TINY["model"], "num_heads": 16, "gpo_hidden": 32}})
    config.train.run_eagerly = keras.backend.backend() == "tensorflow"
    save_config(config, tmp_path / "release.yaml")
    npz = tmp_path / "test.npz"
    status = cli.main(
        ["evaluate", "--checkpoint", str(tmp_path / "release.pth"), "--config", str(tmp_path / "release.yaml"),
         "--vocab", str(release_vocab), "--data", str(world), "--split", "test", "--save-embeddings", str(npz)]
    )
    assert status == 0
    with np.load(npz) as data:
        images, captions = data["images"], data["captions"]
    assert capsys.readouterr().out.splitlines()[1] == "10 images  " + format_table_row(
        retrieval_metrics(images @ captions.T)
    )
    split = load_split(world, "test", config)
    encoder = GraphEncoder(Vocabulary.load(world / "vocab.json"), config.model, config.augment)
    inputs = {name: value for name, value in encoder.encode_batch(split.graphs).items() if name in CAPTION_INPUTS}
    inputs.update(regions=split.features.read_many(np.arange(10)), region_counts=np.full(10, 36, np.int32))
    reference = reference_forward(state_dict, inputs, num_heads=16, max_relations=config.model.max_relations)
    np.testing.assert_allclose(images, reference["image"], atol=1e-4)
    np.testing.assert_allclose(captions, reference["caption"], atol=1e-4)


def test_image_grouped_training_runs_whole_epochs_of_groups(world, tmp_path):
    # 40 scenes, 5 captions each in one group: 200 captions, 10 steps of 20
    # captions (4 images) per epoch.
    config = config_from_dict({**TINY, "train": {**TINY["train"], "captions_per_image": 5}})
    config.train.run_eagerly = keras.backend.backend() == "tensorflow"
    config.train.epochs = 1
    history = train(config, world, tmp_path / "grouped", verbose=0)
    assert run_config(None, tmp_path / "grouped", resume=True).train.steps_per_epoch is None
    assert int(keras.ops.convert_to_numpy(history.model.optimizer.iterations)) == 10
    for name in LOSS_TERMS:
        assert np.isfinite(history.history[name][0]), name
    assert 0.0 <= history.history["val_rsum"][0] <= 600.0
