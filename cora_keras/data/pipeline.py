"""Batches of model inputs from a split: training (sampled) and evaluation.

Batches are assembled in numpy (`TrainingBatches`, `ImageBatches`,
`CaptionBatches`) and wrapped in tf.data by `training_dataset` and
`evaluation_dataset`. Training draws every random choice of a caption
(scene graph sampling, region dropout) from a generator seeded by
(seed, epoch, caption index), so batches do not depend on thread
scheduling; the caption order is a permutation seeded by (seed, epoch).
Shapes follow `cora_keras/inputs.py`; training batches have the static
batch size `train.batch_size` (the remainder of an epoch is dropped). For
data-parallel training an `InputShard` names the contiguous parts of each
batch one input pipeline builds (`cora_keras.distribution`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

import keras
import numpy as np
import tensorflow as tf

from cora_keras.config import Config, ModelConfig
from cora_keras.data.datasets import CAPTIONS_PER_IMAGE, Split
from cora_keras.data.relation_swaps import swap_relation_slots, symmetric_predicate_rows
from cora_keras.inputs import (
    CAPTION_INPUTS,
    CAPTION_IMAGE,
    IMAGE_INPUTS,
    SWAP_RELATION,
    TARGETS,
    caption_specs,
    distinct_phrase_budgets,
    image_specs,
    phrase_budgets,
    region_budget,
    target_specs,
)
from cora_keras.scene_graph.schema import SceneGraph

Arrays = dict[str, np.ndarray]

BUDGET_KEYS = {
    "entities": "model.entity_budget",
    "attributes": "model.attribute_budget",
    "relations": "model.relation_budget",
}


class CaptionEncoder(Protocol):
    """What the pipeline needs of `scene_graph.encode.GraphEncoder`."""

    def encode(
        self, graph: SceneGraph, rng: Optional[np.random.Generator]
    ) -> Arrays: ...

    def phrase_row(self, text: str) -> np.ndarray: ...


class PhraseBudgetError(ValueError):
    """A batch holds more real phrases than the model's static budget."""


@dataclass(frozen=True)
class InputShard:
    """The parts of each training batch one input pipeline builds.

    Each batch of `train.batch_size` captions is cut into `num_parts`
    contiguous parts of equal size; the pipeline yields the parts
    `part_ids` of every batch, one dataset element each, in that order.

    Attributes:
        num_parts: parts per batch.
        part_ids: the parts this pipeline builds.
        per_part_budgets: True when the model runs on each part alone
            (tf.distribute replicas): a part must fit the phrase and region
            budgets of its own size. False when the model runs on the whole
            batch (JAX DataParallel over several processes): a part must fit
            its share of the whole batch's budgets.
    """

    num_parts: int = 1
    part_ids: tuple[int, ...] = (0,)
    per_part_budgets: bool = True


def _budget_share(budget: int, size: int, budget_batch_size: Optional[int]) -> int:
    """A batch of `size` rows' share of the budget of `budget_batch_size` rows."""
    if budget_batch_size is None or budget_batch_size == size:
        return budget
    return budget * size // budget_batch_size


def check_phrase_budgets(
    captions: Arrays, model_config: ModelConfig, budget_batch_size: Optional[int] = None
) -> None:
    """Raise PhraseBudgetError when a batch of captions overflows a budget.

    `budget_batch_size`: the batch the model runs on when this batch is
    one part of it (default: this batch); the part gets its share.
    """
    batch_size = len(captions["entity_tokens"])
    whole = budget_batch_size or batch_size
    budgets = {
        kind: _budget_share(budget, batch_size, whole)
        for kind, budget in phrase_budgets(model_config, whole).items()
    }
    counts = {
        "entities": _real_phrases(captions["entity_tokens"]),
        "attributes": _real_phrases(captions["attribute_tokens"]),
        "relations": _real_phrases(captions["relation_tokens"]),
    }
    for kind, count in counts.items():
        if count > budgets[kind]:
            key = BUDGET_KEYS[kind]
            value = getattr(model_config, key.split(".")[1])
            raise PhraseBudgetError(
                f"a batch of {batch_size} captions holds {count} real {kind}, over "
                f"the {kind} budget of {budgets[kind]}; raise {key} (now {value} "
                "per caption)"
            )


def check_distinct_phrase_budgets(
    captions: Arrays, model_config: ModelConfig, budget_batch_size: Optional[int] = None
) -> None:
    """Raise PhraseBudgetError when a training batch holds more distinct
    phrases of a kind, plus one for the padding row, than the model's
    `distinct_phrase_budgets` (`budget_batch_size` as in `check_phrase_budgets`)."""
    batch_size = len(captions["entity_tokens"])
    whole = budget_batch_size or batch_size
    entity_real = (captions["entity_tokens"] != 0).any(axis=-1)
    real = {
        "entities": entity_real,
        "attributes": (captions["attribute_tokens"] != 0).any(axis=-1) & entity_real[..., None],
        "relations": (captions["relation_tokens"] != 0).any(axis=-1),
    }
    tokens = {"entities": "entity_tokens", "attributes": "attribute_tokens", "relations": "relation_tokens"}
    for kind, budget in distinct_phrase_budgets(model_config, whole).items():
        if budget is None:
            continue
        budget = _budget_share(budget, batch_size, whole)
        rows = captions[tokens[kind]][real[kind]]
        count = len(np.unique(rows, axis=0)) + 1
        if count > budget:
            raise PhraseBudgetError(
                f"a batch of {batch_size} captions holds {count - 1} distinct {kind} "
                f"phrases (+1 padding), over the distinct budget of {budget}; raise "
                f"model.distinct_phrase_budget (now {model_config.distinct_phrase_budget} of "
                f"{BUDGET_KEYS[kind]}) or set it to null"
            )


def check_region_budget(
    counts: np.ndarray, model_config: ModelConfig, budget_batch_size: Optional[int] = None
) -> None:
    """Raise PhraseBudgetError when a batch's valid regions overflow the budget
    (`budget_batch_size` as in `check_phrase_budgets`)."""
    whole = budget_batch_size or len(counts)
    budget = region_budget(model_config, whole)
    if budget is not None:
        budget = _budget_share(budget, len(counts), whole)
    total = int(np.sum(counts))
    if budget is not None and total > budget:
        raise PhraseBudgetError(
            f"a batch of {len(counts)} images holds {total} valid regions, over the "
            f"region budget of {budget}; raise model.region_budget (now "
            f"{model_config.region_budget} of the rows)"
        )


def drop_regions(
    regions: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move the kept rows of each image to the front, in order; zero the rest.

    Args:
        regions: (B, N, F) features.
        keep: (B, N) bool, at least one True per image.

    Returns:
        The (B, N, F) dropped-out features and the (B,) int32 kept counts.
    """
    counts = keep.sum(axis=1)
    out = np.empty_like(regions)
    for row, (mask, count) in enumerate(zip(keep, counts)):
        out[row, :count] = regions[row, mask]
        out[row, count:] = 0
    return out, counts.astype(np.int32)


def region_keep_mask(
    rng: np.random.Generator, num_regions: int, drop: float
) -> np.ndarray:
    """(N,) bool: each region dropped with p `drop`, at least one kept."""
    keep = rng.random(num_regions) >= drop
    if not keep.any():
        keep[rng.integers(num_regions)] = True
    return keep


def grouped_caption_order(rng: np.random.Generator, num_images: int, k: int) -> np.ndarray:
    """An epoch's caption indices in groups of k consecutive captions of one image.

    Each image's captions, shuffled, are cut into ceil(5 / k) groups; the
    last is filled up with the image's first shuffled captions (distinct
    from its own), so every caption comes at least once. The groups of all
    images are then shuffled.
    """
    groups = -(-CAPTIONS_PER_IMAGE // k)
    shuffled = rng.permuted(np.tile(np.arange(CAPTIONS_PER_IMAGE), (num_images, 1)), axis=1)
    filled = np.concatenate([shuffled, shuffled[:, : groups * k - CAPTIONS_PER_IMAGE]], axis=1)
    captions = filled + CAPTIONS_PER_IMAGE * np.arange(num_images)[:, None]
    return rng.permutation(captions.reshape(num_images * groups, k)).reshape(-1)


class TrainingBatches:
    """Sampled training batches of one split, in numpy.

    One epoch visits every caption once in an order seeded by (seed, epoch);
    a batch holds `train.batch_size` captions with their images (grouped by
    image with `train.captions_per_image` > 1, see `batch`). `epoch` yields the parts of each batch that `shard` names (the whole batch by
    default); a caption's sampling does not depend on the sharding.

    Args:
        split: the split to read.
        encoder: turns a scene graph into caption inputs and targets.
        config: the run's config (shapes, augmentation, batch size).
        seed: the seed of every random choice.
        shard: the parts of each batch to build.
    """

    def __init__(
        self,
        split: Split,
        encoder: CaptionEncoder,
        config: Config,
        seed: int,
        shard: InputShard = InputShard(),
    ) -> None:
        self.split = split
        self.encoder = encoder
        self.config = config
        self.seed = seed
        self.shard = shard
        self.batch_size = config.train.batch_size
        if self.batch_size % shard.num_parts or not all(
            0 <= part < shard.num_parts for part in shard.part_ids
        ):
            raise ValueError(
                f"train.batch_size = {self.batch_size} does not split into "
                f"{shard.num_parts} equal parts with parts {shard.part_ids} among them"
            )
        self.part_size = self.batch_size // shard.num_parts
        self.budget_batch_size = self.part_size if shard.per_part_budgets else self.batch_size
        self.captions_per_image = k = config.train.captions_per_image
        if not 1 <= k <= CAPTIONS_PER_IMAGE or self.part_size % k:
            raise ValueError(
                f"train.captions_per_image = {k}: must be 1 to {CAPTIONS_PER_IMAGE} and "
                f"divide the batch part of {self.part_size} captions"
            )
        self.image_part_size = self.part_size // k
        self.swap_rows = (
            symmetric_predicate_rows(encoder, config.loss.symmetric_predicates)
            if config.loss.relation_swap_weight > 0
            else None
        )
        self.x_names = (
            *IMAGE_INPUTS,
            *CAPTION_INPUTS,
            *((CAPTION_IMAGE,) if k > 1 else ()),
            *((SWAP_RELATION,) if self.swap_rows is not None else ()),
        )
        specs = {**caption_specs(config.model), **target_specs(config.model)}
        self._encoded_specs = {k: v for k, v in specs.items() if k != "image_ids"}
        self.steps_per_epoch = len(self.order(0)) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"split {split.name!r} has {split.num_captions} captions, fewer "
                f"than one batch (train.batch_size = {self.batch_size})"
            )
        if not 0.0 <= config.augment.region_drop <= 1.0:
            raise ValueError(
                f"augment.region_drop = {config.augment.region_drop}: not a "
                "probability in [0, 1]"
            )

    def order(self, epoch: int) -> np.ndarray:
        """The caption indices of `epoch`, batch after batch."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.captions_per_image == 1:
            return rng.permutation(self.split.num_captions)
        return grouped_caption_order(
            rng, self.split.num_captions // CAPTIONS_PER_IMAGE, self.captions_per_image
        )

    def batch(self, epoch: int, caption_indices: np.ndarray) -> tuple[Arrays, Arrays]:
        """(x, y) for these captions, sampled with their (seed, epoch, index) rngs.

        With `train.captions_per_image` = k > 1, each k consecutive captions
        show one image: x holds that image once (its region dropout drawn
        with its first caption) and `caption_image` points each caption at it.
        With `loss.relation_swap_weight` > 0, x holds `swap_relation`, the
        relation slot the model reverses (`relation_swaps.swap_relation_slots`).
        """
        model = self.config.model
        k = self.captions_per_image
        drop = self.config.augment.region_drop
        keep = np.empty((len(caption_indices), model.num_regions), dtype=bool)
        encoded = []
        for row, index in enumerate(caption_indices):
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            keep[row] = region_keep_mask(rng, model.num_regions, drop)
            encoded.append(self.encoder.encode(self.split.graphs[index], rng))
        captions = _stack(encoded, self._encoded_specs)
        check_phrase_budgets(captions, model, self.budget_batch_size)
        check_distinct_phrase_budgets(captions, model, self.budget_batch_size)
        image_ids = np.asarray(caption_indices, np.int64) // CAPTIONS_PER_IMAGE
        if np.any(image_ids.reshape(-1, k) != image_ids[::k, None]):
            raise ValueError(
                f"train.captions_per_image = {k}: each {k} consecutive captions of a "
                "batch must show one image"
            )
        regions, counts = drop_regions(self.split.features.read_many(image_ids[::k]), keep[::k])
        check_region_budget(counts, model, self.budget_batch_size // k)
        x = {"regions": regions, "region_counts": counts}
        if k > 1:
            x[CAPTION_IMAGE] = np.arange(len(caption_indices), dtype=np.int32) // k
        x.update((name, captions[name]) for name in CAPTION_INPUTS)
        if self.swap_rows is not None:
            x[SWAP_RELATION] = swap_relation_slots(captions, self.swap_rows)
        y = {name: captions[name] for name in TARGETS if name != "image_ids"}
        y["image_ids"] = image_ids.astype(np.int32)
        return x, y

    def caption_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The caption indices of each batch of `epoch`, in order."""
        order = self.order(epoch)
        for step in range(self.steps_per_epoch):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def part_batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The caption indices of the shard's parts of each batch of `epoch`."""
        size = self.part_size
        for indices in self.caption_batches(epoch):
            for part in self.shard.part_ids:
                yield indices[part * size : (part + 1) * size]

    def epoch(self, epoch: int) -> Iterator[tuple[Arrays, Arrays]]:
        """Every (x, y) part of `epoch`, in order (single-threaded numpy)."""
        for indices in self.part_batches(epoch):
            yield self.batch(epoch, indices)


class ImageBatches(keras.utils.PyDataset):
    """The split's images in order, all regions valid: x dicts for predict.

    Args:
        split: the split to read.
        batch_size: images per batch (the last batch may be smaller).
    """

    def __init__(self, split: Split, batch_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.split = split
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self.split.num_images / self.batch_size)

    def __getitem__(self, index: int) -> Arrays:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range [0, {len(self)})")
        images = np.arange(
            index * self.batch_size,
            min((index + 1) * self.batch_size, self.split.num_images),
        )
        regions = self.split.features.read_many(images)
        counts = np.full(len(images), regions.shape[1], dtype=np.int32)
        return {"regions": regions, "region_counts": counts}


class CaptionBatches(keras.utils.PyDataset):
    """The split's captions in order, not sampled: x dicts for predict.

    Args:
        split: the split to read.
        encoder: turns a scene graph into caption inputs (rng None).
        model_config: shapes and phrase budgets.
        batch_size: captions per batch (the last batch may be smaller).
    """

    def __init__(
        self,
        split: Split,
        encoder: CaptionEncoder,
        model_config: ModelConfig,
        batch_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.split = split
        self.encoder = encoder
        self.model_config = model_config
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self.split.num_captions / self.batch_size)

    def __getitem__(self, index: int) -> Arrays:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range [0, {len(self)})")
        graphs = self.split.graphs[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        encoded = [self.encoder.encode(graph, None) for graph in graphs]
        captions = _stack(encoded, caption_specs(self.model_config))
        check_phrase_budgets(captions, self.model_config)
        return {name: captions[name] for name in CAPTION_INPUTS}


def training_dataset(
    split: Split,
    encoder: CaptionEncoder,
    config: Config,
    seed: int,
    *,
    first_epoch: int = 0,
    shard: InputShard = InputShard(),
    endless: bool = False,
) -> tf.data.Dataset:
    """(x, y) batches of `train.batch_size` captions; one iteration = one epoch.

    The k-th iteration over the dataset is epoch `first_epoch + k`: its
    order and sampling depend only on (seed, epoch). Batches are built in
    `data.parallel_calls` threads, in order, and prefetched. With `shard`,
    the elements are the shard's parts of each batch (see `InputShard`);
    only their images are read. With `endless`, every iteration runs epoch
    after epoch from `first_epoch` on, without end (for a loop that counts
    its steps per epoch itself and may start an iteration just to look).
    """
    batches = TrainingBatches(split, encoder, config, seed, shard)
    epochs = itertools.count(first_epoch)

    def caption_index_batches() -> Iterator[tuple[int, np.ndarray]]:
        for epoch in itertools.count(first_epoch) if endless else [next(epochs)]:
            for indices in batches.part_batches(epoch):
                yield epoch, indices

    specs = {
        **image_specs(config.model),
        **caption_specs(config.model),
        **target_specs(config.model),
        **({CAPTION_IMAGE: ((), "int32")} if batches.captions_per_image > 1 else {}),
        **({SWAP_RELATION: ((), "int32")} if batches.swap_rows is not None else {}),
    }
    sizes = {name: batches.image_part_size for name in IMAGE_INPUTS}

    def build(epoch: np.ndarray, indices: np.ndarray) -> Arrays:
        x, y = batches.batch(int(epoch), indices)
        return {**x, **y}

    def build_tensors(epoch: tf.Tensor, indices: tf.Tensor) -> tuple[dict, dict]:
        tensors = _numpy_batch(build, [epoch, indices], specs, batches.part_size, sizes)
        x = {name: tensors[name] for name in batches.x_names}
        return x, {name: tensors[name] for name in TARGETS}

    dataset = tf.data.Dataset.from_generator(
        caption_index_batches,
        output_signature=(
            tf.TensorSpec((), tf.int64),
            tf.TensorSpec((batches.part_size,), tf.int64),
        ),
    )
    dataset = dataset.map(
        build_tensors,
        num_parallel_calls=config.data.parallel_calls,
        deterministic=True,
    )
    length = batches.steps_per_epoch * len(shard.part_ids)
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY if endless else length)
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class EvaluationDatasets:
    """Images and captions of a split in order, for encoding then ranking.

    Attributes:
        images: x dicts of the n images (image inputs).
        captions: x dicts of the 5n captions (caption inputs); caption i
            belongs to image i // 5.
    """

    images: tf.data.Dataset
    captions: tf.data.Dataset


def evaluation_dataset(
    split: Split,
    encoder: CaptionEncoder,
    config: Config,
    batch_size: Optional[int] = None,
) -> EvaluationDatasets:
    """The split's images and captions in order: no sampling, no dropout.

    Args:
        batch_size: items per batch; default `train.eval_batch_size`. The
            last batch of each dataset may be smaller.
    """
    batch_size = batch_size or config.train.eval_batch_size
    images = ImageBatches(split, batch_size)
    captions = CaptionBatches(split, encoder, config.model, batch_size)
    return EvaluationDatasets(
        images=_ordered_dataset(images, image_specs(config.model), config),
        captions=_ordered_dataset(captions, caption_specs(config.model), config),
    )


def _ordered_dataset(
    batches: keras.utils.PyDataset,
    specs: dict[str, tuple[tuple[int, ...], str]],
    config: Config,
) -> tf.data.Dataset:
    """tf.data over the batches of a PyDataset, in index order."""

    def build(index: np.ndarray) -> Arrays:
        return batches[int(index)]

    dataset = tf.data.Dataset.range(len(batches)).map(
        lambda index: _numpy_batch(build, [index], specs, None),
        num_parallel_calls=config.data.parallel_calls,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _numpy_batch(
    build: Callable[..., Arrays],
    args: list[tf.Tensor],
    specs: dict[str, tuple[tuple[int, ...], str]],
    batch_size: Optional[int],
    batch_sizes: Optional[dict[str, int]] = None,
) -> dict[str, tf.Tensor]:
    """`build(*args)` run as a numpy_function; its arrays named, typed, shaped
    (leading axis `batch_size`, or `batch_sizes[name]` for the names there)."""
    names = list(specs)

    def flat(*arrays: np.ndarray) -> list[np.ndarray]:
        batch = build(*arrays)
        return [batch[name] for name in names]

    tensors = tf.numpy_function(
        flat, args, [tf.as_dtype(specs[name][1]) for name in names]
    )
    for tensor, name in zip(tensors, names):
        tensor.set_shape(((batch_sizes or {}).get(name, batch_size), *specs[name][0]))
    return dict(zip(names, tensors))


def _stack(
    encoded: list[Arrays], specs: dict[str, tuple[tuple[int, ...], str]]
) -> Arrays:
    """Stack the encoder's per-caption arrays named in `specs`, checking shapes."""
    out = {}
    for name, (shape, dtype) in specs.items():
        stacked = np.stack([e[name] for e in encoded]).astype(dtype, copy=False)
        if stacked.shape[1:] != shape:
            raise ValueError(
                f"encoder output {name!r} has shape {stacked.shape[1:]} per caption, "
                f"expected {shape} (cora_keras/inputs.py)"
            )
        out[name] = stacked
    return out


def _real_phrases(tokens: np.ndarray) -> int:
    return int((tokens != 0).any(axis=-1).sum())
