"""Throughput of split embedding and the retrieval protocol (`cora-keras evaluate`).

    KERAS_BACKEND=jax python -m benchmarks.evaluate --config configs/demo.yaml
    KERAS_BACKEND=jax python -m benchmarks.evaluate --config configs/f30k_gru.yaml \
        --set model.attribute_budget=5

Generates (once; kept in --data) a demo world of --images test scenes at the
config's region feature size, parses its captions (cached), builds the
model with random weights and embeds the test split with `SplitEmbedder`
--repeats times: the first run includes compiling the towers. Then times
`protocol_metrics` on the embeddings. Each line gives wall and CPU seconds
and the load average (the machine is shared); the last lines are
`images/s: X` and `captions/s: Y` of the fastest run (images and captions
embedded one after the other, each rate over its own tower's time).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import keras

from cora_keras.config import load_config
from cora_keras.data.datasets import load_split
from cora_keras.data.demo_world import generate_demo_world
from cora_keras.data.pipeline import evaluation_dataset
from cora_keras.evaluation import SplitEmbedder, protocol_metrics
from cora_keras.model import CoraModel
from cora_keras.scene_graph.encode import GraphEncoder


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Timed:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "_Timed":
        self.load = os.getloadavg()[0]
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU, load average {self.load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--images", type=int, default=1000, help="test scenes (5 captions each)")
    parser.add_argument("--data", default=None, help="demo world directory (default under /tmp)")
    parser.add_argument("--batch-size", type=int, default=None, help="default train.eval_batch_size")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    feature_size = config.model.region_feature_size
    data = args.data or f"/tmp/cora_benchmark_world_{args.images}_{feature_size}"
    generate_demo_world(data, train_scenes=200, dev_scenes=1, test_scenes=args.images, feature_size=feature_size)
    train_split = load_split(data, "train", config, parse_processes=2)
    config.model.vocab_size = len(train_split.vocabulary)
    split = load_split(data, "test", config)
    encoder = GraphEncoder(split.vocabulary, config.model, config.augment)

    model = CoraModel(config.model, config.loss)
    model.build()
    embedder = SplitEmbedder(model, config, args.batch_size)
    print(f"backend: {keras.backend.backend()}  config: {args.config}  D: {config.model.embed_size}  "
          f"F: {feature_size}  batch: {embedder.batch_size}  images: {split.num_images}  "
          f"captions: {split.num_captions}")

    datasets = evaluation_dataset(split, encoder, config, embedder.batch_size)
    with _Timed() as reading:
        for dataset in (datasets.images, datasets.captions):
            for _ in dataset.as_numpy_iterator():
                pass
    print(f"input pipeline alone (read + encode graphs): {reading}")

    best_images = best_captions = float("inf")
    for run in range(args.repeats):
        with _Timed() as images:
            image_embeddings = embedder.embed_images(split, encoder)
        with _Timed() as captions:
            caption_embeddings = embedder.embed_captions(split, encoder)
        best_images, best_captions = min(best_images, images.wall), min(best_captions, captions.wall)
        print(f"run {run + 1}: images {images}; captions {captions}")

    with _Timed() as protocol:
        results = protocol_metrics(config.data.dataset, image_embeddings, caption_embeddings)
    print(f"protocol {', '.join(results)}: {protocol}")
    print(f"images/s: {split.num_images / best_images:.0f}")
    print(f"captions/s: {split.num_captions / best_captions:.0f}")


if __name__ == "__main__":
    main()
