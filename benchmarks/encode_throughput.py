"""Captions per second of GraphEncoder.encode, with and without sampling.

Usage (from the repository root):
    python -m benchmarks.encode_throughput [GRAPHS.jsonl]

Without a JSONL file, graphs of typical size (1-6 entities, 0-3 attributes
each, 0-5 relations) are made from the words of the Flickr30K test captions
in ../shared/data (seeded, so the figure is comparable between runs).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from cora_keras.config import Config
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph, read_jsonl
from cora_keras.scene_graph.vocabulary import Vocabulary, tokenize

CAPTIONS = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "captions", "f30k_test_caps.txt"
)


def synthetic_graphs(count: int, seed: int = 0) -> list[SceneGraph]:
    """Random graphs whose phrases are word spans of real captions."""
    rng = np.random.default_rng(seed)
    with open(CAPTIONS, encoding="utf-8") as f:
        captions = [tokenize(line) for line in f if line.strip()]
    graphs = []
    for i in range(count):
        words = captions[i % len(captions)]

        def phrase(longest: int) -> str:
            start = int(rng.integers(len(words)))
            return " ".join(words[start : start + int(rng.integers(1, longest + 1))])

        n = int(rng.integers(1, 7))
        entities = [
            Entity(phrase(2), [phrase(3) for _ in range(int(rng.integers(0, 4)))])
            for _ in range(n)
        ]
        relations = [
            Relation(int(rng.integers(n)), phrase(2), int(rng.integers(n)))
            for _ in range(int(rng.integers(0, 6)))
        ]
        graphs.append(SceneGraph(" ".join(words), entities, relations))
    return graphs


def captions_per_second(encoder: GraphEncoder, graphs: list[SceneGraph], sample: bool) -> float:
    rng = np.random.default_rng(0) if sample else None
    start = time.perf_counter()
    for graph in graphs:
        encoder.encode(graph, rng)
    return len(graphs) / (time.perf_counter() - start)


def main() -> None:
    graphs = read_jsonl(sys.argv[1]) if len(sys.argv) > 1 else synthetic_graphs(20000)
    config = Config()
    encoder = GraphEncoder(Vocabulary.build(graphs), config.model, config.augment)
    stats = (
        np.mean([len(g.entities) for g in graphs]),
        np.mean([len(e.attributes) for g in graphs for e in g.entities]),
        np.mean([len(g.relations) for g in graphs]),
    )
    print(f"{len(graphs)} graphs: {stats[0]:.2f} entities, {stats[1]:.2f} attributes "
          f"per entity, {stats[2]:.2f} relations per graph")
    captions_per_second(encoder, graphs[:2000], sample=True)  # fill the caches
    for sample in (False, True):
        best = max(captions_per_second(encoder, graphs, sample) for _ in range(3))
        mode = "sampling  " if sample else "evaluation"
        print(f"encode, {mode}: {best:,.0f} captions/s (best of 3, one process)")
    start = time.perf_counter()
    for i in range(0, len(graphs), 128):
        encoder.encode_batch(graphs[i : i + 128], np.random.default_rng(i))
    rate = len(graphs) / (time.perf_counter() - start)
    print(f"encode_batch(128), sampling: {rate:,.0f} captions/s")


if __name__ == "__main__":
    main()
