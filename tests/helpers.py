"""Shared pieces of the layer and model tests.

NumPy re-computations that read a layer's own weights, so that a keras.ops
implementation can be checked against a second, differently written one
(float64, explicit per-head loops), plus the small model config the model
tests share.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np

from cora_keras.config import ModelConfig
from cora_keras.layers.graph_attention import GraphAttention
from cora_keras.layers.gru import LengthMaskedGRU
from tests.reference_cora import GruWeights, layer_norm, softmax


def small_model_config(**overrides: Any) -> ModelConfig:
    """A CoraModel small enough for CPU tests (D=64, W=32, F=32, vocab 100).

    E=8 and K=8 exceed the default per-caption budgets (6), so a batch of
    8 captions is really packed (`inputs.phrase_budgets`).
    """
    values = dict(
        embed_size=64,
        composer_hidden=64,
        word_dim=32,
        vocab_size=100,
        region_feature_size=32,
        num_regions=6,
        max_entities=8,
        max_attributes=2,
        max_caption_relations=8,
        max_phrase_tokens=4,
    )
    values.update(overrides)
    return ModelConfig(**values)


def real_relations(x: dict) -> list[tuple[int, int, int, int]]:
    """(caption, slot, subject, object) of every relation of a caption batch
    whose predicate and both ends are real, in caption then slot order."""
    found = []
    for b in range(len(x["relation_tokens"])):
        real_entities = (x["entity_tokens"][b] != 0).any(-1)
        for k in range(x["relation_tokens"].shape[1]):
            s, o = int(x["relation_subject"][b, k]), int(x["relation_object"][b, k])
            if (x["relation_tokens"][b, k] != 0).any() and real_entities[s] and real_entities[o]:
                found.append((b, k, s, o))
    return found


def numpy64(x: Any) -> np.ndarray:
    """Any backend's tensor as a float64 NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def gradient(scalar_fn: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    """d scalar_fn(x) / dx (float64 NumPy) by the running backend's autodiff."""
    x = np.asarray(x, dtype=np.float32)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return numpy64(jax.grad(scalar_fn)(x))
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = scalar_fn(variable)
        return numpy64(tape.gradient(value, variable))
    import torch

    variable = torch.tensor(x, requires_grad=True)
    scalar_fn(variable).backward()
    return numpy64(variable.grad)


def gru_weights(gru: LengthMaskedGRU) -> GruWeights:
    """A `LengthMaskedGRU`'s weights in the PyTorch layout of `reference_cora`.

    Keras keeps kernel (in, 3u) with gate columns (z, r, h); PyTorch keeps
    weight_ih (3u, in) with gate rows (r, z, n).
    """
    u = gru.units

    def torch_order(matrix: np.ndarray) -> np.ndarray:
        z, r, n = matrix[..., :u], matrix[..., u : 2 * u], matrix[..., 2 * u :]
        return np.concatenate([r, z, n], axis=-1)

    bias = numpy64(gru.bias)
    return (
        torch_order(numpy64(gru.kernel)).T,
        torch_order(numpy64(gru.recurrent_kernel)).T,
        torch_order(bias[0]),
        torch_order(bias[1]),
    )


def dense_numpy(dense: keras.layers.Dense, x: np.ndarray) -> np.ndarray:
    """A Keras Dense layer (linear part, then its activation) in NumPy."""
    y = x @ numpy64(dense.kernel)
    if dense.use_bias:
        y = y + numpy64(dense.bias)
    if dense.activation is keras.activations.relu:
        y = np.maximum(y, 0.0)
    return y


def graph_attention_numpy(
    layer: GraphAttention, nodes: np.ndarray, adjacency: np.ndarray
) -> np.ndarray:
    """`GraphAttention` over dense nodes (b, n, H), adjacency (b, n, n), no dropout.

    MODEL.md 2.2 written head by head: s_ij = a_c . LeakyReLU(q_i + k_j) + beta_c,
    -1e9 off the adjacency, softmax over j, ReLU(LayerNorm(messages + q)).
    """
    q, k, v = (dense_numpy(d, nodes) for d in (layer.query, layer.key, layer.value))
    vectors, biases = numpy64(layer.score_vectors), numpy64(layer.score_bias)
    size = layer.hidden // layer.num_heads
    messages = np.zeros_like(q)
    for c in range(layer.num_heads):
        part = slice(c * size, (c + 1) * size)
        pair = q[:, :, None, part] + k[:, None, :, part]
        pair = np.maximum(pair, 0.2 * pair)
        scores = pair @ vectors[c] + biases[c]
        scores = np.where(adjacency > 0, scores, -1e9)
        messages[..., part] = softmax(scores, axis=-1) @ v[..., part]
    norm = layer.norm
    return np.maximum(layer_norm(messages + q, numpy64(norm.gamma), numpy64(norm.beta)), 0.0)


def randomize_weights(layer: keras.layers.Layer, seed: int, scale: float = 0.5) -> None:
    """Give every weight (biases, norms, score vectors too) random values."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(0.0, scale, weight.shape).astype(weight.dtype))


def assert_config_round_trip(
    layer: keras.layers.Layer, run: Callable[[keras.layers.Layer], Any]
) -> None:
    """`from_config(get_config())` rebuilds the same layer: same config, and the
    same outputs once given the original's weights. `run(layer)` calls it."""
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    run(clone)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(numpy64(run(clone)), numpy64(run(layer)), rtol=1e-6, atol=1e-6)
