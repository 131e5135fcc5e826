"""Sinusoidal position codes (the Transformer formula of MODEL.md)."""

from __future__ import annotations

import numpy as np
from keras import ops


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """Codes of positions 0..length-1: sin on even channels, cos on odd.

    Channel 2i of position p is sin(p / 10000^(2i/dim)), channel 2i+1 the
    cosine of the same angle.
    """
    positions = np.arange(length, dtype=np.float64)[:, None]
    rates = np.power(10000.0, np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions / rates
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table.astype(np.float32)


def length_mask(counts, length: int):
    """(B, length) float mask, 1 at positions below each row's count."""
    positions = ops.arange(length, dtype="int32")
    return ops.cast(positions[None, :] < ops.cast(counts, "int32")[:, None], "float32")


def masked_sinusoid(counts, length: int, dim: int):
    """(B, length, dim) codes of positions 0..count-1, zeros past the count."""
    table = ops.convert_to_tensor(sinusoid_table(length, dim))
    return table[None, :, :] * length_mask(counts, length)[:, :, None]
