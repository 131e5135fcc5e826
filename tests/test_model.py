"""CoraModel: text graph indices, packing invariance, padding, saving, overfitting.

One small model (tests/helpers.py) is built once for the module: on JAX every
new op shape compiles, so the tests reuse the batch shapes of the fixtures.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cora_keras import losses
from cora_keras.config import LossConfig
from cora_keras.data.pipeline import check_distinct_phrase_budgets
from cora_keras.inputs import distinct_phrase_budgets, phrase_budgets
from cora_keras.model import LOSS_TERMS, CoraModel, text_graph
from cora_keras.synthetic import synthetic_batch
from tests.helpers import numpy64, real_relations, small_model_config

CONFIG = small_model_config()
BATCH = 8
STEPS = 200  # full-batch AdamW steps of the overfitting test


def _synthetic(size: int, seed: int):
    """Batches whose phrases fit T = 4 tokens and the default budgets."""
    return synthetic_batch(
        CONFIG, size, np.random.default_rng(seed), regions=(2, 6), attributes=(0, 1), words=(1, 2)
    )


@pytest.fixture(scope="module")
def model() -> CoraModel:
    cora = CoraModel(CONFIG, LossConfig())
    cora.build()
    return cora


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    x, _ = _synthetic(BATCH, seed=0)
    budgets = phrase_budgets(CONFIG, BATCH)
    counts = {
        "entities": (x["entity_tokens"] != 0).any(-1).sum(),
        "attributes": (x["attribute_tokens"] != 0).any(-1).sum(),
        "relations": (x["relation_tokens"] != 0).any(-1).sum(),
    }
    slots = {
        "entities": BATCH * CONFIG.max_entities,
        "attributes": BATCH * CONFIG.max_entities * CONFIG.max_attributes,
        "relations": BATCH * CONFIG.max_caption_relations,
    }
    for kind, count in counts.items():
        # Really packed (budget below the slot count) and nothing cut.
        assert count <= budgets[kind] < slots[kind], kind
    return x


def _outputs(model: CoraModel, x: dict) -> dict[str, np.ndarray]:
    return {name: numpy64(value) for name, value in model(x).items()}


# --------------------------------------------------------------- text graph


def test_text_graph_by_hand() -> None:
    # One caption: entities 0..3, relations 0->1, 0->2, 1->2; R = 1 message per kind.
    config = small_model_config(max_relations=1)
    x = {
        "entity_tokens": np.zeros((1, 8, 4), np.int32),
        "attribute_tokens": np.zeros((1, 8, 2, 4), np.int32),
        "relation_tokens": np.zeros((1, 8, 4), np.int32),
        "relation_subject": np.zeros((1, 8), np.int32),
        "relation_object": np.zeros((1, 8), np.int32),
    }
    x["entity_tokens"][0, :4, :3] = [2, 7, 3]
    x["relation_tokens"][0, :3, :3] = [2, 9, 3]
    x["relation_subject"][0, :3] = [0, 0, 1]
    x["relation_object"][0, :3] = [1, 2, 2]
    x["relation_subject"][0, 5], x["relation_object"][0, 5] = 3, 0  # a padded relation slot
    graph = {name: numpy64(value) for name, value in text_graph(x, config, None).items()}
    # Entity 0 is subject twice: its second active message is past R = 1.
    np.testing.assert_array_equal(graph["active_weight"][:3], [1, 0, 1])
    # Entity 2 is object twice: its second passive message is past R = 1.
    np.testing.assert_array_equal(graph["passive_weight"][:3], [1, 1, 0])
    assert not graph["active_weight"][3:].any() and not graph["passive_weight"][3:].any()
    expected = np.zeros((8, 8))
    expected[:3, :3] = 1.0  # self loops and both directions of every relation
    expected[3, 3] = 1.0  # entity 3 has no relation
    np.testing.assert_array_equal(graph["adjacency"][0], expected)
    assert graph["entity_counts"].tolist() == [4]


# ------------------------------------------------------- packing invariance


def test_entity_mask_marks_real_entities(model: CoraModel, batch: dict) -> None:
    mask = _outputs(model, batch)["entity_mask"].astype(bool)
    np.testing.assert_array_equal(mask, (batch["entity_tokens"] != 0).any(-1))


def test_packed_batch_equals_each_caption_alone(model: CoraModel, batch: dict) -> None:
    together = {k: numpy64(v) for k, v in model.encode_captions(batch).items()}
    for b in range(BATCH):
        alone = model.encode_captions({k: v[b : b + 1] for k, v in batch.items()})
        np.testing.assert_allclose(numpy64(alone["caption"])[0], together["caption"][b], atol=1e-5)
        np.testing.assert_allclose(numpy64(alone["entities"])[0], together["entities"][b], atol=1e-5)


def test_padding_slot_contents_change_nothing(model: CoraModel, batch: dict) -> None:
    rng = np.random.default_rng(1)
    garbage = {k: v.copy() for k, v in batch.items()}
    # Attribute phrases under padded entities.
    padded_entity = ~(batch["entity_tokens"] != 0).any(-1)
    phrase = np.array([2, 11, 12, 3], np.int32)
    garbage["attribute_tokens"][padded_entity] = phrase
    # Subject and object indices of padded relation slots.
    padded_relation = ~(batch["relation_tokens"] != 0).any(-1)
    ends = rng.integers(0, CONFIG.max_entities, (2, int(padded_relation.sum())))
    garbage["relation_subject"][padded_relation], garbage["relation_object"][padded_relation] = ends
    # Region rows past each image's count.
    padded_region = np.arange(CONFIG.num_regions)[None, :] >= batch["region_counts"][:, None]
    garbage["regions"][padded_region] = 100.0 * rng.standard_normal((int(padded_region.sum()), 32))
    clean, noisy = _outputs(model, batch), _outputs(model, garbage)
    for name in ("image", "caption", "entities"):
        np.testing.assert_allclose(noisy[name], clean[name], atol=1e-5, err_msg=name)


def test_image_grouped_batch_encodes_each_image_once(model: CoraModel, batch: dict) -> None:
    # Captions 2i and 2i+1 show image i: 4 images for 8 captions.
    show = np.repeat(np.arange(BATCH // 2, dtype=np.int32), 2)
    grouped = {**batch, "regions": batch["regions"][::2], "region_counts": batch["region_counts"][::2]}
    repeated = {**batch, "regions": batch["regions"][::2][show], "region_counts": batch["region_counts"][::2][show]}
    outputs = _outputs(model, {**grouped, "caption_image": show})
    expected = _outputs(model, repeated)
    for name in ("image", "caption", "entities"):
        np.testing.assert_allclose(outputs[name], expected[name], atol=1e-5, err_msg=name)


def test_image_grouped_batch_loss_pools_the_graphs_of_an_image(model: CoraModel, batch: dict) -> None:
    _, targets = _synthetic(BATCH, seed=0)
    show = np.repeat(np.arange(BATCH // 2, dtype=np.int32), 2)
    grouped = {**batch, "regions": batch["regions"][::2], "region_counts": batch["region_counts"][::2]}
    grouped["caption_image"] = show
    targets = {**targets, "image_ids": show}
    outputs = model(grouped)
    model.trackers["contrastive_loss"].reset_state()
    model.compute_loss(grouped, targets, outputs)
    measured = float(numpy64(model.trackers["contrastive_loss"].result()))
    expected = {
        pool: losses.cora_objective(outputs, targets, model.loss_config, pool_same_image=pool)
        for pool in (False, True)
    }
    expected = {pool: float(numpy64(terms["contrastive_loss"])) for pool, terms in expected.items()}
    assert expected[True] != pytest.approx(expected[False], rel=1e-4)  # the batch's rows really differ
    assert measured == pytest.approx(expected[True], rel=1e-5)


def test_distinct_phrases_encoded_once_give_the_same_training_outputs(batch: dict) -> None:
    no_dropout = dict(region_dropout=0.0, word_dropout=0.0, composer_dropout=0.0, relation_attention_dropout=0.0)
    config = small_model_config(distinct_phrase_budget=0.6, **no_dropout)
    every, distinct = CoraModel(small_model_config(**no_dropout)), CoraModel(config)
    every.build(), distinct.build()
    distinct.set_weights(every.get_weights())
    # Each caption twice: every phrase repeats, and each kind really deduplicates.
    doubled = {k: np.concatenate([v[: BATCH // 2]] * 2) for k, v in batch.items()}
    for kind, budget in distinct_phrase_budgets(config, BATCH).items():
        assert budget is not None and budget < phrase_budgets(config, BATCH)[kind], kind
    check_distinct_phrase_budgets(doubled, config)
    expected = every.encode_captions(doubled, training=True)
    outputs = distinct.encode_captions(doubled, training=True)
    for name in ("caption", "entities"):
        np.testing.assert_allclose(numpy64(outputs[name]), numpy64(expected[name]), atol=1e-6, err_msg=name)


NO_DROPOUT = dict(region_dropout=0.0, word_dropout=0.0, composer_dropout=0.0, relation_attention_dropout=0.0)


@pytest.fixture(scope="module")
def bound_model() -> CoraModel:
    """Two spatial binding axes, the region-entity term on, no dropout; the
    binding's predicate read-out random so that its part is not zero."""
    cora = CoraModel(
        small_model_config(binding_axes=2, **NO_DROPOUT),
        LossConfig(region_entity_weight=1.0, relation_readout_weight=1.0),
    )
    cora.build()
    signs = cora.spatial_binding.predicate_signs
    signs.kernel.assign(np.random.default_rng(4).normal(0.0, 0.5, signs.kernel.shape).astype("float32"))
    return cora


@pytest.mark.parametrize("bound", [False, True], ids=["plain", "spatial_binding"])
def test_relation_swap_captions_equal_captions_with_exchanged_noun_phrases(
    batch: dict, bound: bool, request
) -> None:
    if bound:
        cora = request.getfixturevalue("bound_model")
    else:
        cora = CoraModel(small_model_config(**NO_DROPOUT))
        cora.build()
    real = (batch["relation_tokens"] != 0).any(-1)
    slots = np.where(real.any(1), real.sum(1) - 1, -1).astype(np.int32)  # each caption's last relation
    slots[[1, 5]] = -1  # two captions without a swap
    ends_differ = batch["relation_subject"][np.arange(BATCH), slots] != batch["relation_object"][np.arange(BATCH), slots]
    assert (slots >= 0).sum() >= 4 and ends_differ[slots >= 0].all()
    outputs = {k: numpy64(v) for k, v in cora.encode_captions({**batch, "swap_relation": slots}, training=True).items()}
    # The reference: the subject's and object's phrases exchanged in the inputs.
    exchanged = {k: v.copy() for k, v in batch.items()}
    for b, slot in enumerate(slots):
        if slot >= 0:
            ends = [batch["relation_subject"][b, slot], batch["relation_object"][b, slot]]
            for name in ("entity_tokens", "attribute_tokens"):
                exchanged[name][b, ends] = batch[name][b, ends[::-1]]
    expected = numpy64(cora.encode_captions(exchanged, training=True)["caption"])
    if bound:  # only the binding part is swapped; the main dimensions stay the caption's
        d = CONFIG.embed_size
        expected[:, :d] = outputs["caption"][:, :d]
    np.testing.assert_allclose(outputs["swap_caption"], expected, atol=1e-6)
    np.testing.assert_array_equal(outputs["swap_mask"], slots >= 0)
    # Without a swap the swap caption is the caption; with one it differs.
    np.testing.assert_allclose(outputs["swap_caption"][slots < 0], outputs["caption"][slots < 0], atol=1e-6)
    moved = np.abs(outputs["swap_caption"] - outputs["caption"]).max(axis=1)
    assert (moved[slots >= 0] > 1e-3).all()
    # Evaluation (training=False) composes no swaps.
    assert "swap_caption" not in cora.encode_captions({**batch, "swap_relation": slots})


def test_spatial_binding_widens_both_embeddings_past_unit_main_dimensions(bound_model, batch: dict) -> None:
    d = CONFIG.embed_size
    outputs = _outputs(bound_model, batch)
    for name in ("image", "caption"):
        assert outputs[name].shape == (BATCH, 3 * d), name
        np.testing.assert_allclose(np.linalg.norm(outputs[name][:, :d], axis=1), 1.0, atol=1e-5, err_msg=name)
        assert np.abs(outputs[name][:, d:]).max() > 1e-3, name
    # Entities are scored on the main dimensions only.
    assert outputs["entities"].shape == (BATCH, CONFIG.max_entities, 3 * d)
    assert np.abs(outputs["entities"][..., d:]).max() == 0.0


def test_bound_model_scores_its_main_dimensions_alone_in_the_contrastive_term(bound_model, batch: dict) -> None:
    _, targets = _synthetic(BATCH, seed=0)
    outputs = bound_model(batch)
    bound_model.trackers["contrastive_loss"].reset_state()
    bound_model.compute_loss(batch, targets, outputs)
    measured = float(numpy64(bound_model.trackers["contrastive_loss"].result()))
    config = bound_model.loss_config
    split = losses.cora_objective(outputs, targets, config, main_width=CONFIG.embed_size)["contrastive_loss"]
    whole = losses.cora_objective(outputs, targets, config)["contrastive_loss"]
    assert measured == pytest.approx(float(numpy64(split)), rel=1e-5)
    assert measured != pytest.approx(float(numpy64(whole)), rel=1e-3)


def test_region_entity_cost_scores_each_entity_against_every_image_of_the_batch(bound_model, batch: dict) -> None:
    outputs = {k: numpy64(v) for k, v in bound_model(batch, training=True).items()}
    rows = numpy64(bound_model.region_encoder.encode_regions(batch["regions"], batch["region_counts"], training=True))
    rows = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-6)
    expected = losses.region_entity_cost(
        rows, batch["region_counts"], outputs["entities"][..., : CONFIG.embed_size], outputs["entity_mask"],
        np.arange(BATCH), LossConfig().region_entity_temperature,
    )
    np.testing.assert_allclose(outputs["region_entity_cost"], numpy64(expected), rtol=1e-5, atol=1e-5)
    assert outputs["region_entity_cost"].shape == (BATCH,) and (outputs["region_entity_cost"] > 0).all()
    assert "region_entity_cost" not in bound_model(batch)  # evaluation adds no cost


def test_relation_readout_cost_reads_each_relation_in_its_own_image(bound_model, batch: dict) -> None:
    d, binding = CONFIG.embed_size, bound_model.spatial_binding
    outputs = {k: numpy64(v) for k, v in bound_model(batch, training=True).items()}
    rows = numpy64(bound_model.region_encoder.encode_regions(batch["regions"], batch["region_counts"], training=True))
    rows = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-6)
    places = numpy64(binding.places(batch["regions"], batch["region_counts"]))
    predicates = bound_model._caption_tower(batch, training=True)[1]["predicates"]
    signs = numpy64(binding.predicate_signs(predicates))
    temperature = LossConfig().relation_readout_temperature
    expected = []
    for b, k, s, o in real_relations(batch):
        valid = np.arange(CONFIG.num_regions) < batch["region_counts"][b]

        def position(entity):
            weights = np.exp(rows[b][valid] @ entity / temperature)
            return (weights / weights.sum()) @ places[b][valid]

        expected.append((b, k, position(outputs["entities"][b, s, :d]) - position(outputs["entities"][b, o, :d])))
    real = outputs["relation_readout_real"] > 0
    assert real.sum() == len(expected) >= 4
    # Packed relations keep caption order: the k-th real one is the k-th of the loop.
    for (b, k, difference), sign, cost in zip(expected, signs[real], outputs["relation_readout_cost"][real]):
        assert cost == pytest.approx(np.log1p(np.exp(-float(sign @ difference))), rel=1e-4, abs=1e-6), (b, k)


# ---------------------------------------------------------------- saving


def test_keras_file_round_trip(model: CoraModel, batch: dict, tmp_path) -> None:
    path = tmp_path / "cora.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CoraModel)
    assert len(loaded.weights) == len(model.weights), "the loaded model was not built"
    assert loaded.model_config == model.model_config and loaded.loss_config == model.loss_config
    before, after = _outputs(model, batch), _outputs(loaded, batch)
    for name in ("image", "caption", "entities"):
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)


# ------------------------------------------------------------- overfitting


def test_fit_overfits_a_tiny_dataset() -> None:
    x, y = _synthetic(BATCH, seed=2)
    keras.utils.set_random_seed(0)
    cora = CoraModel(CONFIG, LossConfig())
    cora.build()
    cora.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=keras.backend.backend() == "jax")
    history = cora.fit(x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0).history
    assert set(LOSS_TERMS) <= set(history)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    outputs = _outputs(cora, x)
    ranks = (outputs["image"] @ outputs["caption"].T).argmax(axis=1)
    # Past the collapsed phase (every similarity equal, R@1 at chance 1/8):
    # image -> caption R@1 on the training set.
    assert np.mean(ranks == np.arange(BATCH)) >= 0.875



def test_triplet_warmup_sums_over_negatives_then_takes_the_hardest() -> None:
    from cora_keras.losses import hardest_triplet_loss, same_image
    from cora_keras.training import TripletWarmup

    x, y = _synthetic(BATCH, seed=3)
    config = small_model_config(
        region_dropout=0.0, word_dropout=0.0, composer_dropout=0.0, relation_attention_dropout=0.0
    )
    cora = CoraModel(config, LossConfig())
    cora.build()
    # A zero learning rate keeps the weights, so both epochs see the same embeddings.
    cora.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=keras.backend.backend() == "jax")
    history = cora.fit(
        x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[TripletWarmup(2)]
    ).history
    outputs = cora(x, training=True)
    same = same_image(y["image_ids"])
    expected = [
        float(numpy64(hardest_triplet_loss(outputs["image"], outputs["caption"], same, 0.35, hardest)))
        for hardest in (0.0, 0.0, 1.0)
    ]
    assert expected[0] > expected[2]
    np.testing.assert_allclose(history["triplet_loss"], expected, rtol=1e-5)
    assert float(numpy64(cora.hardest_negatives)) == 1.0
