"""Tests of cora_keras.retrieval against hand-computed cases and a sorting reference."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from cora_keras import retrieval
from cora_keras.retrieval import RetrievalMetrics

# ------------------------------------------------------ brute-force reference


def sorted_positions(row: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """1-based position of every candidate in a full sort of the row:
    descending score, positives before equal-score negatives, then by index."""
    order = np.lexsort((np.arange(row.size), ~positive, -row))
    positions = np.empty(row.size, dtype=np.int64)
    positions[order] = np.arange(1, row.size + 1)
    return positions


def reference_ranks(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, m = sims.shape
    owner = np.arange(m) // k
    i2t = np.array(
        [sorted_positions(sims[i], owner == i)[owner == i].min() for i in range(n)]
    )
    t2i = np.array(
        [
            sorted_positions(sims[:, j], np.arange(n) == owner[j])[owner[j]]
            for j in range(m)
        ]
    )
    return i2t, t2i


def reference_metrics(i2t: np.ndarray, t2i: np.ndarray) -> dict[str, float]:
    """The VSE++-style computation: 0-based ranks, medr = floor(median) + 1."""
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t - 1), ("t2i", t2i - 1)):
        for level in (1, 5, 10):
            hits = len(np.where(ranks < level)[0])
            out[f"{name}_r{level}"] = 100.0 * hits / len(ranks)
        out[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{name}_meanr"] = ranks.mean() + 1
    out["rsum"] = recall_sum(out)
    return out


def recall_sum(metrics: dict[str, float]) -> float:
    return sum(metrics[f"{d}_r{level}"] for d in ("i2t", "t2i") for level in (1, 5, 10))


def reference_entity(
    sims: np.ndarray, relevance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    best, ap = [], []
    for row, rel in zip(sims, relevance):
        hits = np.sort(sorted_positions(row, rel)[rel])
        best.append(hits[0])
        ap.append(np.mean(np.arange(1, hits.size + 1) / hits))
    return np.array(best), np.array(ap)


def tied_matrix(
    rng: np.random.Generator, shape: tuple[int, int], levels: int
) -> np.ndarray:
    """Scores on few levels (many exact ties), float32."""
    return rng.integers(0, levels, size=shape).astype(np.float32) / levels


# ------------------------------------------------------------- hand-computed

HAND_SIMS = np.array(
    [
        [0.1, 0.9, 0.2, 0.3, 0.4, 0.95, 0.6, 0.0, 0.0, 0.0],
        [0.8, 0.1, 0.1, 0.1, 0.1, 0.7, 0.6, 0.5, 0.4, 0.8],
    ]
)


def test_hand_case_ranks() -> None:
    # image 0: its best caption (0.9) is beaten by caption 5 (0.95) -> 2;
    # image 1: its best caption 9 (0.8) ties with caption 0 -> tie favours it -> 1.
    np.testing.assert_array_equal(retrieval.image_to_text_ranks(HAND_SIMS), [2, 1])
    # caption 0 prefers image 1, caption 5 image 0; caption 6 ties (0.6, 0.6) -> 1.
    np.testing.assert_array_equal(
        retrieval.text_to_image_ranks(HAND_SIMS), [2, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    )


def test_hand_case_metrics() -> None:
    metrics = retrieval.retrieval_metrics(HAND_SIMS)
    assert metrics == RetrievalMetrics(
        i2t_r1=50.0,
        i2t_r5=100.0,
        i2t_r10=100.0,
        i2t_medr=1.0,
        i2t_meanr=1.5,
        t2i_r1=80.0,
        t2i_r5=100.0,
        t2i_r10=100.0,
        t2i_medr=1.0,
        t2i_meanr=1.2,
        rsum=530.0,
    )
    assert list(metrics.as_dict()) == (
        "i2t_r1 i2t_r5 i2t_r10 i2t_medr i2t_meanr "
        "t2i_r1 t2i_r5 t2i_r10 t2i_medr t2i_meanr rsum".split()
    )
    row = retrieval.format_table_row(metrics)
    assert row == "50.0 100.0 100.0 / 80.0 100.0 100.0 / 530.0"


def test_captions_per_image_one_is_a_square_problem() -> None:
    sims = np.array([[0.9, 0.95, 0.1], [0.2, 0.3, 0.1], [0.5, 0.5, 0.5]])
    i2t = retrieval.image_to_text_ranks(sims, captions_per_image=1)
    t2i = retrieval.text_to_image_ranks(sims, captions_per_image=1)
    np.testing.assert_array_equal(i2t, [2, 1, 1])
    np.testing.assert_array_equal(t2i, [1, 3, 1])


# --------------------------------------------------- equality with reference


@pytest.mark.parametrize(
    ("n", "k", "levels"),
    [(1, 5, 3), (7, 5, 4), (30, 5, 1000), (25, 5, 6), (12, 3, 2), (40, 1, 5)],
)
def test_ranks_and_metrics_equal_sorting_reference(n: int, k: int, levels: int) -> None:
    rng = np.random.default_rng(n * 100 + k)
    sims = tied_matrix(rng, (n, k * n), levels)
    # Plant exact ties between each caption's score and an other image's score.
    for j in rng.choice(k * n, size=min(k * n, 10), replace=False):
        sims[rng.integers(n), j] = sims[j // k, j]
    i2t_ref, t2i_ref = reference_ranks(sims, k)
    np.testing.assert_array_equal(retrieval.image_to_text_ranks(sims, k), i2t_ref)
    np.testing.assert_array_equal(retrieval.text_to_image_ranks(sims, k), t2i_ref)
    got = retrieval.retrieval_metrics(sims, k).as_dict()
    want = reference_metrics(i2t_ref, t2i_ref)
    assert got == pytest.approx(want)


def test_ranks_do_not_depend_on_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = tied_matrix(np.random.default_rng(3), (9, 45), 5)
    owner = np.arange(45) // 5
    whole = retrieval.retrieval_metrics(sims)
    whole_entity = retrieval.image_to_entity_metrics(sims, owner)
    whole_top = retrieval.top_k(sims, 4)
    monkeypatch.setattr(retrieval, "_BLOCK_ELEMENTS", 50)  # one row per block
    assert retrieval.retrieval_metrics(sims) == whole
    assert retrieval.image_to_entity_metrics(sims, owner) == whole_entity
    np.testing.assert_array_equal(retrieval.top_k(sims, 4)[0], whole_top[0])


def test_accepts_keras_tensors_and_integer_scores() -> None:
    sims = tied_matrix(np.random.default_rng(4), (6, 30), 7)
    want = retrieval.retrieval_metrics(sims)
    assert retrieval.retrieval_metrics(keras.ops.convert_to_tensor(sims)) == want
    assert retrieval.retrieval_metrics((sims * 7).astype(np.int32)) == want


# ----------------------------------------------------------------- protocols


def embeddings(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, dim)).astype(np.float32)
    noise = rng.normal(scale=1.5, size=(5 * n, dim)).astype(np.float32)
    captions = np.repeat(images, 5, axis=0) + noise
    return images, captions


def test_coco_1k_is_the_mean_of_its_five_folds() -> None:
    images, captions = embeddings(5000, 4, seed=0)
    folds = [
        retrieval.retrieval_metrics(
            images[s : s + 1000] @ captions[5 * s : 5 * s + 5000].T
        )
        for s in range(0, 5000, 1000)
    ]
    got = retrieval.coco_1k(images, captions).as_dict()
    mean = {key: np.mean([fold.as_dict()[key] for fold in folds]) for key in got}
    assert got == pytest.approx(mean)
    assert got["rsum"] == pytest.approx(recall_sum(got))
    assert len({fold.i2t_r1 for fold in folds}) > 1  # the folds differ: a real mean


def test_flickr30k_1k_is_the_whole_matrix() -> None:
    images, captions = embeddings(1000, 4, seed=1)
    got = retrieval.flickr30k_1k(images, captions)
    assert got == retrieval.retrieval_metrics(images @ captions.T)
    assert retrieval.evaluate_protocol("flickr30k_1k", images, captions) == got


def test_coco_5k_uses_the_whole_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(retrieval.PROTOCOLS, "coco_5k", (20, 20))
    images, captions = embeddings(20, 3, seed=2)
    got = retrieval.coco_5k(images, captions)
    assert got == retrieval.retrieval_metrics(images @ captions.T)


def test_evaluate_folds_of_one_fold_equals_plain_metrics() -> None:
    images, captions = embeddings(12, 3, seed=5)
    one = retrieval.evaluate_folds(images, captions, 12)
    assert one == retrieval.retrieval_metrics(images @ captions.T)
    two = retrieval.evaluate_folds(images, captions, 6)
    halves = [
        retrieval.retrieval_metrics(images[s : s + 6] @ captions[5 * s : 5 * s + 30].T)
        for s in (0, 6)
    ]
    assert two == retrieval.mean_metrics(halves)


# ---------------------------------------------------------------- validation


def test_sims_shape_error_names_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"sims has shape \(3, 10\).*\(3, 15\)"):
        retrieval.retrieval_metrics(np.zeros((3, 10)))
    with pytest.raises(ValueError, match=r"transpose"):
        retrieval.image_to_text_ranks(np.zeros((15, 3)))
    with pytest.raises(ValueError, match=r"2-D.*\(15,\)"):
        retrieval.text_to_image_ranks(np.zeros(15))


def test_non_finite_and_non_numeric_scores_are_rejected() -> None:
    sims = np.zeros((2, 10))
    sims[1, 7] = np.nan
    with pytest.raises(ValueError, match=r"sims\[1, 7\] is nan"):
        retrieval.retrieval_metrics(sims)
    with pytest.raises(ValueError, match=r"numbers.*<U1"):
        retrieval.retrieval_metrics(np.full((1, 5), "a"))


def test_embedding_and_protocol_errors() -> None:
    images, captions = embeddings(4, 3, seed=6)
    with pytest.raises(ValueError, match=r"captions has 19 rows; expected 5 \* 4 = 20"):
        retrieval.evaluate_folds(images, captions[:19], 4)
    with pytest.raises(ValueError, match=r"images have size 3 but captions 2"):
        retrieval.evaluate_folds(images, captions[:, :2], 4)
    with pytest.raises(ValueError, match=r"4 images do not split into folds of 3"):
        retrieval.evaluate_folds(images, captions, 3)
    with pytest.raises(ValueError, match=r"protocol coco_1k needs 5000 images; got 4"):
        retrieval.coco_1k(images, captions)
    with pytest.raises(ValueError, match=r"unknown protocol 'f30k'.*flickr30k_1k"):
        retrieval.evaluate_protocol("f30k", images, captions)
    with pytest.raises(ValueError, match=r"at least one"):
        retrieval.mean_metrics([])


# ------------------------------------------------------ image -> entity


ENTITY_SIMS = np.array(
    [
        [0.5, 0.2, 0.9, 0.1, 0.2],
        [0.3, 0.6, 0.7, 0.6, 0.1],
    ]
)
ENTITY_OWNER = np.array([0, 0, 1, 1, 1])


def test_entity_hand_case() -> None:
    # Image 0 order: e2 (0.9), e0*, e1* (ties e4, relevant first), e4, e3: hits 2, 3.
    # Image 1 order: e2*, e3* (ties e1), e1, e0, e4*: hits at 1, 2, 5.
    ranks = retrieval.image_to_entity_ranks(ENTITY_SIMS, ENTITY_OWNER)
    np.testing.assert_array_equal(ranks, [2, 1])
    ap = retrieval.image_to_entity_average_precision(ENTITY_SIMS, ENTITY_OWNER)
    np.testing.assert_allclose(ap, [(1 / 2 + 2 / 3) / 2, (1 + 1 + 3 / 5) / 3])
    metrics = retrieval.image_to_entity_metrics(ENTITY_SIMS, ENTITY_OWNER)
    assert metrics.as_dict() == pytest.approx(
        {
            "i2e_r1": 50.0,
            "i2e_r5": 100.0,
            "i2e_r10": 100.0,
            "i2e_medr": 1.0,
            "i2e_meanr": 1.5,
            "i2e_map": 72.5,
        }
    )


def test_entity_owner_equals_relevance_matrix() -> None:
    relevance = ENTITY_OWNER[None, :] == np.arange(2)[:, None]
    assert retrieval.image_to_entity_metrics(ENTITY_SIMS, relevance) == (
        retrieval.image_to_entity_metrics(ENTITY_SIMS, ENTITY_OWNER)
    )


def test_entity_relevant_to_several_images() -> None:
    relevance = np.array(
        [[True, True, False, False, True], [False, False, True, True, True]]
    )
    # Image 0 order: e2, e0*, e1*, e4*, e3 -> hits at 2, 3, 4.
    ap = retrieval.image_to_entity_average_precision(ENTITY_SIMS, relevance)
    np.testing.assert_allclose(ap, [(1 / 2 + 2 / 3 + 3 / 4) / 3, 13 / 15])


@pytest.mark.parametrize(
    ("n", "m", "levels"), [(1, 4, 2), (8, 40, 3), (15, 90, 1000), (6, 200, 4)]
)
def test_entity_metrics_equal_sorting_reference(n: int, m: int, levels: int) -> None:
    rng = np.random.default_rng(n + m)
    sims = tied_matrix(rng, (n, m), levels)
    owner = np.concatenate([np.arange(n), rng.integers(0, n, size=m - n)])
    rng.shuffle(owner)
    relevance = owner[None, :] == np.arange(n)[:, None]
    relevance |= rng.random((n, m)) < 0.05  # some entities match several images
    best, ap = reference_entity(sims, relevance)
    got_ap = retrieval.image_to_entity_average_precision(sims, relevance)
    got_best = retrieval.image_to_entity_ranks(sims, relevance)
    np.testing.assert_array_equal(got_best, best)
    np.testing.assert_allclose(got_ap, ap)
    owned = owner[None, :] == np.arange(n)[:, None]
    best_owner, ap_owner = reference_entity(sims, owned)
    images, entities = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    from_embeddings = retrieval.evaluate_image_to_entity(images, entities, owner)
    from_sims = retrieval.image_to_entity_metrics(images @ entities.T, owner)
    assert from_embeddings == from_sims
    got = retrieval.image_to_entity_metrics(sims, owner)
    assert got.i2e_map == pytest.approx(100 * ap_owner.mean())
    assert got.i2e_meanr == pytest.approx(best_owner.mean())
    assert got.i2e_r5 == pytest.approx(100 * np.mean(best_owner <= 5))


def test_entity_ground_truth_errors() -> None:
    bad_owner = np.array([0, 0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"entity_owner\[3\] = 2 is not .* \[0, 2\)"):
        retrieval.image_to_entity_ranks(ENTITY_SIMS, bad_owner)
    with pytest.raises(ValueError, match=r"image 1 has no relevant entity"):
        retrieval.image_to_entity_ranks(ENTITY_SIMS, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"entity_owner has 4 entries; sims has 5"):
        retrieval.image_to_entity_ranks(ENTITY_SIMS, ENTITY_OWNER[:4])
    with pytest.raises(ValueError, match=r"relevance has shape \(2, 4\);.*\(2, 5\)"):
        retrieval.image_to_entity_ranks(ENTITY_SIMS, np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"relevance must be boolean"):
        retrieval.image_to_entity_ranks(ENTITY_SIMS, np.ones((2, 5)))


# --------------------------------------------------------------------- top-k


def reference_top_k(sims: np.ndarray, k: int) -> np.ndarray:
    return np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in sims])


@pytest.mark.parametrize(
    ("q", "m", "k", "levels"),
    [(5, 12, 3, 3), (4, 30, 30, 2), (7, 50, 1, 1), (3, 100, 10, 1000)],
)
def test_top_k_equals_sorting_reference(q: int, m: int, k: int, levels: int) -> None:
    sims = tied_matrix(np.random.default_rng(q * m), (q, m), levels)
    indices, scores = retrieval.top_k(sims, k)
    np.testing.assert_array_equal(indices, reference_top_k(sims, k))
    np.testing.assert_array_equal(scores, np.take_along_axis(sims, indices, axis=1))


def test_top_k_hand_case_and_single_query() -> None:
    indices, scores = retrieval.top_k([0.2, 0.7, 0.2, 0.9, 0.2], 3)
    np.testing.assert_array_equal(indices, [3, 1, 0])  # tie at 0.2: lowest index
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.2])
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\].*got 6"):
        retrieval.top_k([0.2, 0.7, 0.2, 0.9, 0.2], 6)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        retrieval.top_k(0.5, 1)


def test_metrics_dataclasses_have_the_documented_fields() -> None:
    assert [f.name for f in dataclasses.fields(retrieval.EntityRetrievalMetrics)] == (
        "i2e_r1 i2e_r5 i2e_r10 i2e_medr i2e_meanr i2e_map".split()
    )
