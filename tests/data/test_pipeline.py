"""Training and evaluation batches: contents, sampling, determinism, budgets."""

from pathlib import Path

import numpy as np
import pytest

from cora_keras.config import Config
from cora_keras.data.datasets import Split
from cora_keras.data.features import PrecompFeatures
from cora_keras.data.pipeline import (
    CaptionBatches,
    ImageBatches,
    InputShard,
    PhraseBudgetError,
    TrainingBatches,
    check_distinct_phrase_budgets,
    check_phrase_budgets,
    check_region_budget,
    drop_regions,
    evaluation_dataset,
    grouped_caption_order,
    region_keep_mask,
    training_dataset,
)
from cora_keras.data.relation_swaps import swap_relation_slots
from cora_keras.inputs import CAPTION_INPUTS, IMAGE_INPUTS, TARGETS
from cora_keras.scene_graph.encode import GraphEncoder
from cora_keras.scene_graph.schema import Entity, Relation, SceneGraph
from cora_keras.scene_graph.vocabulary import SPECIAL_TOKENS, Vocabulary

NAMES = "dog cat ball tree man woman car hat".split()
ATTRIBUTES = "red blue big small old".split()
N_IMAGES, N_REGIONS, FEATURE_SIZE = 6, 5, 8


def _config(batch_size=4, **augment):
    config = Config()
    m = config.model
    m.num_regions, m.region_feature_size = N_REGIONS, FEATURE_SIZE
    m.max_entities, m.max_attributes, m.max_caption_relations = 3, 2, 4
    m.max_phrase_tokens = 5
    config.train.batch_size = batch_size
    for key, value in augment.items():
        setattr(config.augment, key, value)
    return config


def _graph(rng):
    n = int(rng.integers(1, 5))
    entities = [
        Entity(
            str(rng.choice(NAMES)),
            [str(a) for a in rng.choice(ATTRIBUTES, int(rng.integers(0, 3)))],
        )
        for _ in range(n)
    ]
    relations = [Relation(i, "near", i + 1) for i in range(n - 1)]
    return SceneGraph(" ".join(e.name for e in entities), entities, relations)


@pytest.fixture
def split(tmp_path):
    """6 images of 5 distinct, never-zero regions; 30 captions."""
    rng = np.random.default_rng(0)
    features = rng.uniform(1, 2, (N_IMAGES, N_REGIONS, FEATURE_SIZE)).astype(np.float32)
    np.save(tmp_path / "train_ims.npy", features)
    graphs = [_graph(rng) for _ in range(5 * N_IMAGES)]
    vocabulary = Vocabulary(
        [*SPECIAL_TOKENS, *NAMES, *ATTRIBUTES, "near", "and", "with"], {}, {}, []
    )
    return Split(
        name="train",
        data_dir=Path(tmp_path),
        captions=[g.caption for g in graphs],
        graphs=graphs,
        features=PrecompFeatures(tmp_path / "train_ims.npy", (N_REGIONS, FEATURE_SIZE)),
        vocabulary=vocabulary,
    )


def _encoder(split, config):
    return GraphEncoder(split.vocabulary, config.model, config.augment)


def _as_numpy(batch):
    return {name: np.asarray(value) for name, value in batch.items()}


def test_drop_regions_by_hand():
    regions = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2) + 1
    keep = np.array([[False, True, False, True], [True, True, True, True]])
    out, counts = drop_regions(regions, keep)
    np.testing.assert_array_equal(counts, [2, 4])
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(out[0], [[3, 4], [7, 8], [0, 0], [0, 0]])
    np.testing.assert_array_equal(out[1], regions[1])


def test_region_keep_mask_keeps_at_least_one():
    for seed in range(20):
        keep = region_keep_mask(np.random.default_rng(seed), 6, drop=1.0)
        assert keep.sum() == 1
    assert region_keep_mask(np.random.default_rng(0), 6, drop=0.0).all()
    rate = np.mean(
        [
            region_keep_mask(np.random.default_rng(s), 100, 0.35).mean()
            for s in range(20)
        ]
    )
    assert 0.6 < rate < 0.7


def test_training_batch_contents_and_region_dropout_invariants(split):
    config = _config(region_drop=0.5)
    batches = TrainingBatches(split, _encoder(split, config), config, seed=3)
    assert batches.steps_per_epoch == 7  # 30 // 4, remainder dropped
    features = split.features.read_many(np.arange(N_IMAGES))
    seen = []
    for indices, (x, y) in zip(batches.caption_batches(0), batches.epoch(0)):
        seen.extend(indices)
        assert sorted(x) == sorted([*IMAGE_INPUTS, *CAPTION_INPUTS])
        assert sorted(y) == sorted(TARGETS)
        np.testing.assert_array_equal(y["image_ids"], indices // 5)
        assert x["regions"].shape == (4, N_REGIONS, FEATURE_SIZE)
        assert x["region_counts"].dtype == np.int32 and y["image_ids"].dtype == np.int32
        for regions, count, image in zip(
            x["regions"], x["region_counts"], y["image_ids"]
        ):
            assert 1 <= count <= N_REGIONS
            assert not regions[count:].any()
            # kept rows are rows of the image, in their original order
            rows = [
                int(np.flatnonzero((features[image] == row).all(axis=1))[0])
                for row in regions[:count]
            ]
            assert rows == sorted(set(rows))
    assert len(seen) == 28 and len(set(seen)) == 28


def test_training_batches_check_their_settings(split):
    config = _config(batch_size=31)
    with pytest.raises(
        ValueError,
        match=r"30 captions, fewer than one batch \(train\.batch_size = 31\)",
    ):
        TrainingBatches(split, _encoder(split, _config()), config, seed=0)
    config = _config(region_drop=1.5)
    with pytest.raises(
        ValueError, match=r"augment\.region_drop = 1\.5: not a probability"
    ):
        TrainingBatches(split, _encoder(split, _config()), config, seed=0)


def test_sampling_uses_the_caption_rng(split):
    config = _config(region_drop=0.35, entity_drop=0.3, token_mask=0.3)
    encoder = _encoder(split, config)
    batches = TrainingBatches(split, encoder, config, seed=5)
    indices = np.array([7, 0, 29, 12])
    x, y = batches.batch(2, indices)
    for row, index in enumerate(indices):
        rng = np.random.default_rng([5, 2, index])
        keep = region_keep_mask(rng, N_REGIONS, 0.35)
        expected = encoder.encode(split.graphs[index], rng)
        assert x["region_counts"][row] == keep.sum()
        for name in CAPTION_INPUTS:
            np.testing.assert_array_equal(x[name][row], expected[name])
        for name in set(TARGETS) - {"image_ids"}:
            np.testing.assert_array_equal(y[name][row], expected[name])


def test_no_region_drop_gives_the_images_unchanged(split):
    config = _config(region_drop=0.0)
    x, y = TrainingBatches(split, _encoder(split, config), config, seed=0).batch(
        0, np.array([3, 29])
    )
    np.testing.assert_array_equal(x["regions"], split.features.read_many([0, 5]))
    np.testing.assert_array_equal(x["region_counts"], [N_REGIONS, N_REGIONS])


def test_epoch_orders_are_seeded_per_epoch(split):
    config = _config()
    a = TrainingBatches(split, _encoder(split, config), config, seed=1)
    b = TrainingBatches(split, _encoder(split, config), config, seed=1)
    c = TrainingBatches(split, _encoder(split, config), config, seed=2)
    np.testing.assert_array_equal(a.order(0), b.order(0))
    np.testing.assert_array_equal(a.order(1), b.order(1))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), c.order(0))
    assert sorted(a.order(3)) == list(range(30))


def test_phrase_budget_error_names_budget_count_and_key(split):
    config = _config(batch_size=2)
    config.model.entity_budget = 1.0  # budget = ceil(1.0 * 2) + 3 = 5 entities
    graph = SceneGraph("x", [Entity("dog"), Entity("cat"), Entity("man")])
    encoded = _encoder(split, config).encode_batch([graph, graph])
    with pytest.raises(
        PhraseBudgetError,
        match=r"a batch of 2 captions holds 6 real entities, over the entities budget "
        r"of 5; raise model\.entity_budget \(now 1\.0 per caption\)",
    ):
        check_phrase_budgets(encoded, config.model)
    check_phrase_budgets(_encoder(split, config).encode_batch([graph]), config.model)


def test_distinct_phrase_budget_error_names_count_budget_and_key(split):
    config = _config(batch_size=4)
    config.model.distinct_phrase_budget = 0.5  # 0.5 * min(4 * 3, ceil(4.5 * 4) + 3) = 6 distinct names
    names = ("dog", "cat", "man", "boy", "car", "hat")
    graphs = [SceneGraph("x", [Entity(n) for n in names[i : i + 3]]) for i in range(4)]
    encoded = _encoder(split, config).encode_batch(graphs)  # 6 distinct names + padding
    with pytest.raises(
        PhraseBudgetError,
        match=r"a batch of 4 captions holds 6 distinct entities phrases \(\+1 padding\), over "
        r"the distinct budget of 6; raise model\.distinct_phrase_budget \(now 0\.5 of "
        r"model\.entity_budget\) or set it to null",
    ):
        check_distinct_phrase_budgets(encoded, config.model)
    check_distinct_phrase_budgets(_encoder(split, config).encode_batch(graphs[:2] * 2), config.model)
    config.model.distinct_phrase_budget = 1.5
    with pytest.raises(ValueError, match=r"model\.distinct_phrase_budget = 1\.5 must be in \(0, 1\] or null"):
        check_distinct_phrase_budgets(encoded, config.model)


def test_training_batches_check_budgets(split):
    config = _config(batch_size=4, entity_drop=0.0)
    config.model.attribute_budget = 0.0  # budget = 0 * 4 + 3 * 2 = 6 attributes
    split.graphs[:] = [
        SceneGraph("x", [Entity(n, ["red", "old"]) for n in ("dog", "cat")])
        for _ in split.graphs
    ]
    config.augment.attribute_drop = 0.0
    batches = TrainingBatches(split, _encoder(split, config), config, seed=0)
    with pytest.raises(
        PhraseBudgetError,
        match=r"holds 16 real attributes, over the attributes budget of 6; "
        r"raise model\.attribute_budget",
    ):
        batches.batch(0, np.arange(4))


def test_image_batches_in_order(split):
    batches = ImageBatches(split, batch_size=4)
    assert len(batches) == 2
    features = split.features.read_many(np.arange(N_IMAGES))
    first, last = batches[0], batches[1]
    np.testing.assert_array_equal(first["regions"], features[:4])
    np.testing.assert_array_equal(last["regions"], features[4:])
    np.testing.assert_array_equal(last["region_counts"], [N_REGIONS, N_REGIONS])
    with pytest.raises(IndexError):
        batches[2]


def test_caption_batches_in_order_without_sampling(split):
    config = _config()
    encoder = _encoder(split, config)
    batches = CaptionBatches(split, encoder, config.model, batch_size=8)
    assert len(batches) == 4
    expected = encoder.encode_batch(split.graphs, None)
    got = [batches[i] for i in range(len(batches))]
    assert [len(b["entity_tokens"]) for b in got] == [8, 8, 8, 6]
    for name in CAPTION_INPUTS:
        np.testing.assert_array_equal(
            np.concatenate([b[name] for b in got]), expected[name]
        )
    assert set(got[0]) == set(CAPTION_INPUTS)


@pytest.mark.tf_only
def test_training_dataset_equals_the_numpy_batches_and_is_deterministic(split):
    config = _config(region_drop=0.35, entity_drop=0.2, token_mask=0.2)
    config.data.parallel_calls = 2
    encoder = _encoder(split, config)
    dataset = training_dataset(split, encoder, config, seed=11)
    assert int(dataset.cardinality()) == 7
    x_spec, y_spec = dataset.element_spec
    assert x_spec["regions"].shape == (4, N_REGIONS, FEATURE_SIZE)
    assert y_spec["entity_attribute_ids"].shape == (4, 3, 2)
    epochs = [[(_as_numpy(x), _as_numpy(y)) for x, y in dataset] for _ in range(2)]
    assert not all(
        np.array_equal(a[1]["image_ids"], b[1]["image_ids"]) for a, b in zip(*epochs)
    )
    reference = TrainingBatches(split, encoder, config, seed=11)
    for epoch, batches in enumerate(epochs):
        assert len(batches) == 7
        for (x, y), (ex, ey) in zip(batches, reference.epoch(epoch)):
            for name in ex:
                np.testing.assert_array_equal(x[name], ex[name])
            for name in ey:
                np.testing.assert_array_equal(y[name], ey[name])
    config.data.parallel_calls = 1
    again = training_dataset(split, encoder, config, seed=11)
    first_again = [(_as_numpy(x), _as_numpy(y)) for x, y in again]
    assert len(first_again) == 7
    for (x, y), (ex, ey) in zip(first_again, epochs[0]):
        for name in x:
            np.testing.assert_array_equal(x[name], ex[name])
        np.testing.assert_array_equal(y["image_ids"], ey["image_ids"])
    other = [
        _as_numpy(y)["image_ids"]
        for _, y in training_dataset(split, encoder, config, seed=12)
    ]
    assert not all(
        np.array_equal(a, b[1]["image_ids"]) for a, b in zip(other, epochs[0])
    )
    resumed = training_dataset(split, encoder, config, seed=11, first_epoch=1)
    np.testing.assert_array_equal(
        next(iter(resumed))[1]["image_ids"], epochs[1][0][1]["image_ids"]
    )


@pytest.mark.tf_only
def test_model_fit_runs_one_epoch_per_iteration(split, monkeypatch):
    import keras
    import tensorflow as tf

    epochs = []
    batch = TrainingBatches.batch

    def recording_batch(self, epoch, caption_indices):
        epochs.append(epoch)
        return batch(self, epoch, caption_indices)

    monkeypatch.setattr(TrainingBatches, "batch", recording_batch)
    config = _config()
    dataset = training_dataset(split, _encoder(split, config), config, seed=0)
    dataset = dataset.map(
        lambda x, y: (x["regions"], tf.cast(y["image_ids"], "float32"))
    )
    model = keras.Sequential(
        [
            keras.Input((N_REGIONS, FEATURE_SIZE)),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(dataset, epochs=3, verbose=0, shuffle=False)
    assert sorted(epochs) == [0] * 7 + [1] * 7 + [2] * 7


@pytest.mark.tf_only
def test_budget_error_surfaces_through_tf_data(split):
    config = _config(entity_drop=0.0)
    config.model.entity_budget = 0.0  # budget = 3 entities per batch of 4
    dataset = training_dataset(split, _encoder(split, config), config, seed=0)
    with pytest.raises(
        Exception, match=r"over the entities budget of 3; raise model\.entity_budget"
    ):
        next(iter(dataset))


@pytest.mark.tf_only
def test_evaluation_datasets_in_order(split):
    config = _config()
    encoder = _encoder(split, config)
    data = evaluation_dataset(split, encoder, config, batch_size=4)
    images = [_as_numpy(b) for b in data.images]
    assert [len(b["regions"]) for b in images] == [4, 2]
    np.testing.assert_array_equal(
        np.concatenate([b["regions"] for b in images]),
        split.features.read_many(np.arange(N_IMAGES)),
    )
    assert data.images.element_spec["regions"].shape.as_list() == [
        None,
        N_REGIONS,
        FEATURE_SIZE,
    ]
    captions = [_as_numpy(b) for b in data.captions]
    assert len(captions) == 8
    expected = encoder.encode_batch(split.graphs, None)
    for name in CAPTION_INPUTS:
        np.testing.assert_array_equal(
            np.concatenate([b[name] for b in captions]), expected[name]
        )


# ------------------------------------------------------------ sharded input


def test_shards_parts_in_order_make_up_each_batch(split):
    """Two pipelines of two parts each (two workers of two replicas)."""
    config = _config(region_drop=0.35, entity_drop=0.2, token_mask=0.2)
    encoder = _encoder(split, config)
    whole = list(TrainingBatches(split, encoder, config, seed=2).epoch(1))
    workers = [
        list(TrainingBatches(split, encoder, config, seed=2, shard=InputShard(4, ids)).epoch(1))
        for ids in ((0, 1), (2, 3))
    ]
    assert len(whole) == 7 and [len(w) for w in workers] == [14, 14]
    for step, (x, y) in enumerate(whole):
        parts = [workers[w][2 * step + j] for w in (0, 1) for j in (0, 1)]
        assert {len(part_y["image_ids"]) for _, part_y in parts} == {1}
        for name in x:
            np.testing.assert_array_equal(np.concatenate([px[name] for px, _ in parts]), x[name])
        for name in y:
            np.testing.assert_array_equal(np.concatenate([py[name] for _, py in parts]), y[name])


def test_shard_must_split_the_batch(split):
    config = _config(batch_size=4)
    with pytest.raises(ValueError, match=r"batch_size = 4 does not split into 3 equal parts"):
        TrainingBatches(split, _encoder(split, config), config, seed=0, shard=InputShard(3, (0,)))
    with pytest.raises(ValueError, match=r"into 2 equal parts with parts \(2,\)"):
        TrainingBatches(split, _encoder(split, config), config, seed=0, shard=InputShard(2, (2,)))


def test_part_budgets_are_its_own_or_its_share_of_the_batch(split):
    config = _config()
    config.model.entity_budget = 0.0  # min(3b, 0 * b + 3) = 3 entities for any b
    two = _encoder(split, config).encode_batch([SceneGraph("x", [Entity("dog")])] * 2)
    check_phrase_budgets(two, config.model)  # 2 <= 3
    with pytest.raises(PhraseBudgetError, match=r"holds 2 real entities, over the entities budget of 1;"):
        check_phrase_budgets(two, config.model, budget_batch_size=4)  # 3 * 2 // 4 = 1
    config.model.region_budget = 0.55  # 2 images: ceil(5.5) = 6 rows; 4 images: 11, share 5
    check_region_budget(np.array([3, 3]), config.model)
    with pytest.raises(PhraseBudgetError, match=r"holds 6 valid regions, over the region budget of 5"):
        check_region_budget(np.array([3, 3]), config.model, budget_batch_size=4)


@pytest.mark.tf_only
def test_endless_training_dataset_runs_epoch_after_epoch_from_the_first(split):
    import tensorflow as tf

    config = _config()
    encoder = _encoder(split, config)
    dataset = training_dataset(split, encoder, config, seed=4, first_epoch=1, endless=True)
    assert int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY
    reference = TrainingBatches(split, encoder, config, seed=4)
    expected = [y["image_ids"] for epoch in (1, 2) for _, y in reference.epoch(epoch)]
    for _ in range(2):  # a second iteration starts again at first_epoch
        got = [np.asarray(y["image_ids"]) for _, y in dataset.take(len(expected))]
        np.testing.assert_array_equal(np.stack(got), np.stack(expected))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_grouped_caption_order_covers_every_caption_in_groups_of_one_image(k):
    order = grouped_caption_order(np.random.default_rng(k), num_images=7, k=k)
    groups = -(-5 // k)
    assert order.shape == (7 * groups * k,)
    assert set(order) == set(range(35))
    grouped = order.reshape(-1, k)
    assert np.all(grouped // 5 == grouped[:, :1] // 5)  # one image per group
    assert all(len(set(g)) == k for g in grouped)  # distinct captions in a group
    # Every image gives the same number of groups; each caption comes once, or
    # twice when it fills up an image's last group.
    assert np.all(np.bincount(grouped[:, 0] // 5) == groups)
    assert np.bincount(order).max() <= 2 and np.sum(np.bincount(order) == 2) == 7 * (groups * k - 5)


def test_image_grouped_batches_hold_each_image_once(split):
    config = _config(batch_size=6, region_drop=0.35, entity_drop=0.2)
    config.train.captions_per_image = 3
    plain_config = _config(batch_size=6, region_drop=0.35, entity_drop=0.2)
    encoder = _encoder(split, config)
    batches = TrainingBatches(split, encoder, config, seed=4)
    assert batches.steps_per_epoch == 6 * 2 * 3 // 6
    indices = batches.order(1)[:6]
    x, y = batches.batch(1, indices)
    px, py = TrainingBatches(split, encoder, plain_config, seed=4).batch(1, indices)
    assert x["regions"].shape == (2, N_REGIONS, FEATURE_SIZE)
    np.testing.assert_array_equal(x["caption_image"], [0, 0, 0, 1, 1, 1])
    # Each image as its first caption's sampling dropped its regions; the
    # captions are sampled as without grouping.
    np.testing.assert_array_equal(x["regions"], px["regions"][[0, 3]])
    np.testing.assert_array_equal(x["region_counts"], px["region_counts"][[0, 3]])
    for name in CAPTION_INPUTS:
        np.testing.assert_array_equal(x[name], px[name], err_msg=name)
    for name in py:
        np.testing.assert_array_equal(y[name], py[name], err_msg=name)
    with pytest.raises(ValueError, match="consecutive captions"):
        batches.batch(1, np.array([0, 1, 5, 6, 7, 8]))
    dataset = training_dataset(split, encoder, config, seed=4)
    x_spec, _ = dataset.element_spec
    assert x_spec["regions"].shape == (2, N_REGIONS, FEATURE_SIZE)
    assert x_spec["caption_image"].shape == (6,)
    first = next(iter(dataset))[0]
    np.testing.assert_array_equal(np.asarray(first["caption_image"]), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("k", [0, 6, 4])
def test_captions_per_image_must_divide_the_batch(split, k):
    config = _config(batch_size=6)
    config.train.captions_per_image = k
    with pytest.raises(ValueError, match="captions_per_image"):
        TrainingBatches(split, _encoder(split, config), config, seed=0)


def test_relation_swap_slots_ride_along_only_with_the_swap_term(split):
    config = _config(batch_size=6)
    encoder = _encoder(split, config)
    indices = np.arange(6)
    x, _ = TrainingBatches(split, encoder, config, seed=0).batch(0, indices)
    assert "swap_relation" not in x
    config.loss.relation_swap_weight = 1.0
    x, _ = TrainingBatches(split, encoder, config, seed=0).batch(0, indices)
    assert (x["swap_relation"] == -1).all()  # every predicate here is "near", symmetric
    config.loss.symmetric_predicates = []
    x, _ = TrainingBatches(split, encoder, config, seed=0).batch(0, indices)
    expected = swap_relation_slots(x, frozenset())
    np.testing.assert_array_equal(x["swap_relation"], expected)
    assert (expected == 0).any() and (expected == -1).any()
    x_spec, _ = training_dataset(split, encoder, config, seed=0).element_spec
    assert x_spec["swap_relation"].shape == (6,)
