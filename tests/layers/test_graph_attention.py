"""GraphAttention (MODEL.md 2.2): GATv2-style scores, adjacency masking, query residual."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cora_keras.layers.graph_attention import GraphAttention
from tests.helpers import (
    assert_config_round_trip,
    dense_numpy,
    graph_attention_numpy,
    numpy64,
    randomize_weights,
)
from tests.reference_cora import layer_norm

HIDDEN, HEADS, NODES = 8, 2, 5


@pytest.fixture(scope="module")
def layer() -> GraphAttention:
    graph = GraphAttention(HIDDEN, HEADS)
    graph.build((None, NODES, HIDDEN))
    randomize_weights(graph, seed=0)
    return graph


def _nodes(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, NODES, HIDDEN)).astype(np.float32)


def test_hidden_must_split_into_heads() -> None:
    with pytest.raises(ValueError, match="hidden=6 is not divisible by num_heads=4"):
        GraphAttention(6, 4)


def test_score_formula_by_hand() -> None:
    # Hidden 4, 2 heads of 2. Node 0 attends to nodes 0 and 1 (not 2).
    graph = GraphAttention(4, 2)
    graph.build()
    graph.score_vectors.assign(np.array([[1.0, 2.0], [0.0, 0.0]], np.float32))
    graph.score_bias.assign(np.array([0.5, 0.0], np.float32))
    q = np.array([[[1, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    k = np.array([[[0, 0, 0, 0], [1, 1, 0, 0], [9, 9, 9, 9]]], np.float32)
    v = np.array([[[1, 0, 1, 1], [0, 1, 2, 3], [5, 5, 5, 5]]], np.float32)
    adjacency = np.array([[[1, 1, 0], [1, 1, 1], [0, 1, 1]]], np.float32)
    messages = numpy64(graph.attend(q, k, v, adjacency))
    # Head 0: s_00 = 1*1 + 2*LeakyReLU(-1) + .5 = 1.1, s_01 = 1*2 + 2*0 + .5 = 2.5.
    alpha_01 = 1.0 / (1.0 + math.exp(-1.4))
    np.testing.assert_allclose(messages[0, 0, :2], [1 - alpha_01, alpha_01], atol=1e-6)
    # Head 1 scores are all 0: node 0 averages v_0 and v_1.
    np.testing.assert_allclose(messages[0, 0, 2:], [1.5, 2.0], atol=1e-6)


def test_scores_match_pair_loops(layer: GraphAttention) -> None:
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 3, HIDDEN)).astype(np.float32) for _ in range(3))
    adjacency = np.array([[[1, 0, 1], [1, 1, 0], [0, 1, 0]]], np.float32)
    a, beta = numpy64(layer.score_vectors), numpy64(layer.score_bias)
    size = HIDDEN // HEADS
    expected = np.zeros((3, HIDDEN))
    for i in range(3):
        for c in range(HEADS):
            part = slice(c * size, (c + 1) * size)
            neighbours = [j for j in range(3) if adjacency[0, i, j]]
            scores = []
            for j in neighbours:
                pair = q[0, i, part] + k[0, j, part]
                scores.append(sum(a[c, d] * (p if p > 0 else 0.2 * p) for d, p in enumerate(pair)) + beta[c])
            weights = np.exp(np.array(scores) - max(scores))
            weights /= weights.sum()
            expected[i, part] = sum(w * v[0, j, part] for w, j in zip(weights, neighbours))
    np.testing.assert_allclose(numpy64(layer.attend(q, k, v, adjacency))[0], expected, atol=1e-5)


def test_call_matches_numpy_dense(layer: GraphAttention) -> None:
    rng = np.random.default_rng(2)
    nodes = _nodes(3)
    adjacency = np.maximum(rng.random((2, NODES, NODES)) < 0.4, np.eye(NODES)).astype(np.float32)
    expected = graph_attention_numpy(layer, nodes.astype(np.float64), adjacency)
    np.testing.assert_allclose(numpy64(layer(nodes, adjacency)), expected, atol=1e-5)


def test_nodes_outside_the_adjacency_have_no_influence(layer: GraphAttention) -> None:
    # Two components: {0, 1, 2} and {3, 4}.
    adjacency = np.zeros((2, NODES, NODES), np.float32)
    adjacency[:, :3, :3] = [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    adjacency[:, 3:, 3:] = 1.0
    nodes = _nodes(4)
    perturbed = nodes.copy()
    perturbed[:, 3:] = 100.0 * _nodes(5)[:, 3:]
    before, after = numpy64(layer(nodes, adjacency)), numpy64(layer(perturbed, adjacency))
    np.testing.assert_allclose(after[:, :3], before[:, :3], atol=1e-6)
    assert not np.allclose(after[:, 3:], before[:, 3:])


def test_a_single_neighbour_passes_its_value(layer: GraphAttention) -> None:
    # Node 2's only neighbour is node 0: out_2 = ReLU(LN(v_0 + q_2)).
    adjacency = np.ones((1, NODES, NODES), np.float32)
    adjacency[0, 2] = [1, 0, 0, 0, 0]
    nodes = _nodes(6, batch=1)
    x = nodes[0].astype(np.float64)
    v0, q2 = dense_numpy(layer.value, x[0]), dense_numpy(layer.query, x[2])
    norm = layer.norm
    expected = np.maximum(layer_norm(v0 + q2, numpy64(norm.gamma), numpy64(norm.beta)), 0.0)
    np.testing.assert_allclose(numpy64(layer(nodes, adjacency))[0, 2], expected, atol=1e-5)


def test_value_dropout_only_in_training() -> None:
    graph = GraphAttention(HIDDEN, HEADS, dropout=0.5)
    nodes, adjacency = _nodes(7), np.ones((2, NODES, NODES), np.float32)
    graph.build()
    inference = numpy64(graph(nodes, adjacency))
    expected = graph_attention_numpy(graph, nodes.astype(np.float64), adjacency)
    np.testing.assert_allclose(inference, expected, atol=1e-5)
    assert not np.allclose(numpy64(graph(nodes, adjacency, training=True)), inference)


def test_config_round_trip(layer: GraphAttention) -> None:
    nodes, adjacency = _nodes(8), np.ones((2, NODES, NODES), np.float32)
    assert_config_round_trip(layer, lambda graph: graph(nodes, adjacency))
