"""Packing of real slots into fixed per-batch budgets, and scattering back.

The text tower encodes only real phrases: slots (entities, attributes,
relations) are flattened, the real ones moved to the front in slot order
and cut to a static budget, encoded, then gathered back into their slots
with zeros for padding. Shapes stay static, so XLA compiles once.
"""

from __future__ import annotations

from keras import ops


def pack_slots(mask, budget: int | None):
    """Indices of the real slots of a flat (S,) mask, real first.

    Returns `indices` (P,) into the slots, `valid` (P,) bool and
    `inverse` (S,) giving each slot's packed position, or P for slots that
    are padding or past the budget (the zero row of `unpack`). With
    `budget=None` nothing is cut (P = S). Real slots past the budget are
    dropped: the input pipeline checks budgets so that this never happens.
    """
    mask = ops.cast(mask, "bool")
    size = ops.shape(mask)[0]
    positions = ops.cumsum(ops.cast(mask, "int32")) - 1
    slots = ops.arange(size, dtype="int32")
    if budget is None:
        return slots, mask, ops.where(mask, slots, size)
    score = ops.cast(mask, "float32") * ops.cast(size, "float32") + ops.cast(
        size - 1 - slots, "float32"
    )
    _, indices = ops.top_k(score, k=budget, sorted=True)
    indices = ops.cast(indices, "int32")
    valid = ops.take(mask, indices, axis=0)
    inverse = ops.where(ops.logical_and(mask, positions < budget), positions, budget)
    return indices, valid, inverse


def pack_distinct(rows, budget: int):
    """The distinct rows of a (P, T) tensor, in order of first appearance.

    Returns `indices` (budget,) of each distinct row's first occurrence
    (then padding) and `inverse` (P,) giving each row's packed position,
    or `budget` for rows past it (the zero row of `unpack`). The input
    pipeline checks the budget so that this never happens.
    """
    size = ops.shape(rows)[0]
    same = ops.all(ops.expand_dims(rows, 1) == ops.expand_dims(rows, 0), axis=-1)
    first = ops.cast(ops.argmax(ops.cast(same, "int32"), axis=1), "int32")
    indices, _, inverse = pack_slots(first == ops.arange(size, dtype="int32"), budget)
    return indices, ops.take(inverse, first, axis=0)


def unpack(values, inverse):
    """Gather packed rows (P, ...) into slots by `inverse`; P gives zeros."""
    zero = ops.zeros_like(values[:1])
    return ops.take(ops.concatenate([values, zero], axis=0), inverse, axis=0)
