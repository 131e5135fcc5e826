"""Samples per second of the training input pipeline at the paper's shapes.

Usage (from the repo root): python -m benchmarks.pipeline [--images 2000] [--batches 60]
       [--batch-size 128] [--parallel-calls 2] [--keep]

Writes a synthetic precomp split (images x 36 x 2048 float32, written in
chunks through a memory map; 2,000 images = 590 MB) with 5 synthetic
captions per image (2 to 6 entities, 0 to 2 attributes each, a relation
chaining them) and their scene graphs into a temporary directory, then
times: the stages of one batch (sampling, feature reads, region dropout),
the numpy batch builder alone, and the tf.data pipeline after a warm-up.
The last line is `samples/s: X` for the tf.data pipeline.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cora_keras.config import Config
from cora_keras.data.datasets import Split, load_split
from cora_keras.data.pipeline import TrainingBatches, drop_regions, training_dataset
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph, write_jsonl
from cora_keras.scene_graph.vocabulary import Vocabulary

NAMES = (
    "man woman dog cat bike car tree shirt hat ball street table girl boy water".split()
)
ATTRIBUTES = "red blue young old small large wooden black white smiling wet".split()
PREDICATES = ["on", "near", "holding", "wearing", "next to", "in front of", "riding"]


def synthetic_graph(rng: np.random.Generator) -> SceneGraph:
    """A caption of 2 to 6 entities chained by relations, and its graph."""
    entities = [
        Entity(
            str(rng.choice(NAMES)),
            [
                str(a)
                for a in rng.choice(ATTRIBUTES, int(rng.integers(0, 3)), replace=False)
            ],
        )
        for _ in range(int(rng.integers(2, 7)))
    ]
    relations = [
        Relation(i, str(rng.choice(PREDICATES)), i + 1)
        for i in range(len(entities) - 1)
    ]
    words = [" ".join(["a", *entities[0].attributes, entities[0].name])]
    for relation in relations:
        entity = entities[relation.object]
        words.append(
            " ".join([relation.predicate, "a", *entity.attributes, entity.name])
        )
    return SceneGraph(" ".join(words), entities, relations)


def write_split(data_dir: Path, images: int, feature_size: int, seed: int) -> None:
    """train_ims.npy, train_caps.txt, scene_graphs/train.jsonl, vocab.json."""
    rng = np.random.default_rng(seed)
    features = np.lib.format.open_memmap(
        data_dir / "train_ims.npy",
        mode="w+",
        dtype=np.float32,
        shape=(images, 36, feature_size),
    )
    for start in range(0, images, 100):
        stop = min(start + 100, images)
        features[start:stop] = rng.standard_normal(
            (stop - start, 36, feature_size), dtype=np.float32
        )
    features.flush()
    del features
    graphs = [synthetic_graph(rng) for _ in range(5 * images)]
    (data_dir / "train_caps.txt").write_text(
        "".join(graph.caption + "\n" for graph in graphs), encoding="utf-8"
    )
    (data_dir / "scene_graphs").mkdir()
    write_jsonl(graphs, data_dir / "scene_graphs" / "train.jsonl")
    Vocabulary.build(graphs).save(data_dir / "vocab.json")


def time_stages(split: Split, encoder: GraphEncoder, config: Config) -> None:
    """Seconds per batch of each stage of TrainingBatches.batch."""
    batches = TrainingBatches(split, encoder, config, seed=1)
    indices = batches.order(0)[: batches.batch_size]
    images = indices // 5
    start = time.perf_counter()
    for index in indices:
        rng = np.random.default_rng([1, 0, int(index)])
        rng.random(36)
        encoder.encode(split.graphs[index], rng)
    sampling = time.perf_counter() - start
    start = time.perf_counter()
    regions = split.features.read_many(images)
    reading = time.perf_counter() - start
    keep = np.random.default_rng(0).random((len(indices), 36)) >= 0.35
    start = time.perf_counter()
    drop_regions(regions, keep)
    dropout = time.perf_counter() - start
    print(
        f"one batch of {len(indices)}: sampling {sampling * 1e3:.1f} ms, "
        f"feature read {reading * 1e3:.1f} ms, region dropout {dropout * 1e3:.1f} ms"
    )


def samples_per_second(batches, count: int, batch_size: int) -> float:
    iterator = iter(batches)
    for _ in range(3):  # warm-up: threads, page cache, first traces
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--feature-size", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--parallel-calls", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="cora_pipeline_bench_"))
    try:
        start = time.perf_counter()
        write_split(data_dir, args.images, args.feature_size, seed=0)
        print(f"wrote {data_dir} in {time.perf_counter() - start:.1f} s")
        config = Config()
        config.model.region_feature_size = args.feature_size
        config.train.batch_size = args.batch_size
        config.data.parallel_calls = args.parallel_calls
        split = load_split(data_dir, "train", config)
        encoder = GraphEncoder(split.vocabulary, config.model, config.augment)
        count = min(args.batches, split.num_captions // args.batch_size - 3)

        time_stages(split, encoder, config)
        numpy_batches = TrainingBatches(split, encoder, config, seed=0).epoch(0)
        rate = samples_per_second(numpy_batches, count, args.batch_size)
        print(f"numpy batches (one thread): {rate:.0f} samples/s")
        dataset = training_dataset(split, encoder, config, seed=0)
        rate = samples_per_second(dataset, count, args.batch_size)
        print(f"tf.data, parallel_calls={args.parallel_calls}, {count} batches")
        print(f"samples/s: {rate:.0f}")
    finally:
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir)


if __name__ == "__main__":
    main()
