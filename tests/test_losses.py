"""The three-term objective (MODEL.md 3) against hand values and pair loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cora_keras.config import LossConfig
from cora_keras.losses import (
    bound_contrastive_loss,
    contrastive_positives,
    cora_objective,
    entity_match,
    hardest_triplet_loss,
    region_entity_cost,
    relation_readout_cost,
    relation_swap_loss,
    same_image,
    specificity_loss,
    supervised_contrastive_loss,
)
from tests.helpers import gradient, numpy64


def _unit(rows) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _value(x) -> float:
    return float(numpy64(x))


# ----------------------------------------------------- loop references


def contrastive_by_loops(images, texts, positives, temperature) -> float:
    """Term (a) pair by pair, over real columns only (every column has a positive)."""
    scores = [[float(np.dot(i, t)) / temperature for t in texts] for i in images]
    columns = [list(c) for c in zip(*scores)]
    transposed = [list(c) for c in zip(*positives)]

    def direction(rows, positive, eps):
        total = 0.0
        for row, pos in zip(rows, positive):
            top = max(row)
            negatives = sum(math.exp(s - top) for s, p in zip(row, pos) if not p)
            logs = [
                (s - top) - math.log(negatives + math.exp(s - top) + eps)
                for s, p in zip(row, pos)
                if p
            ]
            total += sum(logs) / len(logs)
        return -total / len(rows)

    return direction(scores, positives, 1e-9) + direction(columns, transposed, 1e-6)


def triplet_by_loops(images, captions, image_ids, margin) -> float:
    """Term (b): max violation per caption row and per image column."""
    n = len(images)
    g = [[float(np.dot(images[i], captions[j])) for j in range(n)] for i in range(n)]
    negative = [[image_ids[i] != image_ids[j] for j in range(n)] for i in range(n)]
    caption_cost = [
        max([max(0.0, margin + g[i][j] - g[i][i]) for j in range(n) if negative[i][j]] or [0.0])
        for i in range(n)
    ]
    image_cost = [
        max([max(0.0, margin + g[i][j] - g[j][j]) for i in range(n) if negative[i][j]] or [0.0])
        for j in range(n)
    ]
    return sum(caption_cost) / n + sum(image_cost) / n


def specificity_by_loops(images, captions, entities, entity_mask, margin) -> float:
    costs = [
        max(0.0, float(np.dot(images[b], entities[b, e])) + margin - float(np.dot(images[b], captions[b])))
        for b in range(len(images))
        for e in range(entity_mask.shape[1])
        if entity_mask[b, e]
    ]
    return sum(costs) / len(costs)


# ------------------------------------------------------- contrastive


def test_contrastive_two_orthogonal_pairs_by_hand() -> None:
    # S = I: each row and column has one positive at 1, one negative at 0.
    eye = np.eye(2, dtype=np.float32)
    loss = supervised_contrastive_loss(eye, eye, np.eye(2, dtype=bool), np.ones(2, bool), temperature=1.0)
    e = math.exp(-1.0)
    assert _value(loss) == pytest.approx(math.log(1 + e + 1e-9) + math.log(1 + e + 1e-6), rel=1e-6)


def _contrastive_case():
    """3 images, 3 captions + 4 entities; row 0 has three positives."""
    rng = np.random.default_rng(0)
    images = _unit(rng.standard_normal((3, 3)))
    texts = _unit(rng.standard_normal((7, 3)))
    positives = np.array(
        [
            # C0    C1     C2     Z0     Z1     Z2     Z3
            [True, False, False, True, True, False, False],
            [False, True, False, True, False, True, False],
            [False, False, True, False, False, False, True],
        ]
    )
    return images, texts, positives


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.01])
def test_contrastive_matches_pair_loops(temperature: float) -> None:
    images, texts, positives = _contrastive_case()
    loss = supervised_contrastive_loss(images, texts, positives, np.ones(7, bool), temperature)
    expected = contrastive_by_loops(images, texts, positives, temperature)
    assert _value(loss) == pytest.approx(expected, rel=1e-5)


def test_contrastive_padding_columns_change_nothing() -> None:
    images, texts, positives = _contrastive_case()
    # Padding columns equal to the images would dominate every max and sum.
    padded_texts = np.concatenate([texts[:4], images, texts[4:], images[:1]])
    padded_positives = np.concatenate(
        [positives[:, :4], np.eye(3, dtype=bool), positives[:, 4:], np.ones((3, 1), bool)], axis=1
    )
    mask = np.ones(11, bool)
    mask[[4, 5, 6, 10]] = False
    padded = supervised_contrastive_loss(images, padded_texts, padded_positives, mask, 0.01)
    plain = contrastive_by_loops(images, texts, positives, 0.01)
    assert _value(padded) == pytest.approx(plain, rel=1e-5)


def test_bound_contrastive_trains_the_main_part_as_if_alone() -> None:
    # Main dimensions (3) plus 2 binding dimensions on both sides.
    images, texts, positives = _contrastive_case()
    rng = np.random.default_rng(3)
    bound_images = np.concatenate([images, rng.normal(0, 0.5, (3, 2))], axis=1).astype(np.float32)
    bound_texts = np.concatenate([texts, rng.normal(0, 0.5, (7, 2))], axis=1).astype(np.float32)
    mask, tau = np.ones(7, bool), 0.1
    value = bound_contrastive_loss(bound_images, bound_texts, positives, mask, tau, 3)
    expected = contrastive_by_loops(images, texts, positives, tau) + contrastive_by_loops(
        bound_images, bound_texts, positives, tau
    )
    assert _value(value) == pytest.approx(expected, rel=1e-5)
    got = gradient(lambda x: bound_contrastive_loss(x, bound_texts, positives, mask, tau, 3), bound_images)
    main = gradient(lambda x: supervised_contrastive_loss(x, texts, positives, mask, tau), images)
    whole = gradient(lambda x: supervised_contrastive_loss(x, bound_texts, positives, mask, tau), bound_images)
    # The main part gets the main-only gradient, the binding the whole score's.
    np.testing.assert_allclose(got[:, :3], main, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[:, 3:], whole[:, 3:], rtol=1e-4, atol=1e-6)
    assert np.abs(whole[:, :3] - main).max() > 1e-3  # the whole score would move the main part otherwise


# ------------------------------------------------------ relation swap


def test_relation_swap_by_hand() -> None:
    # Row 0: I.C = 1, I.S = 0 at tau 0.5 -> log(1 + e^-2). Row 1 has no swap.
    images = np.array([[1, 0], [0, 1]], np.float32)
    captions = np.array([[1, 0], [1, 0]], np.float32)
    swaps = np.array([[0, 1], [0, 1]], np.float32)
    loss = relation_swap_loss(images, captions, swaps, np.array([True, False]), temperature=0.5)
    assert _value(loss) == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    none = relation_swap_loss(images, captions, swaps, np.array([False, False]), temperature=0.5)
    assert _value(none) == 0.0


# ------------------------------------------------------ region-entity


def test_region_entity_cost_by_loops() -> None:
    rng = np.random.default_rng(5)
    counts = np.array([4, 1, 3])
    rows = _unit(rng.standard_normal((3, 4, 6))) * (np.arange(4)[None, :] < counts[:, None])[..., None]
    entities = _unit(rng.standard_normal((4, 2, 6)))
    entity_mask = np.array([[True, True], [True, False], [False, False], [True, True]])
    owner = np.array([0, 0, 1, 2])
    got = numpy64(region_entity_cost(rows, counts, entities, entity_mask, owner, temperature=0.1))
    for b in range(4):
        expected = 0.0
        for e in range(2):
            if not entity_mask[b, e]:
                continue
            # Best valid row of each image: padded rows (zero) never count.
            best = [max(float(rows[i, r] @ entities[b, e]) for r in range(counts[i])) / 0.1 for i in range(3)]
            expected += math.log(sum(math.exp(v) for v in best)) - best[owner[b]]
        assert got[b] == pytest.approx(expected, rel=1e-5, abs=1e-9), b
    assert got[2] == 0.0


def test_relation_readout_cost_by_loops() -> None:
    rng = np.random.default_rng(6)
    counts = np.array([3, 2])
    rows = _unit(rng.standard_normal((2, 3, 4))) * (np.arange(3)[None, :] < counts[:, None])[..., None]
    places = rng.uniform(-1, 1, (2, 3, 2)).astype(np.float32)
    subjects, objects = _unit(rng.standard_normal((3, 4))), _unit(rng.standard_normal((3, 4)))
    image = np.array([0, 1, 1])
    signs = rng.standard_normal((3, 2)).astype(np.float32)
    got = numpy64(relation_readout_cost(rows, counts, places, subjects, objects, image, signs, temperature=0.2))

    def position(entity, i):
        weights = [math.exp(float(rows[i, r] @ entity) / 0.2) for r in range(counts[i])]
        return sum(w * places[i, r] for r, w in enumerate(weights)) / sum(weights)

    for p in range(3):
        i = image[p]
        score = float(signs[p] @ (position(subjects[p], i) - position(objects[p], i)))
        assert got[p] == pytest.approx(math.log1p(math.exp(-score)), rel=1e-5), p


# ----------------------------------------------------------- triplet


def _triplet_case():
    # G = I C^T = [[1, .6, .8], [0, .8, .6], [1, .6, .8]]; rows 0 and 2 show image 0.
    images = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    captions = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6]], np.float32)
    return images, captions


def test_triplet_same_image_pairs_are_not_negatives() -> None:
    images, captions = _triplet_case()
    same = same_image(np.array([0, 1, 0]))
    loss = hardest_triplet_loss(images, captions, same, margin=0.35)
    # Captions: rows (0, .15, .15); images: columns (0, .15, .15).
    assert _value(loss) == pytest.approx(0.1 + 0.1, abs=1e-6)
    assert _value(loss) == pytest.approx(triplet_by_loops(images, captions, [0, 1, 0], 0.35), abs=1e-6)


def test_triplet_distinct_images_by_hand() -> None:
    images, captions = _triplet_case()
    loss = hardest_triplet_loss(images, captions, np.eye(3, dtype=bool), margin=0.35)
    # Captions: rows (.15, .15, .55); images: columns (.35, .15, .35).
    assert _value(loss) == pytest.approx(0.85 / 3 + 0.85 / 3, abs=1e-6)


def test_triplet_warmup_form_sums_over_negatives_by_hand() -> None:
    images, captions = _triplet_case()
    distinct = np.eye(3, dtype=bool)
    summed = hardest_triplet_loss(images, captions, distinct, margin=0.35, hardest=0.0)
    # Caption rows (0, 0, .15), (0, 0, .15), (.55, .15, 0): sums .15, .15, .7;
    # image columns (0, 0, .35), (.15, 0, .15), (.35, .15, 0): sums .35, .3, .5.
    assert _value(summed) == pytest.approx(1.0 / 3 + 1.15 / 3, abs=1e-6)
    same = same_image(np.array([0, 1, 0]))
    # Same-image pairs drop out: caption sums 0, .15, .15; image sums 0, .3
    # (rows 0 and 2 both cost .15 against caption 1), .15.
    assert _value(hardest_triplet_loss(images, captions, same, 0.35, hardest=0.0)) == pytest.approx(
        0.3 / 3 + 0.45 / 3, abs=1e-6
    )


# ------------------------------------------------------- specificity


def test_specificity_by_hand_with_masked_entity() -> None:
    images = np.array([[1, 0], [0, 1]], np.float32)
    captions = np.array([[0.8, 0.6], [0, 1]], np.float32)
    entities = np.array(
        [
            [[0.6, 0.8], [1, 0]],  # caption 0 has one entity; the masked one would cost .55
            [[0.6, 0.8], [0, 1]],
        ],
        np.float32,
    )
    mask = np.array([[True, False], [True, True]])
    loss = specificity_loss(images, captions, entities, mask, margin=0.35)
    # Costs: .6 + .35 - .8 = .15, .8 + .35 - 1 = .15, 1 + .35 - 1 = .35.
    assert _value(loss) == pytest.approx((0.15 + 0.15 + 0.35) / 3, abs=1e-6)


def test_specificity_is_zero_when_captions_win_by_the_margin() -> None:
    images = np.array([[1, 0]], np.float32)
    captions = np.array([[1, 0]], np.float32)
    entities = np.array([[[0.6, 0.8]]], np.float32)  # 0.6 + 0.35 < 1
    assert _value(specificity_loss(images, captions, entities, np.ones((1, 1), bool))) == 0.0


# ------------------------------------------------- entity positives


def _targets() -> dict[str, np.ndarray]:
    """3 captions (rows 0 and 2 show image 0), E = 2, A = 2; ids: dog 5, ball 7, cat 6."""
    return {
        "image_ids": np.array([0, 1, 0], np.int32),
        # fed: dog{1}, ball{} | dog{2}, pad | dog{}, cat{3}
        "entity_name_ids": np.array([[5, 7], [5, 0], [5, 6]], np.int32),
        "entity_attribute_ids": np.array([[[1, 0], [0, 0]], [[2, 0], [0, 0]], [[0, 0], [3, 0]]], np.int32),
        # graphs: dog{1}, ball{} | dog{1, 2}, pad | dog{}, cat{3}
        "graph_name_ids": np.array([[5, 7], [5, 0], [5, 6]], np.int32),
        "graph_attribute_ids": np.array([[[1, 0], [0, 0]], [[1, 2], [0, 0]], [[0, 0], [3, 0]]], np.int32),
    }


def test_entity_match_name_and_attribute_subset() -> None:
    # Graph 0: dog{1, 2}, ball{}, pad; graph 1: dog{1}, cat{3}, dog{2}.
    graph_names = np.array([[5, 7, 0], [5, 6, 5]], np.int32)
    graph_attributes = np.array([[[1, 2], [0, 0], [0, 0]], [[1, 0], [3, 0], [2, 0]]], np.int32)
    # Caption 0: dog{1, 2}, ball{}, pad; caption 1: dog{1}, cat{3}, pad (with stray attribute ids).
    names = np.array([[5, 7, 0], [5, 6, 0]], np.int32)
    attributes = np.array([[[1, 2], [0, 0], [0, 0]], [[1, 0], [3, 0], [1, 0]]], np.int32)
    match = numpy64(entity_match(names, attributes, graph_names, graph_attributes)).astype(bool)
    expected = np.array(
        [
            [[True, True, False], [True, False, False]],  # graph 0 holds dog{1,2} and ball{}
            # graph 1: dog{1,2} is split over two dogs (no single superset) -> no match
            [[False, False, False], [True, True, False]],
        ]
    )
    np.testing.assert_array_equal(match, expected)


def test_contrastive_positives_by_hand() -> None:
    targets = _targets()
    entity_mask = targets["entity_name_ids"] != 0
    positives = numpy64(contrastive_positives(targets, entity_mask)).astype(bool)
    same = [[True, False, True], [False, True, False], [True, False, True]]
    # Entity columns (b, e) = dog{1}, ball{}, dog{2}, pad, dog{}, cat{3}.
    entities = [
        [True, True, False, None, True, False],  # owns (0, *); its dog{1} holds dog{}
        [True, False, True, None, True, False],  # its dog{1,2} holds dog{1}, dog{2}, dog{}
        [False, False, False, None, True, True],  # same image as row 0, but owner/match only
    ]
    np.testing.assert_array_equal(positives[:, :3], same)
    real = entity_mask.reshape(-1)
    np.testing.assert_array_equal(positives[:, 3:][:, real], np.array(entities)[:, real].astype(bool))


def test_pooled_positives_give_rows_of_one_image_the_union_of_their_graphs() -> None:
    targets = _targets()
    entity_mask = targets["entity_name_ids"] != 0
    per_row = numpy64(contrastive_positives(targets, entity_mask)).astype(bool)
    pooled = numpy64(contrastive_positives(targets, entity_mask, pool_same_image=True)).astype(bool)
    # Rows 0 and 2 show one image: both get row 0's and row 2's entity positives.
    union = per_row[0, 3:] | per_row[2, 3:]
    real = entity_mask.reshape(-1)
    np.testing.assert_array_equal(pooled[0, 3:][real], union[real])
    np.testing.assert_array_equal(pooled[2, 3:][real], union[real])
    assert not np.array_equal(per_row[2, 3:][real], union[real])  # the case really differs
    np.testing.assert_array_equal(pooled[1], per_row[1])
    np.testing.assert_array_equal(pooled[:, :3], per_row[:, :3])


# ---------------------------------------------------------- objective


@pytest.mark.parametrize(
    "config",
    [
        LossConfig(),
        LossConfig(
            temperature=0.05,
            triplet_margin=0.2,
            specificity_margin=0.3,
            contrastive_weight=2.0,
            triplet_weight=3.0,
            specificity_weight=5.0,
        ),
        LossConfig(temperature=0.05, relation_swap_weight=0.5),
        LossConfig(temperature=0.05, region_entity_weight=2.0),
        LossConfig(temperature=0.05, relation_readout_weight=3.0),
    ],
    ids=["paper", "custom", "relation_swap", "region_entity", "relation_readout"],
)
def test_objective_terms_and_weights(config: LossConfig) -> None:
    rng = np.random.default_rng(3)
    targets = _targets()
    entity_mask = targets["entity_name_ids"] != 0
    outputs = {
        "image": _unit(rng.standard_normal((3, 4))),
        "caption": _unit(rng.standard_normal((3, 4))),
        "entities": _unit(rng.standard_normal((3, 2, 4))) * entity_mask[..., None],
        "entity_mask": entity_mask,
    }
    if config.relation_swap_weight:
        outputs["swap_caption"] = _unit(rng.standard_normal((3, 4)))
        outputs["swap_mask"] = np.array([True, False, True])
    if config.region_entity_weight:
        outputs["region_entity_cost"] = np.array([0.5, 1.25, 2.0], np.float32)
    if config.relation_readout_weight:  # four packed relations, the last padding
        outputs["relation_readout_cost"] = np.array([0.25, 1.0, 0.5, 9.0], np.float32)
        outputs["relation_readout_real"] = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    terms = {name: _value(value) for name, value in cora_objective(outputs, targets, config).items()}

    real = entity_mask.reshape(-1)
    texts = np.concatenate([outputs["caption"], outputs["entities"].reshape(6, 4)[real]])
    positives = numpy64(contrastive_positives(targets, entity_mask)).astype(bool)
    positives = np.concatenate([positives[:, :3], positives[:, 3:][:, real]], axis=1)
    images, captions = outputs["image"], outputs["caption"]
    expected = {
        "contrastive_loss": contrastive_by_loops(images, texts, positives, config.temperature),
        "triplet_loss": triplet_by_loops(images, captions, targets["image_ids"], config.triplet_margin),
        "specificity_loss": specificity_by_loops(
            images, captions, outputs["entities"], entity_mask, config.specificity_margin
        ),
    }
    if config.relation_swap_weight:
        # -log of the caption's share of the two-way softmax, rows 0 and 2.
        shares = [
            math.exp(images[b] @ captions[b] / config.temperature)
            / (math.exp(images[b] @ captions[b] / config.temperature)
               + math.exp(images[b] @ outputs["swap_caption"][b] / config.temperature))
            for b in (0, 2)
        ]
        expected["relation_swap_loss"] = -sum(math.log(p) for p in shares) / 2
    else:
        expected["relation_swap_loss"] = 0.0
    # The captions' summed entity costs over the number of real entities.
    expected["region_entity_loss"] = 3.75 / entity_mask.sum() if config.region_entity_weight else 0.0
    expected["relation_readout_loss"] = 1.75 / 3 if config.relation_readout_weight else 0.0
    for name, value in expected.items():
        assert terms[name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
    weighted = (
        config.contrastive_weight * terms["contrastive_loss"]
        + config.triplet_weight * terms["triplet_loss"]
        + config.specificity_weight * terms["specificity_loss"]
        + config.relation_swap_weight * terms["relation_swap_loss"]
        + config.region_entity_weight * terms["region_entity_loss"]
        + config.relation_readout_weight * terms["relation_readout_loss"]
    )
    assert terms["loss"] == pytest.approx(weighted, rel=1e-6)
    if config == LossConfig():
        paper = terms["contrastive_loss"] + 4.0 * terms["triplet_loss"] + 11.0 * terms["specificity_loss"]
        assert terms["loss"] == pytest.approx(paper, rel=1e-6)
