"""Embeddings of a split and the paper's retrieval protocols on them.

`SplitEmbedder` runs the image and caption towers of a `CoraModel` over a
split in dataset order (images (n, D), captions (5n, D), caption i
describing image i // 5), batch after batch through compiled per-tower
predict functions (XLA on JAX; plain graphs on TensorFlow, where XLA is
slower for this model on CPU; eager on PyTorch; eager everywhere with
`train.run_eagerly`). Every batch has the same
static size: the last one is padded with a minimal valid example whose rows
are dropped, so each tower compiles once and the text tower packs phrases
into its static budgets.

`protocol_metrics` picks the protocols of MODEL.md section 6 that fit the
split (Flickr30K 1K; MS-COCO 1K 5-fold and 5K) and falls back to the whole
split at once for other sizes (dev splits, the tiny demo worlds of tests).
The dev callback of `training.py` reuses both.

`evaluate` is the `cora-keras evaluate` command: a trained run or the
authors' PyTorch checkpoint, on one split, printed as the paper's table row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import keras
import numpy as np

from cora_keras.config import Config, apply_overrides, load_config
from cora_keras.data.datasets import Split, load_split
from cora_keras.data.pipeline import evaluation_dataset
from cora_keras.model import CoraModel, example_inputs
from cora_keras.run import load_run
from cora_keras.retrieval import (
    CAPTIONS_PER_IMAGE,
    PROTOCOLS,
    RetrievalMetrics,
    evaluate_folds,
    evaluate_protocol,
    format_table_row,
    similarities,
)
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.vocabulary import Vocabulary

# Protocols of each dataset, applied when the split has the protocol's size.
DATASET_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "f30k": ("flickr30k_1k",),
    "demo": ("flickr30k_1k",),
    "coco": ("coco_1k", "coco_5k"),
}
TABLE_HEADER = "image->text R@1 R@5 R@10 / text->image R@1 R@5 R@10 / RSUM"
# Viridis at five evenly spaced points: dark purple (low) to yellow (high).
_COLOUR_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)
_OWN_CAPTIONS_COLOUR = (255, 40, 40)


def backend_jit_compile() -> bool:
    """Whether to compile with XLA on this backend: JAX yes; TensorFlow no
    (XLA runs this model several times slower on CPU); PyTorch no."""
    return keras.backend.backend() == "jax"


@dataclass(frozen=True)
class SplitEmbeddings:
    """Image (n, D) and caption (5n, D) embeddings of a split, in dataset order."""

    images: np.ndarray
    captions: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        """Write `images` and `captions` to an `.npz` file."""
        np.savez(path, images=self.images, captions=self.captions)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SplitEmbeddings":
        """Read an `.npz` file written by `save`."""
        with np.load(path) as data:
            missing = [key for key in ("images", "captions") if key not in data]
            if missing:
                raise ValueError(f"{os.fspath(path)}: array {missing[0]!r} is missing")
            return cls(data["images"], data["captions"])


class _Tower(keras.Model):
    """One tower of a CoraModel as a model of its own, for `predict_on_batch`."""

    def __init__(self, model: CoraModel, method: str, output: Optional[str]) -> None:
        super().__init__(name=f"{model.name}_{method}")
        self.cora = model
        self.method = method
        self.output_key = output
        self.built = True

    def call(self, inputs):
        outputs = getattr(self.cora, self.method)(inputs, training=False)
        return outputs if self.output_key is None else outputs[self.output_key]


class SplitEmbedder:
    """Embeds splits with one model through compiled, static-shape towers.

    Keep one embedder per model (the dev callback does): the towers compile
    on first use and are reused for every later split and epoch.

    Args:
        model: a built `CoraModel`.
        config: the run's config (shapes, pipeline threads, eval batch size).
        batch_size: items per batch; default `train.eval_batch_size`.
    """

    def __init__(
        self, model: CoraModel, config: Config, batch_size: Optional[int] = None
    ) -> None:
        self.config = config
        self.batch_size = batch_size or config.train.eval_batch_size
        self._padding = example_inputs(config.model, self.batch_size)
        self._images = _Tower(model, "encode_images", None)
        self._captions = _Tower(model, "encode_captions", "caption")
        eager = config.train.run_eagerly
        for tower in (self._images, self._captions):
            tower.compile(jit_compile=backend_jit_compile() and not eager, run_eagerly=eager)

    def embed(self, split: Split, encoder: GraphEncoder) -> SplitEmbeddings:
        """Image and caption embeddings of `split` (graphs encoded by `encoder`)."""
        return SplitEmbeddings(self.embed_images(split, encoder), self.embed_captions(split, encoder))

    def embed_images(self, split: Split, encoder: GraphEncoder) -> np.ndarray:
        """(n, D) image embeddings of `split`."""
        datasets = evaluation_dataset(split, encoder, self.config, self.batch_size)
        return self._run(self._images, datasets.images.as_numpy_iterator())

    def embed_captions(self, split: Split, encoder: GraphEncoder) -> np.ndarray:
        """(5n, D) caption embeddings of `split`."""
        datasets = evaluation_dataset(split, encoder, self.config, self.batch_size)
        return self._run(self._captions, datasets.captions.as_numpy_iterator())

    def embed_caption_tensors(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """(n, D) embeddings of captions already encoded as the text tower's
        input arrays (`export.captions_to_tensors`)."""
        count, size = len(next(iter(tensors.values()))), self.batch_size
        batches = ({name: value[start : start + size] for name, value in tensors.items()} for start in range(0, count, size))
        return self._run(self._captions, batches)

    def _run(self, tower: _Tower, batches: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
        outputs = []
        for batch in batches:
            count = len(next(iter(batch.values())))
            if count < self.batch_size:
                batch = {
                    name: np.concatenate([value, self._padding[name][: self.batch_size - count]])
                    for name, value in batch.items()
                }
            outputs.append(np.asarray(tower.predict_on_batch(batch))[:count])
        return np.concatenate(outputs).astype(np.float32, copy=False)


def protocol_metrics(
    dataset: str, images: np.ndarray, captions: np.ndarray
) -> dict[str, RetrievalMetrics]:
    """Metrics per protocol of `dataset` that fits the split's size.

    A split of another size (a dev split, a small test world) is evaluated
    whole, under the name `"{n} images"`.
    """
    if dataset not in DATASET_PROTOCOLS:
        raise ValueError(
            f"data.dataset = {dataset!r}: no protocol known; known: "
            f"{', '.join(DATASET_PROTOCOLS)}"
        )
    n = len(images)
    names = [name for name in DATASET_PROTOCOLS[dataset] if PROTOCOLS[name][0] == n]
    if not names:
        return {f"{n} images": evaluate_folds(images, captions, n)}
    return {name: evaluate_protocol(name, images, captions) for name in names}


def format_results(results: Mapping[str, RetrievalMetrics]) -> str:
    """A header and the paper's table row per protocol, one per line."""
    width = max(len(name) for name in [*results, "protocol"])
    lines = [f"{'protocol':<{width}}  {TABLE_HEADER}"]
    lines += [f"{name:<{width}}  {format_table_row(m)}" for name, m in results.items()]
    return "\n".join(lines)


def similarity_picture(
    images: np.ndarray, captions: np.ndarray, count: int = 50, scale: int = 2
) -> np.ndarray:
    """RGB uint8 heat map of the first `count` images x their captions.

    Rows are images (each `5 * scale` pixels high, so cells are square),
    columns their 5 * count captions; colour runs from dark purple (least
    similar) to yellow (most), and a red frame marks each image's own
    captions. A trained model shows a bright framed diagonal.
    """
    n = min(count, len(images))
    sims = similarities(images[:n], captions[: CAPTIONS_PER_IMAGE * n])
    low, high = float(sims.min()), float(sims.max())
    level = (sims - low) / max(high - low, 1e-12) * (len(_COLOUR_RAMP) - 1)
    below = np.minimum(np.floor(level).astype(int), len(_COLOUR_RAMP) - 2)
    fraction = (level - below)[..., None]
    rgb = _COLOUR_RAMP[below] * (1 - fraction) + _COLOUR_RAMP[below + 1] * fraction
    rgb = np.repeat(rgb, CAPTIONS_PER_IMAGE, axis=0)
    cell = CAPTIONS_PER_IMAGE * scale
    picture = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    picture = np.round(picture).astype(np.uint8)
    for i in range(n):
        block = picture[i * cell : (i + 1) * cell, i * cell : (i + 1) * cell]
        block[[0, -1], :] = _OWN_CAPTIONS_COLOUR
        block[:, [0, -1]] = _OWN_CAPTIONS_COLOUR
    return picture


def load_release(
    checkpoint: str | os.PathLike,
    config_path: str | os.PathLike,
    vocab_path: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> tuple[CoraModel, Config, Vocabulary]:
    """The authors' PyTorch checkpoint as a CoraModel, with `config_path`
    (its `model.vocab_size` set from the release `vocab.json`)."""
    from cora_keras.checkpoints import load_release_checkpoint

    vocabulary = Vocabulary.from_release(vocab_path)
    config = load_config(config_path, [*overrides, f"model.vocab_size={len(vocabulary)}"])
    return load_release_checkpoint(checkpoint, config.model), config, vocabulary


def evaluate_split(
    model: CoraModel,
    config: Config,
    vocabulary: Vocabulary,
    data_dir: str | os.PathLike,
    split: str,
    batch_size: Optional[int] = None,
    embedder: Optional[SplitEmbedder] = None,
) -> tuple[SplitEmbeddings, dict[str, RetrievalMetrics]]:
    """Embeddings of `split` of the dataset in `data_dir` and its protocol metrics.

    The split's scene graphs are parsed (and cached) on first use; a
    `scene_graphs/{split}.jsonl` given without a `.sha256` is used as is.
    `embedder`: the model's compiled towers to reuse (default: new ones).
    """
    loaded = load_split(data_dir, split, config, vocabulary=vocabulary)
    encoder = GraphEncoder(vocabulary, config.model, config.augment)
    embedder = embedder or SplitEmbedder(model, config, batch_size)
    embeddings = embedder.embed(loaded, encoder)
    return embeddings, protocol_metrics(
        config.data.dataset, embeddings.images, embeddings.captions
    )


def evaluate(
    data_dir: str | os.PathLike,
    split: str,
    *,
    run_dir: Optional[str | os.PathLike] = None,
    checkpoint: Optional[str | os.PathLike] = None,
    config_path: Optional[str | os.PathLike] = None,
    vocab_path: Optional[str | os.PathLike] = None,
    overrides: Sequence[str] = (),
    save_embeddings: Optional[str | os.PathLike] = None,
    batch_size: Optional[int] = None,
) -> str:
    """The `cora-keras evaluate` command: the table rows of a run or checkpoint.

    Give either `run_dir` (a training run: its best weights, else its
    last) or `checkpoint` with
    `config_path` and `vocab_path` (the authors' release). Writes the
    embeddings to `save_embeddings` (`.npz`) when given.
    """
    if (run_dir is None) == (checkpoint is None):
        raise ValueError("give either a run (--run) or a release checkpoint (--checkpoint)")
    if run_dir is not None:
        if config_path is not None or vocab_path is not None:
            raise ValueError("--config and --vocab go with --checkpoint; a run has its own")
        config, model, vocabulary = load_run(run_dir)
        config = apply_overrides(config, list(overrides))
    else:
        if config_path is None or vocab_path is None:
            raise ValueError("--checkpoint needs --config and --vocab")
        model, config, vocabulary = load_release(checkpoint, config_path, vocab_path, overrides)
    embeddings, results = evaluate_split(model, config, vocabulary, data_dir, split, batch_size)
    if save_embeddings is not None:
        embeddings.save(save_embeddings)
    return format_results(results)
