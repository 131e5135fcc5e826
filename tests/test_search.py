"""Tests of search: ranking, entity phrases, the embedding cache, the command."""

import dataclasses
import shutil

import keras
import numpy as np
import pytest
from tiny_run import SPLIT, TINY_CONFIG, split_graphs, tiny_vocabulary, write_run, write_split

from cora_keras import search as search_module
from cora_keras.cli import main
from cora_keras.config import AugmentConfig, config_from_dict
from cora_keras.inputs import CAPTION_INPUTS
from cora_keras.run import BEST_WEIGHTS_FILE
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity
from cora_keras.search import (
    Hit,
    SearchIndex,
    SplitSearch,
    cache_path,
    entity_phrase,
    load_cached_index,
    save_index,
    top_captions,
    top_entities,
    top_images,
)


def _unit_rows(rng, n, d=8):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _planted_index():
    """Random unit embeddings with image 1 == caption 7 == entity 2, and
    image 2 == caption 12."""
    rng = np.random.default_rng(0)
    images, captions, entities = _unit_rows(rng, 4), _unit_rows(rng, 20), _unit_rows(rng, 6)
    captions[7] = images[1]
    entities[2] = images[1]
    images[2] = captions[12]
    phrases = np.array([f"phrase {i}" for i in range(6)])
    return SearchIndex(images, captions, entities, phrases)


def test_planted_queries_find_their_item_first():
    index = _planted_index()
    assert top_captions(index, 1, 3)[0].index == 7
    assert top_captions(index, 1, 3)[0].score == pytest.approx(1.0, abs=1e-6)
    assert top_entities(index, 1, 2)[0].index == 2
    assert top_images(index, index.captions[12], 2)[0].index == 2


def test_hits_are_the_k_best_in_descending_order_and_k_is_capped():
    index = _planted_index()
    hits = top_captions(index, 0, 5)
    scores = index.captions @ index.images[0]
    assert [h.index for h in hits] == list(np.argsort(-scores)[:5])
    assert [h.score for h in hits] == pytest.approx(np.sort(scores)[::-1][:5].tolist(), abs=1e-6)
    assert len(top_entities(index, 0, 100)) == 6
    message = r"image 4 is not an image index of the split, in \[0, 4\)"
    with pytest.raises(ValueError, match=message):
        top_captions(index, 4, 1)


def test_one_entity_batches_fit_the_phrase_budgets():
    model = config_from_dict(TINY_CONFIG).model  # E = 4, A = 2, budgets 6 per caption
    assert search_module._one_entity_batch_size(model, 16) == 16
    # Attributes: 2 B <= ceil(0.5 B) + E A = ceil(0.5 B) + 8 holds up to B = 5.
    model.attribute_budget = 0.5
    assert search_module._one_entity_batch_size(model, 16) == 5
    model.entity_budget = 0.0
    model.attribute_budget = 0.0
    assert search_module._one_entity_batch_size(model, 16) == 4  # B <= E


def test_entity_phrase():
    assert entity_phrase(Entity("cube", ["large", "red", "metal"]), 2) == "cube (large, red)"
    assert entity_phrase(Entity("tree trunk", []), 2) == "tree trunk"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    config, model, _ = write_run(root / "run", seed=1)
    write_split(root / "data", config)
    return root, config, model


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_index_holds_the_models_embeddings_and_distinct_entity_phrases(world):
    root, config, model = world
    session = SplitSearch(root / "run", root / "data", SPLIT)
    index = session.index
    regions = np.load(root / "data" / f"{SPLIT}_ims.npy")
    counts = np.full(len(regions), config.model.num_regions, dtype=np.int32)
    images = model.encode_images({"regions": regions, "region_counts": counts}, training=False)
    np.testing.assert_allclose(index.images, _numpy(images), atol=1e-5)

    encoder = GraphEncoder(tiny_vocabulary(), config.model, AugmentConfig())
    encoded = encoder.encode_batch(split_graphs())
    out = model.encode_captions({n: encoded[n] for n in CAPTION_INPUTS}, training=False)
    np.testing.assert_allclose(index.captions, _numpy(out["caption"]), atol=1e-5)

    phrases = index.entity_phrases.tolist()
    # Caption 0's fifth entity ("red sphere") is past E = 4: the model never sees it.
    assert phrases == [
        "cube (large, red)", "sphere (small, metal)", "cone (blue)", "cube (green)", "cube (red)",
        "cube (large)", "sphere (metal)", "cube (red, large)", "cube", "sphere (blue)",
        "sphere (small, blue)", "cone (green)", "sphere", "cone", "cone (small, green)",
    ]
    # An entity phrase embeds as it does inside its caption: caption 0 slot 1, caption 6 slot 1.
    entities = _numpy(out["entities"])
    for phrase, caption, slot in [("sphere (small, metal)", 0, 1), ("cone (green)", 6, 1)]:
        row = phrases.index(phrase)
        np.testing.assert_allclose(index.entities[row], entities[caption, slot], atol=1e-5)


def test_cache_is_reused_and_rebuilt_when_the_weights_change(world, monkeypatch):
    root, _, _ = world
    first = SplitSearch(root / "run", root / "data", SPLIT).index
    assert cache_path(root / "run", SPLIT).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("the cached index was not used")

    with monkeypatch.context() as patch:
        patch.setattr(search_module, "compute_index", fail)
        cached = SplitSearch(root / "run", root / "data", SPLIT).index
    for field in dataclasses.fields(SearchIndex):
        np.testing.assert_array_equal(getattr(cached, field.name), getattr(first, field.name))

    changed = root / "changed"
    shutil.copytree(root / "run", changed)  # the cache comes along
    _, other, _ = write_run(root / "other", seed=2)
    other.save_weights(changed / BEST_WEIGHTS_FILE)
    calls = []
    real = search_module.compute_index
    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "compute_index", counted)
    rebuilt = SplitSearch(changed, root / "data", SPLIT).index
    assert calls == [1]
    assert not np.allclose(rebuilt.images, first.images, atol=1e-3)
    assert rebuilt.entity_phrases.tolist() == first.entity_phrases.tolist()


def test_a_stale_or_corrupt_cache_file_reads_as_absent(tmp_path):
    index = _planted_index()
    path = tmp_path / "cache" / "test.npz"
    save_index(path, "key-1", index)
    loaded = load_cached_index(path, "key-1")
    for field in dataclasses.fields(SearchIndex):
        np.testing.assert_array_equal(getattr(loaded, field.name), getattr(index, field.name))
    assert load_cached_index(path, "key-2") is None
    path.write_bytes(b"not an npz file")
    assert load_cached_index(path, "key-1") is None
    assert load_cached_index(tmp_path / "missing.npz", "key-1") is None


class _GraphsOf:
    """Stands in for the spaCy parser: returns the split's graph of a caption."""

    def parse_many(self, captions):
        graphs = {g.caption: g for g in split_graphs()}
        return [graphs[c] for c in captions]


def test_text_query_embeds_like_the_same_caption_of_the_split(world):
    root, _, _ = world
    session = SplitSearch(root / "run", root / "data", SPLIT)
    caption = split_graphs()[6].caption
    embedding = session.embed_text(caption, _GraphsOf())
    np.testing.assert_allclose(embedding, session.index.captions[6], atol=1e-5)
    report = session.text_report(caption, 2, _GraphsOf()).splitlines()
    assert report[:2] == [f'text: "{caption}"', f"top 2 images of {SPLIT}:"]
    assert len(report) == 4 and report[2].split()[0] == "1" and report[3].split()[0] == "2"


def test_image_report_ranks_planted_items_first_and_marks_the_images_own(world):
    root, _, _ = world
    session = SplitSearch(root / "run", root / "data", SPLIT)
    index = session.index
    images = index.images.copy()
    images[1] = index.captions[7]  # image 1 (captions 5-9) scores 1.0 with its caption 7
    session.index = dataclasses.replace(index, images=images)
    lines = session.image_report(1, 3).splitlines()
    assert lines[0] == f"image 1 of {SPLIT} (* = from its own captions)"
    assert lines[1] == "top 3 captions:"
    assert lines[2].split()[:5] == ["1", "*", "1.0000", "caption", "7"]
    assert lines[5] == "top 3 entity phrases:"
    assert len(lines) == 9


def test_search_command_prints_the_ranked_lists(world, capsys):
    root, _, _ = world
    where = ["--run", str(root / "run"), "--data", str(root / "data")]
    status = main(["search", *where, "--split", SPLIT, "--image", "2", "--top", "2"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"image 2 of {SPLIT} (* = from its own captions)"
    assert [line.split()[0] for line in lines[2:4] + lines[5:7]] == ["1", "2", "1", "2"]
    assert main(["search", *where, "--image", "9"]) == 1
    assert "image 9 is not an image index" in capsys.readouterr().err
