"""Checks of the NumPy reference forward pass (tests/reference_cora.py).

Hand-computed pieces, invariances, and, when torch is importable, the GRU,
attention and norm pieces against torch.nn loaded with the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.reference_cora import (
    batch_norm_eval,
    check_inputs,
    encode_phrases,
    entity_composer,
    gpo,
    gru_sequence,
    gru_step,
    gru_weights,
    image_tower,
    layer_norm,
    multihead_attention,
    position_codes,
    random_inputs,
    random_state_dict,
    reference_forward,
    relation_messages,
    save_release_checkpoint,
    sinusoid,
    star_adjacency,
)

VOCAB = 40
D = 32  # embed size: 16 heads of 2


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return random_state_dict(
        VOCAB, embed_size=D, word_dim=8, region_feature_size=12, seed=1
    )


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return random_inputs(VOCAB, batch_size=4, region_feature_size=12, seed=2)


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-10) -> None:
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------ primitives


def test_sinusoid_hand_values() -> None:
    expected = [
        [0.0, 1.0, 0.0, 1.0],
        [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
        [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
    ]
    _close(sinusoid(3, 4), np.array(expected), 1e-15)


def test_position_codes_are_zero_from_each_count_on() -> None:
    codes = position_codes(np.array([1, 3]), 4, 4)
    _close(codes[1, :3], sinusoid(3, 4))
    _close(codes[0, 0], sinusoid(1, 4)[0])
    assert not codes[0, 1:].any() and not codes[1, 3:].any()


def test_gru_step_one_unit_by_hand() -> None:
    # rows r, z, n; x = 0.8, h = 0.3
    weights = (
        np.array([[0.5], [-1.0], [2.0]]),
        np.array([[1.0], [0.5], [-0.5]]),
        np.array([0.1, 0.2, 0.3]),
        np.array([-0.1, 0.0, 0.4]),
    )

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    r = sig(0.5 * 0.8 + 0.1 + 1.0 * 0.3 - 0.1)
    z = sig(-1.0 * 0.8 + 0.2 + 0.5 * 0.3 + 0.0)
    n = math.tanh(2.0 * 0.8 + 0.3 + r * (-0.5 * 0.3 + 0.4))
    expected = (1 - z) * n + z * 0.3
    got = gru_step(np.array([[0.8]]), np.array([[0.3]]), weights)
    _close(got, np.array([[expected]]), 1e-14)


def test_gru_sequence_reads_only_the_first_length_steps(state_dict) -> None:
    weights = gru_weights(state_dict, "entity_composer.rnn_ent")
    x = np.random.default_rng(0).normal(size=(1, 4, 8))
    outputs, last = gru_sequence(x, np.array([2]), weights)
    h1 = gru_step(x[:, 0], np.zeros((1, 8)), weights)
    h2 = gru_step(x[:, 1], h1, weights)
    _close(last, h2)
    _close(outputs[0, :2], np.concatenate([h1, h2]))
    assert not outputs[0, 2:].any()
    back_outputs, back_last = gru_sequence(x, np.array([2]), weights, reverse=True)
    b1 = gru_step(x[:, 1], np.zeros((1, 8)), weights)
    b0 = gru_step(x[:, 0], b1, weights)
    _close(back_last, b0)
    _close(back_outputs[0, :2], np.concatenate([b0, b1]))


def test_star_adjacency_by_hand() -> None:
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 0, 0],
            [1, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    _close(star_adjacency(np.array([1.0, 1.0, 0.0])), expected)


# -------------------------------------------------------------------- GPO


def test_gpo_of_one_feature_returns_it(state_dict) -> None:
    features = np.random.default_rng(0).normal(size=(2, 5, D))
    pooled = gpo(features, np.array([1, 4]), state_dict, "image_encoder.gpool")
    _close(pooled[0], features[0, 0])


def test_gpo_of_two_features_mixes_max_and_min_with_one_weight(state_dict) -> None:
    features = np.random.default_rng(1).normal(size=(1, 2, D))
    pooled = gpo(features, np.array([2]), state_dict, "image_encoder.gpool")[0]
    high, low = features[0].max(0), features[0].min(0)
    weight = (pooled - low) / (high - low)
    assert 0.0 < weight[0] < 1.0
    _close(weight, np.full(D, weight[0]), 1e-9)


def test_gpo_ignores_row_order_padding_and_other_rows(state_dict) -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 6, D))
    lengths = np.array([4, 6])
    pooled = gpo(features, lengths, state_dict, "relation_composer.gpool")
    shuffled = features.copy()
    shuffled[0, :4] = features[0, [2, 0, 3, 1]]
    shuffled[0, 4:] = rng.normal(size=(2, D)) * 100.0
    alone = gpo(shuffled[:1, :5], lengths[:1], state_dict, "relation_composer.gpool")
    _close(alone[0], pooled[0])


def test_gpo_of_identical_features_returns_that_feature(state_dict) -> None:
    row = np.random.default_rng(3).normal(size=D)
    features = np.broadcast_to(row, (1, 5, D)).copy()
    _close(gpo(features, np.array([5]), state_dict, "image_encoder.gpool")[0], row)


# ----------------------------------------------------------------- graphs


def _dense(sd: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    weight = sd[prefix + ".weight"].astype(np.float64)
    return x @ weight.T + sd[prefix + ".bias"]


def _ln(sd: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    return layer_norm(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


def _names(sd: dict, tokens: np.ndarray) -> np.ndarray:
    return encode_phrases(
        sd,
        tokens,
        "entity_composer.word_embeddings.weight",
        "entity_composer.rnn_ent",
        "entity_composer.word_fc.0",
    )


def test_entity_without_attributes_is_relu_ln_of_value_plus_query(state_dict) -> None:
    tokens = np.array([[[3, 9, 4, 0]]])
    no_attributes = np.zeros((1, 1, 2, 4), dtype=int)
    out = entity_composer(state_dict, tokens, no_attributes)[0, 0]
    x0 = _names(state_dict, tokens)[0, 0]
    g = "entity_composer.graph_attn"
    v0 = _dense(state_dict, f"{g}.fc_val.0.0", x0)
    q0 = _dense(state_dict, f"{g}.fc.0", x0)
    _close(out, np.maximum(_ln(state_dict, f"{g}.lnorms.0", v0 + q0), 0.0))


def test_entity_with_one_attribute_matches_a_per_head_loop(state_dict) -> None:
    name, attribute = np.array([5, 7, 0]), np.array([11, 2, 6])
    tokens = name[None, None]
    attributes = np.zeros((1, 1, 3, 3), dtype=int)
    attributes[0, 0, 0] = attribute
    out = entity_composer(state_dict, tokens, attributes)[0, 0]
    x = np.stack(
        [
            _names(state_dict, tokens)[0, 0],
            encode_phrases(
                state_dict,
                attribute[None],
                "entity_composer.word_embeddings.weight",
                "entity_composer.rnn_attr",
                "entity_composer.word_fc.0",
            )[0],
        ]
    )
    g = "entity_composer.graph_attn"
    q = _dense(state_dict, f"{g}.fc.0", x)
    k = _dense(state_dict, f"{g}.fc2.0", x)
    v = _dense(state_dict, f"{g}.fc_val.0.0", x)
    a, beta = (
        state_dict[f"{g}.{n}.0"].astype(np.float64) for n in ("fc_aff", "fc_aff_bias")
    )
    size = D // 16
    mixed = np.zeros(D)
    for c in range(16):
        part = slice(c * size, (c + 1) * size)
        scores = []
        for j in range(2):
            pre = q[0, part] + k[j, part]
            leaky = np.where(pre > 0, pre, 0.2 * pre)
            scores.append(float(a[c] @ leaky) + beta[c])
        alpha = np.exp(scores) / np.exp(scores).sum()
        mixed[part] = alpha[0] * v[0, part] + alpha[1] * v[1, part]
    _close(out, np.maximum(_ln(state_dict, f"{g}.lnorms.0", mixed + q[0]), 0.0))


def _predicate(sd: dict, tokens: np.ndarray) -> np.ndarray:
    return encode_phrases(
        sd,
        tokens,
        "relation_composer.word_embeddings.weight",
        "relation_composer.rnn_relation",
        "relation_composer.word_fc.0",
    )


def test_relation_messages_by_hand(state_dict) -> None:
    rng = np.random.default_rng(4)
    e = rng.normal(size=(1, 4, D))
    tokens = np.array([[[8, 3, 0], [12, 0, 0]]])  # r0: 2 -> 1, r1: 0 -> 1
    subject, obj = np.array([[2, 0]]), np.array([[1, 1]])
    pred_a, pred_b = _predicate(state_dict, tokens[0])
    r = "relation_composer"

    def active(pred: np.ndarray, other: np.ndarray) -> np.ndarray:
        both = np.concatenate([pred, other])
        return np.maximum(_dense(state_dict, f"{r}.active_edge.0", both), 0)

    def passive(pred: np.ndarray, own: np.ndarray) -> np.ndarray:
        both = np.concatenate([pred, own])
        return np.maximum(_dense(state_dict, f"{r}.passive_edge.0", both), 0)

    full = relation_messages(state_dict, e, tokens, subject, obj)[0]
    _close(full[0], active(pred_b, e[0, 1]), 1e-7)
    both = (passive(pred_a, e[0, 1]) + passive(pred_b, e[0, 1])) / 2
    _close(full[1], both, 1e-7)
    _close(full[2], active(pred_a, e[0, 1]), 1e-7)
    assert not full[3].any()
    # One slot per kind: entity 1 keeps the passive message of the relation
    # whose subject comes first (the release fills slots subject by subject).
    capped = relation_messages(state_dict, e, tokens, subject, obj, 1)[0]
    _close(capped[1], passive(pred_b, e[0, 1]), 1e-7)
    _close(capped[[0, 2, 3]], full[[0, 2, 3]])


# --------------------------------------------------------- whole forward


def test_single_entity_caption_by_hand(state_dict) -> None:
    attributes = np.zeros((1, 1, 2, 4), dtype=np.int32)
    attributes[0, 0, 0, :2] = [7, 3]
    caption = {
        "entity_tokens": np.array([[[5, 2, 9, 0]]], dtype=np.int32),
        "attribute_tokens": attributes,
        "relation_tokens": np.zeros((1, 1, 4), dtype=np.int32),
        "relation_subject": np.zeros((1, 1), dtype=np.int32),
        "relation_object": np.zeros((1, 1), dtype=np.int32),
    }
    out = reference_forward(state_dict, caption)
    entity = entity_composer(state_dict, caption["entity_tokens"], attributes)[0, 0]
    r = "relation_composer"
    position = _dense(state_dict, f"{r}.pos_linear", sinusoid(1, 16)[0])
    e = _ln(state_dict, f"{r}.pos_lnorm", entity + position)
    e = _ln(state_dict, f"{r}.lnorm", e)  # no relation: zero message
    for t in range(2):  # a lone node attends to itself only
        g = f"{r}.graph_attention"
        q = _dense(state_dict, f"{g}.fc.{t}", e)
        v = _dense(state_dict, f"{g}.fc_val.{t}.0", e)
        e = np.maximum(_ln(state_dict, f"{g}.lnorms.{t}", v + q), 0.0)
    _close(out["caption"][0], e / np.linalg.norm(e))
    _close(out["entities"][0, 0], entity / np.linalg.norm(entity))


def test_outputs_are_unit_norm_with_zero_padded_entities(state_dict, inputs) -> None:
    out = reference_forward(state_dict, inputs)
    real = (inputs["entity_tokens"] != 0).any(-1)
    _close(np.linalg.norm(out["image"], axis=-1), np.ones(4))
    _close(np.linalg.norm(out["caption"], axis=-1), np.ones(4))
    _close(np.linalg.norm(out["entities"], axis=-1), real.astype(float))
    images = {k: inputs[k] for k in ("regions", "region_counts")}
    assert set(reference_forward(state_dict, images)) == {"image"}


def _pad_with_garbage(inputs: dict, rng: np.random.Generator) -> dict:
    """Two more regions, entities, attributes, relations, tokens; masked garbage."""
    b, n, f = inputs["regions"].shape
    _, e, a, t = inputs["attribute_tokens"].shape
    k = inputs["relation_tokens"].shape[1]
    regions = rng.normal(size=(b, n + 2, f)) * 50.0
    for row, count in enumerate(inputs["region_counts"]):
        regions[row, :count] = inputs["regions"][row, :count]
    entity_tokens = np.zeros((b, e + 2, t + 2), dtype=np.int32)
    entity_tokens[:, :e, :t] = inputs["entity_tokens"]
    attribute_tokens = np.zeros((b, e + 2, a + 2, t + 2), dtype=np.int32)
    attribute_tokens[:, :e, :a, :t] = inputs["attribute_tokens"]
    padded_entity = ~(entity_tokens != 0).any(-1)
    garbage = rng.integers(1, VOCAB, size=(padded_entity.sum(), 3))
    attribute_tokens[padded_entity, 0, :3] = garbage
    relation_tokens = np.zeros((b, k + 2, t + 2), dtype=np.int32)
    relation_tokens[:, :k, :t] = inputs["relation_tokens"]
    real = (relation_tokens != 0).any(-1)
    ends = {}
    for name in ("relation_subject", "relation_object"):
        index = rng.integers(-3, 40, size=(b, k + 2)).astype(np.int32)
        index[:, :k] = np.where(real[:, :k], inputs[name], index[:, :k])
        ends[name] = index
    return {
        "regions": regions.astype(np.float32),
        "region_counts": inputs["region_counts"],
        "entity_tokens": entity_tokens,
        "attribute_tokens": attribute_tokens,
        "relation_tokens": relation_tokens,
        **ends,
    }


def test_padding_with_masked_garbage_changes_no_real_output(state_dict, inputs) -> None:
    out = reference_forward(state_dict, inputs)
    garbage = _pad_with_garbage(inputs, np.random.default_rng(5))
    padded = reference_forward(state_dict, garbage)
    _close(padded["image"], out["image"])
    _close(padded["caption"], out["caption"])
    _close(padded["entities"][:, : out["entities"].shape[1]], out["entities"])
    assert not padded["entities"][:, out["entities"].shape[1] :].any()


def test_each_example_is_independent_of_the_batch(state_dict, inputs) -> None:
    out = reference_forward(state_dict, inputs)
    for row in range(4):
        example = {k: v[row : row + 1] for k, v in inputs.items()}
        alone = reference_forward(state_dict, example)
        for name in ("image", "caption", "entities"):
            _close(alone[name][0], out[name][row])


def _first_caption(inputs: dict) -> dict:
    return {k: v[:1].copy() for k, v in inputs.items()}


def test_attribute_order_does_not_matter(state_dict, inputs) -> None:
    caption = _first_caption(inputs)  # row 0: every slot real
    out = reference_forward(state_dict, caption)
    caption["attribute_tokens"] = caption["attribute_tokens"][:, :, [2, 0, 1]]
    _close(reference_forward(state_dict, caption)["entities"], out["entities"])


def test_relation_order_does_not_matter_below_the_cap(state_dict, inputs) -> None:
    caption = _first_caption(inputs)
    out = reference_forward(state_dict, caption)
    order = [3, 1, 4, 0, 2]
    for name in ("relation_tokens", "relation_subject", "relation_object"):
        caption[name] = caption[name][:, order]
    _close(reference_forward(state_dict, caption)["caption"], out["caption"])


def test_entity_order_permutes_entities_and_moves_the_caption(
    state_dict, inputs
) -> None:
    caption = _first_caption(inputs)
    out = reference_forward(state_dict, caption)
    order = np.array([2, 0, 3, 1])
    caption["entity_tokens"] = caption["entity_tokens"][:, order]
    caption["attribute_tokens"] = caption["attribute_tokens"][:, order]
    new_index = np.argsort(order)
    for name in ("relation_subject", "relation_object"):
        caption[name] = new_index[caption[name]].astype(np.int32)
    moved = reference_forward(state_dict, caption)
    _close(moved["entities"][0], out["entities"][0, order])
    # graph position codes follow parse order, so the caption changes
    assert not np.allclose(moved["caption"], out["caption"], atol=1e-6)


def test_relation_direction_matters(state_dict, inputs) -> None:
    caption = _first_caption(inputs)
    caption["relation_subject"][0, 0], caption["relation_object"][0, 0] = 0, 1
    out = reference_forward(state_dict, caption)
    caption["relation_subject"][0, 0], caption["relation_object"][0, 0] = 1, 0
    flipped = reference_forward(state_dict, caption)
    assert not np.allclose(flipped["caption"], out["caption"], atol=1e-6)


# ------------------------------------------------------ inputs and state


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        ("region_counts", (1,), 0, r"\['region_counts'\]\[1\] = 0: not in 1..6"),
        ("relation_object", (0, 2), 9, r"\['relation_object'\]\[0, 2\] = 9: not one"),
        (
            "entity_tokens",
            (0, 1, slice(None)),
            [3, 0, 5, 0, 0],
            r"\['entity_tokens'\]\[0, 1\]: token at position 2 follows padding",
        ),
    ],
)
def test_bad_inputs_name_field_and_index(inputs, field, index, value, message) -> None:
    broken = {k: v.copy() for k, v in inputs.items()}
    broken[field][index] = value
    with pytest.raises(ValueError, match=message):
        check_inputs(broken)


def test_real_entity_after_padding_is_rejected(inputs) -> None:
    broken = {k: v.copy() for k, v in inputs.items()}
    real = (inputs["entity_tokens"] != 0).any(-1)
    row = int(np.flatnonzero(~real.all(-1))[0])
    slot = int(np.flatnonzero(~real[row])[0])
    broken["entity_tokens"][row, slot - 1] = 0
    broken["entity_tokens"][row, slot, 0] = 3
    message = rf"\['entity_tokens'\]\[{row}, {slot}\]: real slot after"
    with pytest.raises(ValueError, match=message):
        check_inputs(broken)


def test_random_state_dict_layout() -> None:
    sd = random_state_dict(30, embed_size=32, word_dim=8, region_feature_size=12)
    assert len(sd) == 101  # image 34, entity composer 21, relation composer 46
    shapes = {
        "image_encoder.mlp.0.weight": (512, 12),
        "image_encoder.attn_pool.in_proj_weight": (96, 32),
        "image_encoder.gpool.gru.weight_hh_l0_reverse": (96, 32),
        "image_encoder.gpool.linear.weight": (1, 32),
        "entity_composer.rnn_attr.weight_ih_l0": (24, 8),
        "entity_composer.graph_attn.fc_aff.0": (16, 2),
        "relation_composer.graph_attention.fc_val.1.0.weight": (32, 32),
        "relation_composer.active_edge.0.weight": (32, 64),
        "relation_composer.pos_linear.weight": (32, 16),
    }
    assert {key: sd[key].shape for key in shapes} == shapes
    tracked = sd["image_encoder.mlp.1.num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64
    assert (sd["image_encoder.mlp.1.running_var"] > 0).all()
    tied = sd["relation_composer.word_embeddings.weight"]
    assert tied is sd["entity_composer.word_embeddings.weight"]
    again = random_state_dict(30, embed_size=32, word_dim=8, region_feature_size=12)
    assert all(np.array_equal(sd[k], again[k]) for k in sd)
    with pytest.raises(ValueError, match="divisible by 16"):
        random_state_dict(30, embed_size=40)


# ------------------------------------------------------------ with torch


def _load(module, sd: dict, prefix: str):
    """torch `module` holding the arrays under `prefix` (strict), float64, eval mode."""
    import torch

    module.load_state_dict(
        {
            key[len(prefix) :]: torch.from_numpy(np.array(value))
            for key, value in sd.items()
            if key.startswith(prefix)
        }
    )
    return module.double().eval()


def test_phrase_encoder_matches_torch_gru(state_dict) -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence

    p = "entity_composer"
    tokens = np.array(
        [[4, 9, 13, 2, 0], [6, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]]
    )
    gru = _load(torch.nn.GRU(8, 8, batch_first=True), state_dict, f"{p}.rnn_attr.")
    fc = _load(torch.nn.Linear(8, D), state_dict, f"{p}.word_fc.0.")
    table = torch.from_numpy(state_dict[f"{p}.word_embeddings.weight"]).double()
    lengths = torch.tensor([4, 1, 1, 5])  # the padded phrase is read as one token
    with torch.no_grad():
        embedded = table[torch.from_numpy(tokens)]
        _, last = gru(pack_padded_sequence(embedded, lengths, True, False))
        expected = torch.relu(fc(last[0])).numpy()
    got = encode_phrases(
        state_dict,
        tokens,
        "entity_composer.word_embeddings.weight",
        "entity_composer.rnn_attr",
        "entity_composer.word_fc.0",
    )
    _close(got, expected)


def test_bidirectional_gru_matches_torch(state_dict) -> None:
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    prefix = "image_encoder.gpool.gru"
    module = torch.nn.GRU(32, 32, batch_first=True, bidirectional=True)
    gru = _load(module, state_dict, prefix + ".")
    x = np.random.default_rng(6).normal(size=(3, 5, 32))
    lengths = np.array([5, 2, 3])
    with torch.no_grad():
        packed = pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), True, False
        )
        expected, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    forward, _ = gru_sequence(x, lengths, gru_weights(state_dict, prefix))
    reverse = gru_weights(state_dict, prefix, reverse=True)
    backward, _ = gru_sequence(x, lengths, reverse, reverse=True)
    _close(np.concatenate([forward, backward], -1), expected.numpy())


def test_multihead_attention_matches_torch(state_dict) -> None:
    torch = pytest.importorskip("torch")
    prefix = "image_encoder.attn_pool."
    module = torch.nn.MultiheadAttention(D, 16, batch_first=True)
    mha = _load(module, state_dict, prefix)
    h = np.random.default_rng(7).normal(size=(2, 5, D))
    valid = np.array([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        x = torch.from_numpy(h)
        ignore = torch.from_numpy(~valid)
        expected, _ = mha(x, x, x, key_padding_mask=ignore, need_weights=False)
    names = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    weights = (state_dict[prefix + name] for name in names)
    got = multihead_attention(h, valid, *weights, num_heads=16)
    _close(got, expected.numpy())


def test_norms_match_torch(state_dict) -> None:
    torch = pytest.importorskip("torch")
    bn = _load(torch.nn.BatchNorm1d(512), state_dict, "image_encoder.mlp.1.")
    ln = _load(torch.nn.LayerNorm(D), state_dict, "image_encoder.lnorm2.")
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 512)) * 3 + 1, rng.normal(size=(2, 3, D)) * 3 + 1
    p = "image_encoder."
    names = ("weight", "bias", "running_mean", "running_var")
    statistics = (state_dict[f"{p}mlp.1.{n}"].astype(np.float64) for n in names)
    scale, shift = state_dict[f"{p}lnorm2.weight"], state_dict[f"{p}lnorm2.bias"]
    with torch.no_grad():
        _close(batch_norm_eval(x, *statistics), bn(torch.from_numpy(x)).numpy())
        _close(layer_norm(y, scale, shift), ln(torch.from_numpy(y)).numpy())


def test_release_checkpoint_round_trip(state_dict, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "release.pth"
    save_release_checkpoint(state_dict, str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert list(loaded) == list(state_dict)
    assert all(np.array_equal(loaded[k].numpy(), state_dict[k]) for k in state_dict)
    assert loaded["image_encoder.mlp.1.num_batches_tracked"].dtype == torch.int64
    entity = loaded["entity_composer.word_embeddings.weight"]
    relation = loaded["relation_composer.word_embeddings.weight"]
    assert entity.data_ptr() == relation.data_ptr()


def test_image_tower_matches_torch_modules_with_release_names(
    state_dict, inputs
) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    encoder = nn.Module()
    encoder.linear = nn.Linear(12, D)
    encoder.mlp = nn.Sequential(
        nn.Linear(12, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, D)
    )
    encoder.lnorm, encoder.lnorm2 = nn.LayerNorm(D), nn.LayerNorm(D)
    encoder.fc, encoder.fc2 = nn.Linear(D, D), nn.Linear(D, D)
    encoder.pos_linear = nn.Linear(16, D)
    encoder.attn_pool = nn.MultiheadAttention(D, 16, batch_first=True)
    encoder.gpool = nn.Module()
    encoder.gpool.gru = nn.GRU(32, 32, batch_first=True, bidirectional=True)
    encoder.gpool.linear = nn.Linear(32, 1, bias=False)
    encoder = _load(encoder, state_dict, "image_encoder.")  # strict: same key set

    counts = inputs["region_counts"]
    b, n, _ = inputs["regions"].shape
    valid = torch.from_numpy(np.arange(n)[None] < counts[:, None])
    with torch.no_grad():
        x = torch.from_numpy(inputs["regions"]).double()
        branch = encoder.mlp(x.reshape(b * n, -1)).reshape(b, n, D)
        feat = encoder.linear(x) + branch
        pos = torch.from_numpy(position_codes(counts, n, 16))
        h = encoder.lnorm(feat + encoder.pos_linear(pos))
        attended = encoder.attn_pool(h, h, h, key_padding_mask=~valid)[0]
        feat = feat + attended
        feat = feat + encoder.fc2(torch.relu(encoder.fc(encoder.lnorm2(feat))))
        k = int(counts.max())
        mask = valid[:, :k, None]
        codes = torch.from_numpy(position_codes(counts, k, 32))
        codes = pack_padded_sequence(codes, torch.from_numpy(counts), True, False)
        hidden = pad_packed_sequence(encoder.gpool.gru(codes)[0], batch_first=True)[0]
        scores = encoder.gpool.linear((hidden[..., :32] + hidden[..., 32:]) / 2)
        weights = torch.softmax(scores.masked_fill(~mask, -10000) / 0.1, dim=1)
        ranked = feat[:, :k].masked_fill(~mask, -10000)
        ranked = ranked.sort(dim=1, descending=True)[0].masked_fill(~mask, 0)
        expected = (weights * ranked).sum(1).numpy()
    _close(image_tower(state_dict, inputs["regions"], counts), expected)
