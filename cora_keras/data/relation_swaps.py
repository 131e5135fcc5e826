"""Which relation of each training caption the relation-swap term reverses."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from cora_keras.scene_graph.encode import GraphEncoder


def symmetric_predicate_rows(encoder: GraphEncoder, predicates: Iterable[str]) -> frozenset[bytes]:
    """The token rows (as bytes) the encoder writes for these predicates."""
    return frozenset(encoder.phrase_row(predicate).tobytes() for predicate in predicates)


def swap_relation_slots(captions: dict[str, np.ndarray], symmetric_rows: frozenset[bytes]) -> np.ndarray:
    """(B,) int32: per caption, its first relation slot whose predicate is
    not symmetric and whose subject and object are described differently
    (name or attributes); -1 where there is none.

    `captions` holds the encoded caption arrays of `cora_keras.inputs`.
    """
    relations = captions["relation_tokens"].astype(np.int32, copy=False)
    names, attributes = captions["entity_tokens"], captions["attribute_tokens"]
    slots = np.full(len(relations), -1, dtype=np.int32)
    for b, (rows, subjects, objects) in enumerate(
        zip(relations, captions["relation_subject"], captions["relation_object"])
    ):
        for k, (row, s, o) in enumerate(zip(rows, subjects, objects)):
            if not row.any():
                break  # real relations come first
            if row.tobytes() in symmetric_rows or _same_description(names[b], attributes[b], s, o):
                continue
            slots[b] = k
            break
    return slots


def _same_description(names: np.ndarray, attributes: np.ndarray, s: int, o: int) -> bool:
    if not np.array_equal(names[s], names[o]):
        return False
    return sorted(map(bytes, attributes[s])) == sorted(map(bytes, attributes[o]))
