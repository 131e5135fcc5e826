"""Retrieval evaluation: ranks, R@K, RSUM, the benchmark protocols, image -> entity
retrieval and top-k search (MODEL.md section 6).

Framework-free NumPy; every function accepts any array-like (for a Keras
tensor pass `np.asarray(tensor)` or the tensor itself when it converts).

Layout: `sims` has one row per image and one column per caption; the captions
of image i are columns `k*i .. k*i + k - 1` (k = `captions_per_image`, 5 in
every benchmark).

Ranks are 1-based and computed without sorting: the rank of a positive with
score s is 1 + the number of candidates scoring strictly more than s. A tie
therefore counts in favour of the positive (it ranks ahead of negatives with
an equal score). Rows are processed in blocks to bound memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

CAPTIONS_PER_IMAGE = 5
RECALL_LEVELS = (1, 5, 10)

# Protocol name -> (number of images, images per fold).
PROTOCOLS: dict[str, tuple[int, int]] = {
    "flickr30k_1k": (1000, 1000),
    "coco_1k": (5000, 1000),
    "coco_5k": (5000, 5000),
}

# Elements of the boolean comparison block handled at once (16 Mi -> 16 MiB).
_BLOCK_ELEMENTS = 1 << 24
# dtype kinds accepted as scores: bool, int, uint, float, and NumPy extension
# floats such as ml_dtypes.bfloat16 (kind "V").
_NUMERIC_KINDS = "biufV"


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
    """Image <-> text retrieval metrics: recalls in percent, ranks 1-based."""

    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    i2t_medr: float
    i2t_meanr: float
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    t2i_medr: float
    t2i_meanr: float
    rsum: float

    def as_dict(self) -> dict[str, float]:
        """The metrics under their field names."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EntityRetrievalMetrics:
    """Image -> entity retrieval metrics: recalls and mAP in percent, ranks 1-based.

    An image query is a hit at K when any of its entities ranks in the top K;
    `i2e_medr`/`i2e_meanr` summarise the rank of its best-ranked entity;
    `i2e_map` is the mean over images of the average precision of all its
    entities.
    """

    i2e_r1: float
    i2e_r5: float
    i2e_r10: float
    i2e_medr: float
    i2e_meanr: float
    i2e_map: float

    def as_dict(self) -> dict[str, float]:
        """The metrics under their field names."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- validation


def _as_scores(values: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """`values` as an `ndim`-D numeric array (floats kept, the rest -> float64)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{name} must hold numbers; got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    return arr


def _require_finite(arr: np.ndarray, name: str) -> None:
    """Raise naming the first non-finite entry of `arr` (2-D), if any."""
    if np.isfinite(arr.sum(dtype=np.result_type(arr.dtype, np.float32))):
        return
    rows = _block_rows(arr.shape[1])
    for start in range(0, arr.shape[0], rows):
        bad = np.argwhere(~np.isfinite(arr[start : start + rows]))
        if bad.size:
            i, j = int(bad[0, 0]) + start, int(bad[0, 1])
            raise ValueError(f"{name}[{i}, {j}] is {arr[i, j]}: scores must be finite")


def _check_sims(sims: ArrayLike, captions_per_image: int) -> np.ndarray:
    """Validate an (n, k n) image x caption similarity matrix."""
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1; got {captions_per_image}")
    arr = _as_scores(sims, "sims", ndim=2)
    n, k = arr.shape[0], captions_per_image
    if n == 0 or arr.shape[1] != k * n:
        transposed = arr.shape[0] == k * arr.shape[1]
        hint = " (this looks transposed: pass sims.T)" if transposed else ""
        raise ValueError(
            f"sims has shape {arr.shape}; expected (n_images, {k} * n_images) = "
            f"({n}, {k * n}) with {k} captions per image, n_images >= 1{hint}"
        )
    _require_finite(arr, "sims")
    return arr


def _check_embeddings(
    images: ArrayLike, captions: ArrayLike, captions_per_image: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate image (n, D) and caption (k n, D) embeddings."""
    img = _as_scores(images, "images", ndim=2)
    cap = _as_scores(captions, "captions", ndim=2)
    n, k = img.shape[0], captions_per_image
    if cap.shape[0] != k * n:
        raise ValueError(
            f"captions has {cap.shape[0]} rows; expected {k} * {n} = {k * n} "
            f"({k} captions per image, image i's at rows {k}i..{k}i+{k - 1})"
        )
    if cap.shape[1] != img.shape[1]:
        raise ValueError(
            f"images have size {img.shape[1]} but captions {cap.shape[1]} "
            f"(shapes {img.shape}, {cap.shape})"
        )
    return img, cap


# --------------------------------------------------------------------- ranks


def _block_rows(row_elements: int) -> int:
    """Rows per block so a block holds about `_BLOCK_ELEMENTS` elements."""
    return max(1, _BLOCK_ELEMENTS // max(1, row_elements))


def _count_greater(sims: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For thresholds (n, P): counts[i, p] = #{j : sims[i, j] > thresholds[i, p]}."""
    n, m = sims.shape
    counts = np.empty(thresholds.shape, dtype=np.int64)
    rows = _block_rows(thresholds.shape[1] * m)
    for start in range(0, n, rows):
        block = sims[start : start + rows, None, :]
        above = block > thresholds[start : start + rows, :, None]
        counts[start : start + rows] = np.count_nonzero(above, axis=2)
    return counts


def _image_to_text_ranks(sims: np.ndarray, k: int) -> np.ndarray:
    n = sims.shape[0]
    own = sims[np.arange(n)[:, None], k * np.arange(n)[:, None] + np.arange(k)]
    return 1 + _count_greater(sims, own.max(axis=1, keepdims=True))[:, 0]


def _text_to_image_ranks(sims: np.ndarray, k: int) -> np.ndarray:
    n, m = sims.shape
    own = sims[np.arange(m) // k, np.arange(m)]
    counts = np.zeros(m, dtype=np.int64)
    rows = _block_rows(m)
    for start in range(0, n, rows):
        counts += np.count_nonzero(sims[start : start + rows] > own, axis=0)
    return 1 + counts


def image_to_text_ranks(
    sims: ArrayLike, captions_per_image: int = CAPTIONS_PER_IMAGE
) -> np.ndarray:
    """Per image (n,), the 1-based rank of its best-ranked caption among all k n."""
    arr = _check_sims(sims, captions_per_image)
    return _image_to_text_ranks(arr, captions_per_image)


def text_to_image_ranks(
    sims: ArrayLike, captions_per_image: int = CAPTIONS_PER_IMAGE
) -> np.ndarray:
    """Per caption (k n,), the 1-based rank of its image among all n."""
    arr = _check_sims(sims, captions_per_image)
    return _text_to_image_ranks(arr, captions_per_image)


# ------------------------------------------------------------------- metrics


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percent of queries whose (1-based) rank is at most k."""
    return 100.0 * float(np.mean(ranks <= k))


def _median_rank(ranks: np.ndarray) -> float:
    """Median rank rounded down, as the VSE++ family of evaluation scripts has it."""
    return float(np.floor(np.median(ranks)))


def ranks_to_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> RetrievalMetrics:
    """R@1/5/10, median and mean rank of both directions, and RSUM."""
    i2t = [recall_at(i2t_ranks, k) for k in RECALL_LEVELS]
    t2i = [recall_at(t2i_ranks, k) for k in RECALL_LEVELS]
    return RetrievalMetrics(
        *i2t,
        _median_rank(i2t_ranks),
        float(np.mean(i2t_ranks)),
        *t2i,
        _median_rank(t2i_ranks),
        float(np.mean(t2i_ranks)),
        sum(i2t) + sum(t2i),
    )


def retrieval_metrics(
    sims: ArrayLike, captions_per_image: int = CAPTIONS_PER_IMAGE
) -> RetrievalMetrics:
    """Both directions' metrics from an (n, k n) image x caption similarity matrix."""
    arr = _check_sims(sims, captions_per_image)
    return ranks_to_metrics(
        _image_to_text_ranks(arr, captions_per_image),
        _text_to_image_ranks(arr, captions_per_image),
    )


def mean_metrics(metrics: Sequence[RetrievalMetrics]) -> RetrievalMetrics:
    """Field-wise mean (e.g. over the folds of COCO 1K)."""
    if not metrics:
        raise ValueError("mean_metrics needs at least one RetrievalMetrics")
    fields = [f.name for f in dataclasses.fields(RetrievalMetrics)]
    return RetrievalMetrics(
        **{f: float(np.mean([getattr(m, f) for m in metrics])) for f in fields}
    )


def format_table_row(metrics: RetrievalMetrics) -> str:
    """The paper's table row: R@1 R@5 R@10 image->text / same text->image / RSUM."""
    m = metrics
    return (
        f"{m.i2t_r1:.1f} {m.i2t_r5:.1f} {m.i2t_r10:.1f} / "
        f"{m.t2i_r1:.1f} {m.t2i_r5:.1f} {m.t2i_r10:.1f} / {m.rsum:.1f}"
    )


# ----------------------------------------------------------------- protocols


def similarities(queries: ArrayLike, candidates: ArrayLike) -> np.ndarray:
    """Dot-product similarities (q, D) x (c, D) -> (q, c), at least float32."""
    q = _as_scores(queries, "queries", ndim=2)
    c = _as_scores(candidates, "candidates", ndim=2)
    if q.shape[1] != c.shape[1]:
        raise ValueError(
            f"queries have size {q.shape[1]} but candidates {c.shape[1]} "
            f"(shapes {q.shape}, {c.shape})"
        )
    dtype = np.result_type(q.dtype, c.dtype, np.float32)
    return q.astype(dtype, copy=False) @ c.astype(dtype, copy=False).T


def evaluate_folds(
    images: ArrayLike,
    captions: ArrayLike,
    fold_size: int,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
) -> RetrievalMetrics:
    """Mean metrics over consecutive folds of `fold_size` images (one fold = all)."""
    img, cap = _check_embeddings(images, captions, captions_per_image)
    n, k = img.shape[0], captions_per_image
    if fold_size < 1 or n % fold_size:
        raise ValueError(f"{n} images do not split into folds of {fold_size}")
    folds = [
        retrieval_metrics(
            similarities(img[s : s + fold_size], cap[k * s : k * (s + fold_size)]), k
        )
        for s in range(0, n, fold_size)
    ]
    return mean_metrics(folds)


def evaluate_protocol(
    name: str, images: ArrayLike, captions: ArrayLike
) -> RetrievalMetrics:
    """Metrics of protocol `name` (a key of `PROTOCOLS`) from image (n, D) and
    caption (5 n, D) embeddings."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    num_images, fold_size = PROTOCOLS[name]
    img, cap = _check_embeddings(images, captions, CAPTIONS_PER_IMAGE)
    if img.shape[0] != num_images:
        raise ValueError(
            f"protocol {name} needs {num_images} images; got {img.shape[0]}"
        )
    return evaluate_folds(img, cap, fold_size)


def flickr30k_1k(images: ArrayLike, captions: ArrayLike) -> RetrievalMetrics:
    """Flickr30K test: the 1,000 images and their 5,000 captions as is."""
    return evaluate_protocol("flickr30k_1k", images, captions)


def coco_1k(images: ArrayLike, captions: ArrayLike) -> RetrievalMetrics:
    """MS-COCO 1K: mean over the five consecutive 1,000-image folds of the 5K split."""
    return evaluate_protocol("coco_1k", images, captions)


def coco_5k(images: ArrayLike, captions: ArrayLike) -> RetrievalMetrics:
    """MS-COCO 5K: the whole 5,000-image test split at once."""
    return evaluate_protocol("coco_5k", images, captions)


# ---------------------------------------------------- image -> entity retrieval


def _relevant_columns(
    ground_truth: ArrayLike, n: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Relevant entity columns per image, padded: (columns (n, P), valid (n, P)).

    `ground_truth` is either the owner image of each entity, shape (m,), or a
    boolean relevance matrix, shape (n, m). Columns are ascending per row.
    """
    truth = np.asarray(ground_truth)
    if truth.ndim == 1:
        if truth.shape[0] != m:
            raise ValueError(
                f"entity_owner has {truth.shape[0]} entries; sims has {m} columns"
            )
        if truth.dtype.kind not in "iu":
            raise ValueError(
                f"entity_owner must hold integer image indices; got dtype {truth.dtype}"
            )
        outside = np.flatnonzero((truth < 0) | (truth >= n))
        if outside.size:
            j = int(outside[0])
            raise ValueError(
                f"entity_owner[{j}] = {truth[j]} is not an image index in [0, {n})"
            )
        cols = np.argsort(truth, kind="stable")
        rows = truth[cols].astype(np.int64)
    elif truth.ndim == 2:
        if truth.shape != (n, m):
            raise ValueError(
                f"relevance has shape {truth.shape}; sims has shape {(n, m)}"
            )
        if truth.dtype.kind != "b":
            raise ValueError(f"relevance must be boolean; got dtype {truth.dtype}")
        rows, cols = np.nonzero(truth)
    else:
        raise ValueError(
            "ground truth must be entity_owner (m,) or relevance (n, m); "
            f"got shape {truth.shape}"
        )
    counts = np.bincount(rows, minlength=n)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"image {int(empty[0])} has no relevant entity; every image query needs one"
        )
    slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = np.zeros((n, int(counts.max())), dtype=np.int64)
    valid = np.zeros(columns.shape, dtype=bool)
    columns[rows, slots] = cols
    valid[rows, slots] = True
    return columns, valid


def _check_entity_sims(sims: ArrayLike) -> np.ndarray:
    arr = _as_scores(sims, "sims", ndim=2)
    if 0 in arr.shape:
        raise ValueError(
            f"sims has shape {arr.shape}; needs at least one image and one entity"
        )
    _require_finite(arr, "sims")
    return arr


def _entity_ranks(
    sims: np.ndarray, columns: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    scores = np.where(valid, np.take_along_axis(sims, columns, axis=1), -np.inf)
    return 1 + _count_greater(sims, scores.max(axis=1, keepdims=True))[:, 0]


def _entity_average_precision(
    sims: np.ndarray, columns: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    # Rank order: descending score, relevant before equal-score irrelevant,
    # relevant among themselves by column. For relevant p, q_p = its 1-based
    # position among the relevant and rank_p = q_p + #irrelevant scoring more,
    # so precision at p is q_p / rank_p.
    scores = np.where(valid, np.take_along_axis(sims, columns, axis=1), np.inf)
    pairs = valid[:, None, :] & valid[:, :, None]  # [i, p, o]: both real
    above = scores[:, None, :] > scores[:, :, None]  # o scores more than p
    lower_slot = np.tri(valid.shape[1], k=-1, dtype=bool)  # [p, o]: o < p
    tied_before = (scores[:, None, :] == scores[:, :, None]) & lower_slot
    relevant_above = np.count_nonzero(pairs & above, axis=2)
    position = 1 + relevant_above + np.count_nonzero(pairs & tied_before, axis=2)
    irrelevant_above = _count_greater(sims, scores) - relevant_above
    precision = np.where(valid, position / (position + irrelevant_above), 0.0)
    return precision.sum(axis=1) / valid.sum(axis=1)


def image_to_entity_ranks(sims: ArrayLike, ground_truth: ArrayLike) -> np.ndarray:
    """Per image (n,), the 1-based rank of its best-ranked relevant entity.

    `sims` (n images, m entities); `ground_truth` is the owner image of each
    entity (m,) ints, or a boolean relevance matrix (n, m).
    """
    arr = _check_entity_sims(sims)
    return _entity_ranks(arr, *_relevant_columns(ground_truth, *arr.shape))


def image_to_entity_average_precision(
    sims: ArrayLike, ground_truth: ArrayLike
) -> np.ndarray:
    """Per image (n,), the average precision (0..1) of its relevant entities.

    Inputs as for `image_to_entity_ranks`.
    """
    arr = _check_entity_sims(sims)
    return _entity_average_precision(arr, *_relevant_columns(ground_truth, *arr.shape))


def image_to_entity_metrics(
    sims: ArrayLike, ground_truth: ArrayLike
) -> EntityRetrievalMetrics:
    """R@1/5/10, median/mean best rank and mAP of image -> entity retrieval."""
    arr = _check_entity_sims(sims)
    columns, valid = _relevant_columns(ground_truth, *arr.shape)
    ranks = _entity_ranks(arr, columns, valid)
    return EntityRetrievalMetrics(
        *(recall_at(ranks, k) for k in RECALL_LEVELS),
        _median_rank(ranks),
        float(np.mean(ranks)),
        100.0 * float(np.mean(_entity_average_precision(arr, columns, valid))),
    )


def evaluate_image_to_entity(
    images: ArrayLike, entities: ArrayLike, ground_truth: ArrayLike
) -> EntityRetrievalMetrics:
    """Image -> entity metrics from image (n, D) and entity phrase (m, D) embeddings."""
    return image_to_entity_metrics(similarities(images, entities), ground_truth)


# --------------------------------------------------------------------- top-k


def top_k(sims: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates per query: (indices, scores), by descending score.

    `sims` is (q, m) or a single query (m,); outputs are (q, k) or (k,). Equal
    scores are ordered by lower candidate index. Uses a partition, not a sort
    of the whole row.
    """
    arr = np.asarray(sims)
    if arr.ndim not in (1, 2):
        raise ValueError(
            "sims must be (queries, candidates) or (candidates,); "
            f"got shape {arr.shape}"
        )
    single = arr.ndim == 1
    scores = _as_scores(arr[None] if single else arr, "sims", ndim=2)
    _require_finite(scores, "sims")
    q, m = scores.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the number of candidates); got {k}")
    indices = np.empty((q, k), dtype=np.int64)
    rows = _block_rows(m)
    for start in range(0, q, rows):
        block = scores[start : start + rows]
        kth = np.partition(block, m - k, axis=1)[:, m - k, None]
        equal = block == kth
        missing = k - np.count_nonzero(block > kth, axis=1, keepdims=True)
        chosen = (block > kth) | (equal & (np.cumsum(equal, axis=1) <= missing))
        picked = np.nonzero(chosen)[1].reshape(-1, k)  # ascending index per row
        picked_scores = np.take_along_axis(block, picked, axis=1)
        order = np.argsort(-picked_scores, axis=1, kind="stable")
        indices[start : start + rows] = np.take_along_axis(picked, order, axis=1)
    top_scores = np.take_along_axis(scores, indices, axis=1)
    return (indices[0], top_scores[0]) if single else (indices, top_scores)
