"""Region feature stores: reads, layout equivalence, and every error."""

import os

import numpy as np
import pytest

from cora_keras.data import features
from cora_keras.data.features import (
    FeatureError,
    PerImageFeatures,
    PrecompFeatures,
    check_finite,
    open_features,
)


def _array(n=7, regions=3, size=4, seed=0):
    return (
        np.random.default_rng(seed)
        .standard_normal((n, regions, size))
        .astype(np.float32)
    )


def _write_per_image(root, array, part_size):
    for i, image in enumerate(array):
        part = root / f"part{i // part_size}"
        part.mkdir(parents=True, exist_ok=True)
        np.save(part / f"{i}.npy", image)


def test_precomp_is_memory_mapped_and_reads_in_the_order_given(tmp_path):
    array = _array()
    np.save(tmp_path / "test_ims.npy", array)
    store = open_features(tmp_path, "test", "precomp", (3, 4))
    assert isinstance(store.array, np.memmap)
    assert len(store) == 7 and store.shape == (7, 3, 4)
    np.testing.assert_array_equal(store.read(5), array[5])
    got = store.read_many([4, 1, 4, 0])
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_array_equal(got, array[[4, 1, 4, 0]])
    np.testing.assert_array_equal(store.read_many([1, 2, 6]), array[[1, 2, 6]])


def test_per_image_path_uses_part_of_5000(tmp_path):
    root = tmp_path / "region_feats" / "train"
    _write_per_image(root, _array(n=1), part_size=5000)
    store = PerImageFeatures(root)
    assert store.path_of(4999) == root / "part0" / "4999.npy"
    assert store.path_of(5000) == root / "part1" / "5000.npy"
    assert store.path_of(12345) == root / "part2" / "12345.npy"


def test_per_image_layout_reads_like_precomp(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "PER_IMAGE_PART_SIZE", 3)
    array = _array(n=8)
    np.save(tmp_path / "train_ims.npy", array)
    _write_per_image(tmp_path / "region_feats" / "train", array, part_size=3)
    assert sorted(os.listdir(tmp_path / "region_feats" / "train")) == [
        "part0",
        "part1",
        "part2",
    ]
    precomp = open_features(tmp_path, "train", "precomp", (3, 4))
    per_image = open_features(tmp_path, "train", "per_image", (3, 4))
    assert per_image.shape == precomp.shape == (8, 3, 4)
    for indices in ([0], [7, 3, 3, 0], list(range(8))):
        np.testing.assert_array_equal(
            per_image.read_many(indices), precomp.read_many(indices)
        )
    assert PerImageFeatures(tmp_path / "region_feats" / "train").shape == (8, 3, 4)


def test_missing_files_name_the_path(tmp_path, monkeypatch):
    with pytest.raises(
        FeatureError, match=r"test_ims\.npy: region feature file not found"
    ):
        open_features(tmp_path, "test", "precomp")
    with pytest.raises(FeatureError, match=r"region_feats/test: region feature folder"):
        open_features(tmp_path, "test", "per_image")
    monkeypatch.setattr(features, "PER_IMAGE_PART_SIZE", 3)
    root = tmp_path / "region_feats" / "test"
    _write_per_image(root, _array(n=6), part_size=3)
    os.remove(root / "part1" / "4.npy")
    with pytest.raises(
        FeatureError, match=r"part1/4\.npy: region feature file not found"
    ):
        PerImageFeatures(root)


def test_per_image_file_removed_after_opening_names_the_path(tmp_path):
    root = tmp_path / "region_feats" / "dev"
    _write_per_image(root, _array(n=2), part_size=5000)
    store = PerImageFeatures(root, (3, 4))
    os.remove(root / "part0" / "1.npy")
    with pytest.raises(
        FeatureError, match=r"part0/1\.npy: region feature file not found"
    ):
        store.read(1)


def test_misplaced_per_image_file(tmp_path):
    root = tmp_path / "region_feats" / "dev"
    (root / "part1").mkdir(parents=True)
    np.save(root / "part1" / "0.npy", _array(n=1)[0])
    with pytest.raises(FeatureError, match=r"part1/0\.npy: image 0 belongs in part0"):
        PerImageFeatures(root)


def test_wrong_dtype(tmp_path):
    np.save(tmp_path / "dev_ims.npy", _array().astype(np.float64))
    with pytest.raises(
        FeatureError, match=r"dev_ims\.npy: dtype float64, expected float32"
    ):
        open_features(tmp_path, "dev", "precomp")
    root = tmp_path / "region_feats" / "dev"
    _write_per_image(root, _array(n=2).astype(np.float16), part_size=5000)
    with pytest.raises(
        FeatureError, match=r"part0/0\.npy: dtype float16, expected float32"
    ):
        PerImageFeatures(root)


def test_wrong_shape_names_file_expected_and_found(tmp_path):
    np.save(tmp_path / "a_ims.npy", np.zeros((5, 12), np.float32))
    with pytest.raises(
        FeatureError,
        match=r"a_ims\.npy: shape \(5, 12\), expected \(n_images, N, F\) = \(n, 3, 4\)",
    ):
        open_features(tmp_path, "a", "precomp", (3, 4))
    np.save(tmp_path / "b_ims.npy", np.zeros((5, 36, 4), np.float32))
    with pytest.raises(
        FeatureError, match=r"b_ims\.npy: shape \(5, 36, 4\), expected .* = \(n, 3, 4\)"
    ):
        open_features(tmp_path, "b", "precomp", (3, 4))
    root = tmp_path / "region_feats" / "c"
    _write_per_image(root, _array(n=3), part_size=5000)
    np.save(root / "part0" / "2.npy", np.zeros((3, 5), np.float32))
    store = PerImageFeatures(root, (3, 4))
    with pytest.raises(
        FeatureError,
        match=r"part0/2\.npy: shape \(3, 5\), expected \(N, F\) = \(3, 4\)",
    ):
        store.read(2)


def test_not_an_npy_file(tmp_path):
    (tmp_path / "x_ims.npy").write_bytes(b"not numpy")
    with pytest.raises(FeatureError, match=r"x_ims\.npy: not a readable \.npy file"):
        open_features(tmp_path, "x", "precomp")


def test_out_of_range_index(tmp_path):
    np.save(tmp_path / "t_ims.npy", _array())
    store = PrecompFeatures(tmp_path / "t_ims.npy")
    with pytest.raises(IndexError, match=r"image index 7 is out of range \[0, 7\)"):
        store.read_many([0, 7])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_caught_when_read_and_by_the_full_scan(tmp_path, bad):
    array = _array(n=10)
    array[6, 2, 1] = bad
    array[8, 0, 0] = bad
    np.save(tmp_path / "t_ims.npy", array)
    store = PrecompFeatures(tmp_path / "t_ims.npy")
    np.testing.assert_array_equal(store.read_many([0, 5, 7]), array[[0, 5, 7]])
    with pytest.raises(
        FeatureError, match=r"t_ims\.npy \[image 6\]: image 6 has NaN or Inf"
    ):
        store.read_many([7, 6, 8])
    for chunk in (1, 3, 100):
        with pytest.raises(FeatureError, match=r"image 6 has NaN or Inf"):
            check_finite(PrecompFeatures(tmp_path / "t_ims.npy"), chunk=chunk)


def test_full_scan_of_finite_store_passes_and_checks_chunk(tmp_path):
    np.save(tmp_path / "t_ims.npy", _array(n=10))
    store = PrecompFeatures(tmp_path / "t_ims.npy")
    check_finite(store, chunk=4)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        check_finite(store, chunk=0)


def test_per_image_non_finite_names_the_file(tmp_path):
    array = _array(n=3)
    array[1, 0, 0] = np.nan
    root = tmp_path / "region_feats" / "t"
    _write_per_image(root, array, part_size=5000)
    with pytest.raises(FeatureError, match=r"part0/1\.npy: image 1 has NaN or Inf"):
        check_finite(PerImageFeatures(root))
