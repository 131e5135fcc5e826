"""A split on disk: consistency checks, graph cache, vocabulary."""

import numpy as np
import pytest

from cora_keras.config import Config
from cora_keras.data import datasets
from cora_keras.data.datasets import DatasetError, load_split
from cora_keras.data.features import FeatureError
from cora_keras.scene_graph.schema import (
    Entity,
    Relation,
    SceneGraph,
    read_jsonl,
    write_jsonl,
)
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary

WORDS = "dog cat ball tree man woman car hat".split()


def fake_parse(captions, processes=1, batch_size=256, progress=False):
    """Stand-in parser: every word an entity, consecutive words related."""
    graphs = []
    for caption in captions:
        words = caption.split()
        graphs.append(
            SceneGraph(
                caption,
                [Entity(word) for word in words],
                [Relation(i, "near", i + 1) for i in range(len(words) - 1)],
            )
        )
    return graphs


@pytest.fixture
def parses(monkeypatch):
    """Counts the captions the (stand-in) parser is asked to parse."""
    calls = []

    def parse(captions, **kwargs):
        calls.append(list(captions))
        return fake_parse(captions, **kwargs)

    monkeypatch.setattr(datasets, "parse_captions", parse)
    return calls


def _config():
    config = Config()
    config.model.num_regions = 3
    config.model.region_feature_size = 4
    return config


def _captions(n_images, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 3)) for _ in range(5 * n_images)]


def _write(data_dir, split, n_images, captions=None):
    captions = captions if captions is not None else _captions(n_images)
    (data_dir / f"{split}_caps.txt").write_text(
        "\n".join(captions) + "\n", encoding="utf-8"
    )
    features = np.random.default_rng(1).random((n_images, 3, 4)).astype(np.float32)
    np.save(data_dir / f"{split}_ims.npy", features)
    return captions, features


def _write_vocab(data_dir):
    Vocabulary([*SPECIAL_TOKENS, *WORDS, "near"], {}, {}, []).save(
        data_dir / "vocab.json"
    )


def test_load_split_parses_once_then_uses_the_cache(tmp_path, parses):
    captions, features = _write(tmp_path, "test", 2)
    _write_vocab(tmp_path)
    split = load_split(tmp_path, "test", _config())
    assert parses == [captions]
    assert split.name == "test" and split.num_images == 2 and split.num_captions == 10
    assert split.captions == captions
    assert [g.caption for g in split.graphs] == captions
    np.testing.assert_array_equal(split.features.read_many([1, 0]), features[[1, 0]])
    assert read_jsonl(tmp_path / "scene_graphs" / "test.jsonl") == split.graphs
    digest = (tmp_path / "scene_graphs" / "test.sha256").read_text().split()
    assert digest == [datasets.file_sha256(tmp_path / "test_caps.txt"), "test_caps.txt"]

    again = load_split(tmp_path, "test", _config())
    assert len(parses) == 1
    assert again.graphs == split.graphs


def test_parser_processes_come_from_the_config(tmp_path, monkeypatch):
    seen = []

    def parse(captions, processes=1, **kwargs):
        seen.append(processes)
        return fake_parse(captions)

    monkeypatch.setattr(datasets, "parse_captions", parse)
    _write(tmp_path, "test", 1)
    _write(tmp_path, "dev", 1)
    _write_vocab(tmp_path)
    config = _config()
    config.data.parse_processes = 3
    load_split(tmp_path, "test", config)
    load_split(tmp_path, "dev", config, parse_processes=2)
    assert seen == [3, 2]
    config.data.parse_processes = 0
    with pytest.raises(ValueError, match=r"data.parse_processes = 0: must be >= 1"):
        load_split(tmp_path, "test", config)


def test_changed_captions_are_reparsed(tmp_path, parses):
    captions, _ = _write(tmp_path, "dev", 2)
    _write_vocab(tmp_path)
    load_split(tmp_path, "dev", _config())
    changed = captions[:3] + ["man hat car"] + captions[4:]
    _write(tmp_path, "dev", 2, changed)
    split = load_split(tmp_path, "dev", _config())
    assert parses == [captions, changed]
    assert split.graphs[3].caption == "man hat car"
    assert (
        read_jsonl(tmp_path / "scene_graphs" / "dev.jsonl")[3].caption == "man hat car"
    )


def test_user_graphs_without_hash_are_used_as_they_are(tmp_path, parses):
    captions, _ = _write(tmp_path, "test", 1)
    _write_vocab(tmp_path)
    graphs = [SceneGraph(c, [Entity("thing", ["given"])]) for c in captions]
    (tmp_path / "scene_graphs").mkdir()
    write_jsonl(graphs, tmp_path / "scene_graphs" / "test.jsonl")
    split = load_split(tmp_path, "test", _config())
    assert parses == []
    assert split.graphs == graphs
    assert not (tmp_path / "scene_graphs" / "test.sha256").exists()


def test_user_graphs_out_of_step_name_the_first_differing_line(tmp_path, parses):
    captions, _ = _write(tmp_path, "test", 1)
    _write_vocab(tmp_path)
    (tmp_path / "scene_graphs").mkdir()
    graphs_path = tmp_path / "scene_graphs" / "test.jsonl"
    shifted = fake_parse(captions[:2] + captions[3:] + ["dog dog dog"])
    write_jsonl(shifted, graphs_path)
    with pytest.raises(
        DatasetError, match=r"test\.jsonl: graphs out of step with captions at line 3"
    ):
        load_split(tmp_path, "test", _config())
    write_jsonl(fake_parse(captions[:4]), graphs_path)
    with pytest.raises(
        DatasetError,
        match=r"graphs out of step with captions at line 5: "
        r"4 graphs for the 5 captions of .*test_caps\.txt",
    ):
        load_split(tmp_path, "test", _config())
    assert parses == []


def test_caption_count_must_be_five_per_image(tmp_path, parses):
    _write(tmp_path, "test", 3, _captions(2) + ["dog cat"])
    _write_vocab(tmp_path)
    with pytest.raises(
        DatasetError,
        match=r"test_caps\.txt holds 11 captions but .*test_ims\.npy holds 3 images; "
        r"expected 5 captions per image \(15\)",
    ):
        load_split(tmp_path, "test", _config())
    assert parses == []


def test_empty_caption_and_missing_captions_file(tmp_path, parses):
    with pytest.raises(DatasetError, match=r"test_caps\.txt: captions file not found"):
        load_split(tmp_path, "test", _config())
    captions = _captions(1)
    captions[2] = "  "
    _write(tmp_path, "test", 1, captions)
    with pytest.raises(DatasetError, match=r"test_caps\.txt:3: empty caption"):
        load_split(tmp_path, "test", _config())


def test_feature_shape_comes_from_the_config(tmp_path, parses):
    _write(tmp_path, "test", 1)
    _write_vocab(tmp_path)
    config = _config()
    config.model.region_feature_size = 2048
    with pytest.raises(
        FeatureError,
        match=r"test_ims\.npy: shape \(1, 3, 4\), expected .*\(n, 3, 2048\)",
    ):
        load_split(tmp_path, "test", config)


def test_per_image_layout_from_the_config(tmp_path, parses):
    _, features = _write(tmp_path, "test", 2)
    _write_vocab(tmp_path)
    for i, image in enumerate(features):
        (tmp_path / "region_feats" / "test" / "part0").mkdir(
            parents=True, exist_ok=True
        )
        np.save(tmp_path / "region_feats" / "test" / "part0" / f"{i}.npy", image)
    (tmp_path / "test_ims.npy").unlink()
    config = _config()
    config.data.features = "per_image"
    split = load_split(tmp_path, "test", config)
    np.testing.assert_array_equal(split.features.read_many([0, 1]), features)


def test_scan_features_finds_nan_up_front(tmp_path, parses):
    _write(tmp_path, "test", 2)
    _write_vocab(tmp_path)
    features = np.load(tmp_path / "test_ims.npy")
    features[1, 2, 3] = np.nan
    np.save(tmp_path / "test_ims.npy", features)
    split = load_split(tmp_path, "test", _config())
    with pytest.raises(FeatureError, match="image 1 has NaN or Inf"):
        split.features.read(1)
    with pytest.raises(FeatureError, match="image 1 has NaN or Inf"):
        load_split(tmp_path, "test", _config(), scan_features=True)


def test_vocabulary_is_built_from_the_train_split_when_missing(
    tmp_path, parses, monkeypatch
):
    builds = []

    def build(cls, graphs, min_count=1):
        """Stand-in for Vocabulary.build without spaCy's word lists."""
        builds.append((graphs, min_count))
        words = sorted({e.name for g in graphs for e in g.entities} | {"near"})
        return cls([*SPECIAL_TOKENS, *words], {}, {}, [])

    monkeypatch.setattr(Vocabulary, "build", classmethod(build))
    train_captions = ["dog cat ball"] * 5
    _write(tmp_path, "train", 1, train_captions)
    _write(tmp_path, "test", 1, ["zebra tiger lion"] * 5)
    config = _config()
    config.data.vocab_min_count = 3
    split = load_split(tmp_path, "test", config)
    assert parses == [["zebra tiger lion"] * 5, train_captions]
    assert builds == [(fake_parse(train_captions), 3)]
    assert (tmp_path / "vocab.json").is_file()
    assert (tmp_path / "scene_graphs" / "train.jsonl").is_file()
    for word in ("dog", "cat", "ball", "near"):
        assert word in split.vocabulary.word2idx
    assert "zebra" not in split.vocabulary.word2idx
    assert Vocabulary.load(tmp_path / "vocab.json") == split.vocabulary
    train = load_split(tmp_path, "train", config)
    assert len(parses) == 2 and len(builds) == 1
    assert train.vocabulary == split.vocabulary


def test_vocabulary_missing_without_train_captions(tmp_path, parses):
    _write(tmp_path, "test", 1)
    with pytest.raises(
        DatasetError, match=r"vocab\.json: vocabulary not found, and .*train_caps\.txt"
    ):
        load_split(tmp_path, "test", _config())


def test_train_split_builds_the_vocabulary_from_its_own_graphs(
    tmp_path, parses, monkeypatch
):
    builds = []

    def build(cls, graphs, min_count=1):
        builds.append(graphs)
        return cls([*SPECIAL_TOKENS, "dog"], {}, {}, [])

    monkeypatch.setattr(Vocabulary, "build", classmethod(build))
    _write(tmp_path, "train", 1)
    split = load_split(tmp_path, "train", _config())
    assert len(parses) == 1 and builds == [split.graphs]
    assert split.vocabulary.idx2word[-1] == "dog"


def test_cache_with_matching_hash_but_wrong_line_count(tmp_path, parses):
    captions, _ = _write(tmp_path, "test", 1)
    _write_vocab(tmp_path)
    load_split(tmp_path, "test", _config())
    write_jsonl(fake_parse(captions[:4]), tmp_path / "scene_graphs" / "test.jsonl")
    with pytest.raises(
        DatasetError,
        match=r"test\.jsonl holds 4 graphs but .*test_caps\.txt holds 5 captions",
    ):
        load_split(tmp_path, "test", _config())
