"""Protocol choice, table rows, embeddings files and the dev similarity picture.

Embedding a split with a model is tested on a trained run in
`test_cli_train.py` (one model build per module keeps the suite fast).
"""

import numpy as np
import pytest

from cora_keras import retrieval
from cora_keras.evaluation import (
    SplitEmbeddings,
    evaluate,
    format_results,
    protocol_metrics,
    similarity_picture,
)


def _embeddings(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, d)).astype(np.float32)
    captions = np.repeat(images, 5, axis=0) + 0.8 * rng.standard_normal((5 * n, d)).astype(np.float32)
    return images, captions


def test_flickr30k_and_demo_use_the_1k_protocol_at_1000_images():
    images, captions = _embeddings(1000)
    expected = retrieval.flickr30k_1k(images, captions)
    for dataset in ("f30k", "demo"):
        assert protocol_metrics(dataset, images, captions) == {"flickr30k_1k": expected}


def test_coco_reports_the_1k_folds_and_the_whole_5k(monkeypatch):
    # Same code path as 5,000 images, at 50 (folds of 10) to stay small.
    monkeypatch.setitem(retrieval.PROTOCOLS, "coco_1k", (50, 10))
    monkeypatch.setitem(retrieval.PROTOCOLS, "coco_5k", (50, 50))
    images, captions = _embeddings(50)
    results = protocol_metrics("coco", images, captions)
    assert list(results) == ["coco_1k", "coco_5k"]
    folds = [
        retrieval.retrieval_metrics(images[s : s + 10] @ captions[5 * s : 5 * s + 50].T)
        for s in range(0, 50, 10)
    ]
    assert results["coco_1k"].rsum == pytest.approx(np.mean([f.rsum for f in folds]))
    assert results["coco_5k"] == retrieval.retrieval_metrics(images @ captions.T)


def test_other_sizes_are_evaluated_whole():
    images, captions = _embeddings(12)
    results = protocol_metrics("coco", images, captions)
    assert results == {"12 images": retrieval.retrieval_metrics(images @ captions.T)}


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="data.dataset = 'vg': no protocol known"):
        protocol_metrics("vg", *_embeddings(3))


def test_results_print_one_paper_row_per_protocol():
    metrics = retrieval.RetrievalMetrics(82.3, 96.1, 98.0, 1.0, 2.0, 63.0, 87.4, 92.8, 1.0, 3.0, 519.6)
    lines = format_results({"flickr30k_1k": metrics}).splitlines()
    assert lines[0].split()[:2] == ["protocol", "image->text"]
    assert lines[1] == "flickr30k_1k  82.3 96.1 98.0 / 63.0 87.4 92.8 / 519.6"


def test_embeddings_round_trip_through_npz(tmp_path):
    images, captions = _embeddings(4)
    SplitEmbeddings(images, captions).save(tmp_path / "e.npz")
    loaded = SplitEmbeddings.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.captions, captions)
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match=r"bad\.npz: array 'captions' is missing"):
        SplitEmbeddings.load(tmp_path / "bad.npz")


def test_picture_frames_each_images_own_captions_on_the_diagonal():
    images = np.eye(3, dtype=np.float32)
    captions = np.repeat(images, 5, axis=0)  # own captions: similarity 1, others 0
    picture = similarity_picture(images, captions, scale=2)
    assert picture.shape == (30, 30, 3) and picture.dtype == np.uint8
    red, yellow, purple = [255, 40, 40], [253, 231, 37], [68, 1, 84]
    for i in range(3):
        block = picture[10 * i : 10 * i + 10, 10 * i : 10 * i + 10]
        assert (block[0] == red).all() and (block[:, -1] == red).all()
        assert (block[1:-1, 1:-1] == yellow).all()  # most similar
    assert (picture[1:9, 11:19] == purple).all()  # image 0 x captions of image 1: least similar


def test_picture_shows_at_most_count_images_with_intermediate_colours():
    images, captions = _embeddings(80)
    picture = similarity_picture(images, captions, count=50, scale=1)
    assert picture.shape == (250, 250, 3)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 100


def test_evaluate_needs_exactly_one_model_source(tmp_path):
    with pytest.raises(ValueError, match="either a run"):
        evaluate(tmp_path, "test")
    with pytest.raises(ValueError, match="either a run"):
        evaluate(tmp_path, "test", run_dir=tmp_path, checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="--checkpoint needs --config and --vocab"):
        evaluate(tmp_path, "test", checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="--config and --vocab go with --checkpoint"):
        evaluate(tmp_path, "test", run_dir=tmp_path, vocab_path=tmp_path / "vocab.json")
