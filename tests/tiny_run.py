"""A tiny run directory and a hand-made split, for export and search tests.

The split's scene graphs are written by hand (no spaCy), its vocabulary is
made without tagging, and the model has small dimensions and random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cora_keras.config import Config, config_from_dict, save_config
from cora_keras.run import BEST_WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph, write_jsonl
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary

WORDS = (
    "cube", "sphere", "cone", "red", "blue", "green", "large", "small", "metal",
    "next", "to", "left", "of", "and", "with",
)
TINY_CONFIG = {
    "model": {
        "embed_size": 16,
        "composer_hidden": 16,
        "word_dim": 8,
        "vocab_size": 24,
        "region_feature_size": 12,
        "num_regions": 6,
        "max_entities": 4,
        "max_attributes": 2,
        "max_relations": 3,
        "max_caption_relations": 4,
        "max_phrase_tokens": 5,
        "num_heads": 2,
        "gpo_hidden": 8,
    },
    "data": {"features": "precomp"},
    "train": {"eval_batch_size": 4},
}
SPLIT = "test"


def tiny_vocabulary() -> Vocabulary:
    return Vocabulary([*SPECIAL_TOKENS, *WORDS], {}, {}, [])


def write_run(run_dir: Path, seed: int = 0, binding_axes: int = 0) -> tuple[Config, object, Vocabulary]:
    """config.yaml, vocab.json and best.weights.h5 of a random tiny model
    (with `binding_axes`, a spatial binding whose weights are all random)."""
    import keras

    from cora_keras.model import CoraModel
    from tests.helpers import randomize_weights

    run_dir.mkdir(parents=True, exist_ok=True)
    config = config_from_dict({**TINY_CONFIG, "model": {**TINY_CONFIG["model"], "binding_axes": binding_axes}})
    keras.utils.set_random_seed(seed)
    model = CoraModel(config.model, config.loss)
    model.build()
    if binding_axes:
        randomize_weights(model.spatial_binding, seed)  # its predicate read-out starts at zero
    vocabulary = tiny_vocabulary()
    save_config(config, run_dir / CONFIG_FILE)
    vocabulary.save(run_dir / VOCAB_FILE)
    model.save_weights(run_dir / BEST_WEIGHTS_FILE)
    return config, model, vocabulary


def split_graphs() -> list[SceneGraph]:
    """Five captions for each of three images; caption 0 has 5 entities (> E)."""
    def entity(text: str) -> Entity:
        *attributes, name = text.split()
        return Entity(name, attributes)

    phrases = [
        ["large red cube", "small metal sphere", "blue cone", "green cube", "red sphere"],
        ["red cube"], ["large cube", "metal sphere"], ["red large metal cube"], ["cube"],
        ["blue sphere"], ["small blue sphere", "green cone"], ["sphere"], ["blue sphere"], ["cone"],
        ["green cone"], ["green cone", "red cube"], ["cone"], ["small green cone"], ["cube"],
    ]
    graphs = []
    for entities in phrases:
        relations = [Relation(0, "next to", 1)] if len(entities) > 1 else []
        caption = "A " + " next to a ".join(entities) + "."
        graphs.append(SceneGraph(caption, [entity(e) for e in entities], relations))
    return graphs


def write_split(data_dir: Path, config: Config, seed: int = 0) -> list[SceneGraph]:
    """`test_caps.txt`, `test_ims.npy`, `scene_graphs/test.jsonl`, `vocab.json`."""
    graphs = split_graphs()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / f"{SPLIT}_caps.txt").write_text(
        "".join(g.caption + "\n" for g in graphs), encoding="utf-8"
    )
    shape = (len(graphs) // 5, config.model.num_regions, config.model.region_feature_size)
    regions = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    np.save(data_dir / f"{SPLIT}_ims.npy", regions)
    (data_dir / "scene_graphs").mkdir(exist_ok=True)
    write_jsonl(graphs, data_dir / "scene_graphs" / f"{SPLIT}.jsonl")
    tiny_vocabulary().save(data_dir / "vocab.json")
    return graphs
