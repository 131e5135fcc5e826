"""Random model batches with controlled statistics (benchmarks and tests)."""

from __future__ import annotations

import numpy as np

from cora_keras.config import ModelConfig
from cora_keras.inputs import caption_specs, image_specs, target_specs


def synthetic_batch(
    config: ModelConfig,
    batch_size: int,
    rng: np.random.Generator,
    regions: tuple[int, int] = (20, 36),
    entities: tuple[int, int] = (2, 6),
    attributes: tuple[int, int] = (0, 2),
    words: tuple[int, int] = (1, 3),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One (x, y) batch: valid counts and phrase lengths uniform in the ranges.

    Each caption of two or more entities gets 1 to (number of entities)
    relations between random entity pairs; word ids are uniform over the vocabulary past the five
    special tokens; name and attribute ids are small integers so entities
    of different captions sometimes match.
    """
    specs = {**image_specs(config), **caption_specs(config), **target_specs(config)}
    arrays = {name: np.zeros((batch_size, *shape), dtype) for name, (shape, dtype) in specs.items()}
    t = config.max_phrase_tokens
    low = 5

    def phrase():
        k = int(rng.integers(words[0], min(words[1], t - 2) + 1))
        return [2, *rng.integers(low, config.vocab_size, size=k), 3]

    for b in range(batch_size):
        count = int(rng.integers(regions[0], regions[1] + 1))
        arrays["regions"][b, :count] = rng.standard_normal((count, config.region_feature_size))
        arrays["region_counts"][b] = count
        n = int(rng.integers(entities[0], min(entities[1], config.max_entities) + 1))
        for e in range(n):
            tokens = phrase()
            arrays["entity_tokens"][b, e, : len(tokens)] = tokens
            name = int(rng.integers(1, 20))
            arrays["entity_name_ids"][b, e] = arrays["graph_name_ids"][b, e] = name
            for a in range(int(rng.integers(attributes[0], min(attributes[1], config.max_attributes) + 1))):
                tokens = phrase()
                arrays["attribute_tokens"][b, e, a, : len(tokens)] = tokens
                attribute = int(rng.integers(1, 10))
                arrays["entity_attribute_ids"][b, e, a] = arrays["graph_attribute_ids"][b, e, a] = attribute
        relations = int(rng.integers(1, n + 1)) if n > 1 else 0
        for r in range(min(relations, config.max_caption_relations)):
            tokens = phrase()
            arrays["relation_tokens"][b, r, : len(tokens)] = tokens
            arrays["relation_subject"][b, r], arrays["relation_object"][b, r] = rng.choice(n, 2, replace=False)
        arrays["image_ids"][b] = b
    targets = {name: arrays.pop(name) for name in target_specs(config)}
    return arrays, targets
