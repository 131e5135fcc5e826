"""Search a split with a run's model: text -> images, image -> captions and
entity phrases (the image-to-entity retrieval of MODEL.md section 6).

The split's embeddings (images, captions, and the distinct entity phrases
from the entity composer) are cached in `RUN/cache/{split}.npz` under a key
hashing the run's weights, config and vocabulary and the split's captions,
scene graphs and region features; a changed file means a rebuild. An entity
phrase is its name with its first A attributes ("cube (large, red)"); equal
phrases have equal embeddings (the entity composer sees only the phrase),
so each is kept once.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cora_keras.config import Config, ModelConfig
from cora_keras.data.datasets import CAPTIONS_PER_IMAGE, Split, captions_file, file_sha256, load_split
from cora_keras.inputs import CAPTION_INPUTS, phrase_budgets
from cora_keras.retrieval import similarities, top_k
from cora_keras.run import CONFIG_FILE, VOCAB_FILE, load_run_config, weights_path
from cora_keras.scene_graph.parser import SceneGraphParser
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, SceneGraph
from cora_keras.scene_graph.vocabulary import Vocabulary

if TYPE_CHECKING:
    import keras

    from cora_keras.model import CoraModel

CACHE_DIR = "cache"
_FEATURE_HASH_CHUNK = 256  # images per read when hashing region features


@dataclass(frozen=True)
class SearchIndex:
    """Normalised embeddings of a split.

    Attributes:
        images: (n, D), image i of the split.
        captions: (5 n, D), caption j of the split (image j // 5).
        entities: (u, D), one per distinct entity phrase.
        entity_phrases: (u,) str, the phrase of each row of `entities`.
    """

    images: np.ndarray
    captions: np.ndarray
    entities: np.ndarray
    entity_phrases: np.ndarray


@dataclass(frozen=True)
class Hit:
    """One search result: the candidate's row in the index and its score."""

    index: int
    score: float


# ------------------------------------------------------------------ ranking


def _hits(query: np.ndarray, candidates: np.ndarray, k: int) -> list[Hit]:
    scores = similarities(np.asarray(query)[None], candidates)[0]
    indices, top = top_k(scores, min(k, len(scores)))
    return [Hit(int(i), float(s)) for i, s in zip(indices, top)]


def top_images(index: SearchIndex, query: np.ndarray, k: int) -> list[Hit]:
    """The k images scoring highest against a (D,) text embedding."""
    return _hits(query, index.images, k)


def top_captions(index: SearchIndex, image: int, k: int) -> list[Hit]:
    """The k captions of the split scoring highest against image `image`."""
    return _hits(index.images[_check_image(index, image)], index.captions, k)


def top_entities(index: SearchIndex, image: int, k: int) -> list[Hit]:
    """The k entity phrases of the split scoring highest against image `image`."""
    return _hits(index.images[_check_image(index, image)], index.entities, k)


def _check_image(index: SearchIndex, image: int) -> int:
    n = len(index.images)
    if not 0 <= image < n:
        raise ValueError(f"image {image} is not an image index of the split, in [0, {n})")
    return image


# ------------------------------------------------------------ entity phrases


def entity_phrase(entity: Entity, max_attributes: int) -> str:
    """`name (a1, a2)` with the first `max_attributes` attributes, or `name`."""
    attributes = entity.attributes[:max_attributes]
    return f"{entity.name} ({', '.join(attributes)})" if attributes else entity.name


# ---------------------------------------------------------------- building


def distinct_entities(
    graphs: Sequence[SceneGraph], model_config: ModelConfig
) -> dict[str, Entity]:
    """The entities the model sees (first E per graph, first A attributes
    each) by phrase, each phrase once, in order of first appearance."""
    a = model_config.max_attributes
    entities: dict[str, Entity] = {}
    for graph in graphs:
        for entity in graph.entities[: model_config.max_entities]:
            phrase = entity_phrase(entity, a)
            if phrase not in entities:
                entities[phrase] = Entity(entity.name, entity.attributes[:a])
    return entities


def compute_index(
    model: CoraModel,
    split: Split,
    vocabulary: Vocabulary,
    config: Config,
    batch_size: int | None = None,
) -> SearchIndex:
    """Embed every image, caption and distinct entity phrase of `split`.

    Images and captions go through `evaluation.SplitEmbedder`; each entity
    phrase is embedded once, as the only entity of a caption of its own.
    """
    from cora_keras.evaluation import SplitEmbedder

    batch_size = batch_size or config.train.eval_batch_size
    encoder = GraphEncoder(vocabulary, config.model, config.augment)
    embeddings = SplitEmbedder(model, config, batch_size).embed(split, encoder)
    entities = distinct_entities(split.graphs, config.model)
    graphs = [SceneGraph(phrase, [entity]) for phrase, entity in entities.items()]
    return SearchIndex(
        images=embeddings.images,
        captions=embeddings.captions,
        entities=_embed_entities(model, encoder, graphs, config.model, batch_size),
        entity_phrases=np.array(list(entities), dtype=str),
    )


def _embed_entities(
    model: CoraModel,
    encoder: GraphEncoder,
    graphs: list[SceneGraph],
    model_config: ModelConfig,
    batch_size: int,
) -> np.ndarray:
    """(len(graphs), D) entity embeddings of one-entity graphs, in static
    batches (the last padded) that fit the phrase budgets, compiled."""
    size = _one_entity_batch_size(model_config, batch_size)
    tower = _entity_tower(model)
    rows = []
    for start in range(0, len(graphs), size):
        chunk = graphs[start : start + size]
        encoded = encoder.encode_batch(chunk + [chunk[0]] * (size - len(chunk)))
        inputs = {name: encoded[name] for name in CAPTION_INPUTS}
        rows.append(np.asarray(tower.predict_on_batch(inputs))[: len(chunk)])
    return np.concatenate(rows).astype(np.float32, copy=False)


def _entity_tower(model: CoraModel) -> keras.Model:
    """A compiled Keras model: one-entity caption inputs -> (B, D) embeddings
    of the entity (XLA where `evaluation.backend_jit_compile` says so)."""
    import keras

    from cora_keras.evaluation import backend_jit_compile

    class EntityTower(keras.Model):
        def __init__(self) -> None:
            super().__init__(name=f"{model.name}_entity_tower")
            self.cora = model
            self.built = True

        def call(self, inputs):
            return self.cora.encode_captions(inputs, training=False)["entities"][:, 0]

    tower = EntityTower()
    tower.compile(jit_compile=backend_jit_compile())
    return tower


def _one_entity_batch_size(model_config: ModelConfig, limit: int) -> int:
    """The largest batch <= `limit` of one-entity captions with A attributes
    each that the phrase budgets hold (a batch of one always fits)."""
    for size in range(limit, 1, -1):
        budgets = phrase_budgets(model_config, size)
        attributes = size * model_config.max_attributes
        if budgets["entities"] >= size and budgets["attributes"] >= attributes:
            return size
    return 1


def cache_key(run_dir: str | os.PathLike, split: Split) -> str:
    """SHA-256 over the run's weights, config and vocabulary and the split's
    captions, scene graphs and region features."""
    run_dir = Path(run_dir)
    digest = hashlib.sha256()
    files = [
        weights_path(run_dir),
        run_dir / CONFIG_FILE,
        run_dir / VOCAB_FILE,
        captions_file(split.data_dir, split.name),
        split.data_dir / "scene_graphs" / f"{split.name}.jsonl",
    ]
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    features = hashlib.sha256()
    for start in range(0, split.num_images, _FEATURE_HASH_CHUNK):
        stop = min(start + _FEATURE_HASH_CHUNK, split.num_images)
        features.update(np.ascontiguousarray(split.features.read_many(np.arange(start, stop))))
    digest.update(f"features:{split.features.shape}:{features.hexdigest()}\n".encode())
    return digest.hexdigest()


def cache_path(run_dir: str | os.PathLike, split: str) -> Path:
    """`RUN/cache/{split}.npz`."""
    return Path(run_dir) / CACHE_DIR / f"{split}.npz"


def load_cached_index(path: str | os.PathLike, key: str) -> SearchIndex | None:
    """The index stored at `path` under `key`; None if absent, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return SearchIndex(
                images=data["images"],
                captions=data["captions"],
                entities=data["entities"],
                entity_phrases=data["entity_phrases"],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def save_index(path: str | os.PathLike, key: str, index: SearchIndex) -> None:
    """Store `index` under `key` at `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            images=index.images,
            captions=index.captions,
            entities=index.entities,
            entity_phrases=index.entity_phrases,
        )
    os.replace(tmp, path)


# ------------------------------------------------------------------ session


class SplitSearch:
    """A run's model over one split, with the split's embeddings cached.

    The model is loaded only when needed (a cache miss or a text query).

    Args:
        run_dir: the training run (config, vocabulary, weights).
        data_dir: the dataset directory.
        split: the split to search.
        batch_size: images or captions per forward pass when embedding;
            None = the run's `train.eval_batch_size`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = load_run_config(self.run_dir)
        self.vocabulary = Vocabulary.load(self.run_dir / VOCAB_FILE)
        self.split = load_split(data_dir, split, self.config, vocabulary=self.vocabulary)
        self._model: CoraModel | None = None
        key = cache_key(self.run_dir, self.split)
        path = cache_path(self.run_dir, split)
        index = load_cached_index(path, key)
        if index is None:
            model = self.model()
            index = compute_index(model, self.split, self.vocabulary, self.config, batch_size)
            save_index(path, key, index)
        self.index = index

    def model(self) -> CoraModel:
        """The run's model, loaded on first use."""
        if self._model is None:
            from cora_keras.run import load_run

            _, self._model, _ = load_run(self.run_dir)
        return self._model

    def embed_text(self, text: str, parser: SceneGraphParser | None = None) -> np.ndarray:
        """(D,) embedding of a caption (parsed with `parser`, spaCy if None)."""
        from keras import ops

        from cora_keras.export import captions_to_tensors

        tensors = captions_to_tensors([text], self.vocabulary, self.config.model, parser)
        caption = self.model().encode_captions(tensors, training=False)["caption"]
        return ops.convert_to_numpy(caption)[0]

    def text_report(self, text: str, k: int, parser: SceneGraphParser | None = None) -> str:
        """The top k images for `text`, each shown with its first caption."""
        hits = top_images(self.index, self.embed_text(text, parser), k)
        lines = [f'text: "{text}"', f"top {len(hits)} images of {self.split.name}:"]
        for rank, hit in enumerate(hits, start=1):
            caption = self.split.captions[hit.index * CAPTIONS_PER_IMAGE]
            lines.append(f"{rank:4d}   {hit.score:7.4f}  image {hit.index:<6d} {caption}")
        return "\n".join(lines)

    def image_report(self, image: int, k: int) -> str:
        """The top k captions and entity phrases for image `image`; `*` marks
        those from the image's own captions."""
        _check_image(self.index, image)
        own = range(image * CAPTIONS_PER_IMAGE, (image + 1) * CAPTIONS_PER_IMAGE)
        caption_hits = top_captions(self.index, image, k)
        entity_hits = top_entities(self.index, image, k)
        own_phrases = distinct_entities([self.split.graphs[j] for j in own], self.config.model)
        lines = [
            f"image {image} of {self.split.name} (* = from its own captions)",
            f"top {len(caption_hits)} captions:",
        ]
        for rank, hit in enumerate(caption_hits, start=1):
            mark = "*" if hit.index in own else " "
            lines.append(
                f"{rank:4d} {mark} {hit.score:7.4f}  caption {hit.index:<6d} "
                f"(image {hit.index // CAPTIONS_PER_IMAGE}) {self.split.captions[hit.index]}"
            )
        lines.append(f"top {len(entity_hits)} entity phrases:")
        for rank, hit in enumerate(entity_hits, start=1):
            phrase = str(self.index.entity_phrases[hit.index])
            mark = "*" if phrase in own_phrases else " "
            lines.append(f"{rank:4d} {mark} {hit.score:7.4f}  {phrase}")
        return "\n".join(lines)


def search(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str,
    *,
    text: str | None = None,
    image: int | None = None,
    top: int = 5,
) -> str:
    """The ranked results of one query (`text` or `image`, not both) as text."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one query: text or image")
    if top < 1:
        raise ValueError(f"top must be >= 1; got {top}")
    session = SplitSearch(run_dir, data_dir, split)
    return session.text_report(text, top) if text is not None else session.image_report(image, top)
