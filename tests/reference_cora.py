"""Independent NumPy reference of the CORA release forward pass (inference).

A second implementation of MODEL.md, fed directly with a state dict of NumPy
arrays keyed by the release's names (checkpoint_layout.md), for the GRU
configuration with composer hidden size H equal to the embedding size D.
It computes the release's way, dense over every padded slot with masks
(the library packs real phrases; this module deliberately does not), in
float64, with no dropout. Tests compare the library's Keras model against
`reference_forward` on a `random_state_dict` (also written with
`save_release_checkpoint`, as the authors' file would be).

Padding conventions (cora_keras/inputs.py): token 0 is padding, real items
come first, a phrase's length is its number of nonzero tokens. A padded
phrase is read by the GRUs as one token (the release clamps lengths to 1);
the graph masks keep such slots from reaching any real output (attributes
under a padded entity only shape that padded slot).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from cora_keras.inputs import CAPTION_INPUTS, IMAGE_INPUTS

StateDict = Mapping[str, np.ndarray]
GruWeights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

POSITION_DIM = 16  # region and graph position codes
GPO_DIM = 32  # GPO position codes and GRU hidden size
IMAGE_MLP_DIM = 512  # hidden width of the image encoder's MLP branch
NORM_EPS = 1e-5  # LayerNorm and BatchNorm
GRAPH_MASKED_SCORE = -1e9  # graph attention score where adjacency is 0
GPO_MASKED_SCORE = -10000.0  # GPO score at padded positions
GPO_TEMPERATURE = 0.1
LEAKY_SLOPE = 0.2
MESSAGE_EPS = 1e-8  # the release divides the message sum by count + 1e-8
L2_EPS = 1e-12


# ---------------------------------------------------------------- primitives


def sinusoid(length: int, dim: int) -> np.ndarray:
    """Transformer position codes (length, dim): sin on even, cos on odd channels."""
    if dim % 2:
        raise ValueError(f"sinusoid: dim must be even, got {dim}")
    position = np.arange(length, dtype=np.float64)[:, None]
    frequency = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    codes = np.zeros((length, dim))
    codes[:, 0::2] = np.sin(position * frequency)
    codes[:, 1::2] = np.cos(position * frequency)
    return codes


def position_codes(counts: np.ndarray, length: int, dim: int) -> np.ndarray:
    """(B, length, dim): sinusoid of positions 0..count-1 per row, zeros after."""
    valid = np.arange(length)[None, :] < np.asarray(counts)[:, None]
    return sinusoid(length, dim)[None] * valid[..., None]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax along `axis`; -inf entries get weight 0."""
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh so it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(x, 0.0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, 1e-12) over the last axis (torch F.normalize)."""
    norm = np.sqrt((x * x).sum(-1, keepdims=True))
    return x / np.maximum(norm, L2_EPS)


def layer_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = NORM_EPS
) -> np.ndarray:
    """LayerNorm over the last axis, biased variance."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def batch_norm_eval(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = NORM_EPS,
) -> np.ndarray:
    """BatchNorm in inference mode: running statistics, per channel (last axis)."""
    return (x - running_mean) / np.sqrt(running_var + eps) * weight + bias


def gru_step(
    x: np.ndarray, h: np.ndarray, weights: GruWeights
) -> np.ndarray:
    """One PyTorch GRU step: gates r, z, n; reset applied after the recurrent matmul."""
    w_ih, w_hh, b_ih, b_hh = weights
    x_r, x_z, x_n = np.split(x @ w_ih.T + b_ih, 3, axis=-1)
    h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


def gru_sequence(
    x: np.ndarray, lengths: np.ndarray, weights: GruWeights, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Run a GRU over the first `lengths` steps of each row of x (B, T, in).

    Returns (outputs (B, T, hidden), zero at steps >= length; final state
    (B, hidden)). Initial state zero; with `reverse` a row starts at step
    length - 1 and ends at step 0, as a packed PyTorch sequence does.
    """
    batch, steps, _ = x.shape
    hidden = weights[1].shape[1]
    lengths = np.asarray(lengths)
    h = np.zeros((batch, hidden))
    outputs = np.zeros((batch, steps, hidden))
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        active = (t < lengths)[:, None]
        h = np.where(active, gru_step(x[:, t], h, weights), h)
        outputs[:, t] = np.where(active, h, 0.0)
    return outputs, h


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """Split the last axis into (num_heads, size / num_heads)."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def multihead_attention(
    x: np.ndarray,
    key_valid: np.ndarray,
    in_proj_weight: np.ndarray,
    in_proj_bias: np.ndarray,
    out_weight: np.ndarray,
    out_bias: np.ndarray,
    num_heads: int,
) -> np.ndarray:
    """Self-attention over x (B, n, d), fused (q, k, v) rows, invalid keys masked."""
    batch, n, d = x.shape
    head = d // num_heads
    q, k, v = np.split(x @ in_proj_weight.T + in_proj_bias, 3, axis=-1)
    q, k, v = (_heads(a, num_heads) for a in (q, k, v))
    scores = np.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(head)
    scores = np.where(key_valid[:, None, None, :], scores, -np.inf)
    mixed = np.einsum("bhij,bjhd->bihd", softmax(scores, axis=-1), v)
    return mixed.reshape(batch, n, d) @ out_weight.T + out_bias


# ------------------------------------------------------- state dict access


def _param(state_dict: StateDict, key: str) -> np.ndarray:
    if key not in state_dict:
        raise KeyError(f"state dict has no key {key!r} (see checkpoint_layout.md)")
    return np.asarray(state_dict[key], dtype=np.float64)


def _dense(state_dict: StateDict, prefix: str, x: np.ndarray) -> np.ndarray:
    """PyTorch Linear `prefix`: x W^T + b (bias optional)."""
    y = x @ _param(state_dict, prefix + ".weight").T
    if prefix + ".bias" in state_dict:
        y = y + _param(state_dict, prefix + ".bias")
    return y


def _layer_norm(state_dict: StateDict, prefix: str, x: np.ndarray) -> np.ndarray:
    return layer_norm(
        x, _param(state_dict, prefix + ".weight"), _param(state_dict, prefix + ".bias")
    )


def gru_weights(
    state_dict: StateDict, prefix: str, reverse: bool = False
) -> GruWeights:
    """(weight_ih, weight_hh, bias_ih, bias_hh) of the PyTorch GRU `prefix`."""
    suffix = "_l0_reverse" if reverse else "_l0"
    w_ih, w_hh, b_ih, b_hh = (
        _param(state_dict, f"{prefix}.{name}{suffix}")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )
    return w_ih, w_hh, b_ih, b_hh


def _layer_count(state_dict: StateDict, prefix: str) -> int:
    count = 0
    while f"{prefix}.lnorms.{count}.weight" in state_dict:
        count += 1
    if count == 0:
        raise KeyError(f"state dict has no graph attention layer under {prefix!r}")
    return count


# ------------------------------------------------------------ model blocks


def gpo(
    features: np.ndarray, lengths: np.ndarray, state_dict: StateDict, prefix: str
) -> np.ndarray:
    """GPO pooling of features (B, K, d) over the first `lengths` rows -> (B, d)."""
    lengths = np.asarray(lengths)
    k = int(lengths.max())
    valid = np.arange(k)[None, :] < lengths[:, None]
    codes = position_codes(lengths, k, GPO_DIM)
    gru = prefix + ".gru"
    forward, _ = gru_sequence(codes, lengths, gru_weights(state_dict, gru))
    backward, _ = gru_sequence(
        codes, lengths, gru_weights(state_dict, gru, reverse=True), reverse=True
    )
    scores = _dense(state_dict, prefix + ".linear", (forward + backward) / 2.0)[..., 0]
    scores = np.where(valid, scores, GPO_MASKED_SCORE)
    weights = softmax(scores / GPO_TEMPERATURE, axis=1)
    valid = valid[..., None]
    ranked = -np.sort(-np.where(valid, features[:, :k], -np.inf), axis=1)
    ranked = np.where(valid, ranked, 0.0)
    return (weights[..., None] * ranked).sum(1)


def graph_attention_layer(
    x: np.ndarray,
    adjacency: np.ndarray,
    state_dict: StateDict,
    prefix: str,
    layer: int,
    num_heads: int,
) -> np.ndarray:
    """Layer `layer` of the graph attention stack `prefix` over x (..., n, H).

    `adjacency` (..., n, n): node i attends to node j where it is nonzero;
    elsewhere the score is -1e9, so a row with no edge attends uniformly.
    """
    *lead, n, d = x.shape
    head = d // num_heads
    affinity = _param(state_dict, f"{prefix}.fc_aff.{layer}")
    if affinity.shape != (num_heads, head):
        raise ValueError(
            f"{prefix}.fc_aff.{layer} has shape {affinity.shape}, "
            f"expected ({num_heads}, {head}) for {num_heads} heads"
        )
    affinity_bias = _param(state_dict, f"{prefix}.fc_aff_bias.{layer}")
    q = _dense(state_dict, f"{prefix}.fc.{layer}", x)
    k = _dense(state_dict, f"{prefix}.fc2.{layer}", x)
    v = _dense(state_dict, f"{prefix}.fc_val.{layer}.0", x)
    q_heads, k_heads = _heads(q, num_heads), _heads(k, num_heads)
    pair = q_heads[..., :, None, :, :] + k_heads[..., None, :, :, :]
    pair = np.where(pair > 0, pair, LEAKY_SLOPE * pair)
    scores = (pair * affinity).sum(-1) + affinity_bias  # (..., i, j, heads)
    scores = np.where(adjacency[..., None] > 0, scores, GRAPH_MASKED_SCORE)
    alpha = softmax(scores, axis=-2)
    mixed = np.einsum("...ijh,...jhd->...ihd", alpha, _heads(v, num_heads))
    mixed = mixed.reshape(*lead, n, d)
    return relu(_layer_norm(state_dict, f"{prefix}.lnorms.{layer}", mixed + q))


def phrase_lengths(tokens: np.ndarray) -> np.ndarray:
    """Number of nonzero tokens per phrase (last axis)."""
    return (np.asarray(tokens) != 0).sum(-1)


def encode_phrases(
    state_dict: StateDict,
    tokens: np.ndarray,
    embedding_key: str,
    gru_prefix: str,
    fc_prefix: str,
) -> np.ndarray:
    """GRU phrase encoder over tokens (..., T) -> ReLU(word_fc(last state)) (..., H).

    Every slot is encoded; a padded one reads its first token (length clamped to 1).
    """
    tokens = np.asarray(tokens)
    flat = tokens.reshape(-1, tokens.shape[-1])
    embedded = _param(state_dict, embedding_key)[flat]
    lengths = np.maximum(phrase_lengths(flat), 1)
    _, last = gru_sequence(embedded, lengths, gru_weights(state_dict, gru_prefix))
    encoded = relu(_dense(state_dict, fc_prefix, last))
    return encoded.reshape(*tokens.shape[:-1], encoded.shape[-1])


def image_tower(
    state_dict: StateDict,
    regions: np.ndarray,
    region_counts: np.ndarray,
    num_heads: int = 16,
) -> np.ndarray:
    """Image embedding (B, D) before normalisation (MODEL.md section 1)."""
    p = "image_encoder"
    sd = state_dict
    x = np.asarray(regions, dtype=np.float64)
    counts = np.asarray(region_counts)
    hidden = batch_norm_eval(
        _dense(sd, f"{p}.mlp.0", x),
        _param(sd, f"{p}.mlp.1.weight"),
        _param(sd, f"{p}.mlp.1.bias"),
        _param(sd, f"{p}.mlp.1.running_mean"),
        _param(sd, f"{p}.mlp.1.running_var"),
    )
    feat = _dense(sd, f"{p}.linear", x) + _dense(sd, f"{p}.mlp.3", relu(hidden))
    codes = position_codes(counts, x.shape[1], POSITION_DIM)
    h = _layer_norm(sd, f"{p}.lnorm", feat + _dense(sd, f"{p}.pos_linear", codes))
    key_valid = np.arange(x.shape[1])[None, :] < counts[:, None]
    feat = feat + multihead_attention(
        h,
        key_valid,
        _param(sd, f"{p}.attn_pool.in_proj_weight"),
        _param(sd, f"{p}.attn_pool.in_proj_bias"),
        _param(sd, f"{p}.attn_pool.out_proj.weight"),
        _param(sd, f"{p}.attn_pool.out_proj.bias"),
        num_heads,
    )
    mlp = relu(_dense(sd, f"{p}.fc", _layer_norm(sd, f"{p}.lnorm2", feat)))
    feat = feat + _dense(sd, f"{p}.fc2", mlp)
    return gpo(feat, counts, sd, f"{p}.gpool")


def star_adjacency(attribute_real: np.ndarray) -> np.ndarray:
    """Entity graphs (..., 1 + A, 1 + A) from real-attribute masks (..., A).

    Node 0 (the name) has a self loop and an undirected edge to every real
    attribute; attribute nodes have no self loop.
    """
    *lead, a = attribute_real.shape
    adjacency = np.zeros((*lead, a + 1, a + 1))
    adjacency[..., 0, 0] = 1.0
    adjacency[..., 0, 1:] = attribute_real
    adjacency[..., 1:, 0] = attribute_real
    return adjacency


def entity_composer(
    state_dict: StateDict,
    entity_tokens: np.ndarray,
    attribute_tokens: np.ndarray,
    num_heads: int = 16,
) -> np.ndarray:
    """Entity embeddings (B, E, H) before normalisation (MODEL.md 2.1, 2.3)."""
    p = "entity_composer"
    embedding = f"{p}.word_embeddings.weight"
    word_fc = f"{p}.word_fc.0"
    names = encode_phrases(
        state_dict, entity_tokens, embedding, f"{p}.rnn_ent", word_fc
    )
    attributes = encode_phrases(
        state_dict, attribute_tokens, embedding, f"{p}.rnn_attr", word_fc
    )
    nodes = np.concatenate([names[:, :, None], attributes], axis=2)
    attribute_real = phrase_lengths(attribute_tokens) > 0
    adjacency = star_adjacency(attribute_real.astype(np.float64))
    for layer in range(_layer_count(state_dict, f"{p}.graph_attn")):
        nodes = graph_attention_layer(
            nodes, adjacency, state_dict, f"{p}.graph_attn", layer, num_heads
        )
    return nodes[:, :, 0]


def relation_slots(
    relation_real: np.ndarray,
    relation_subject: np.ndarray,
    relation_object: np.ndarray,
    max_entities: int,
    max_relations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-entity message slots (B, E, R) holding relation indices, -1 where empty.

    Active slots of u: relations with subject u; passive slots of v: relations
    with object v. As in the release, relations are visited grouped by
    subject (entity order), in list order within a subject, and each entity
    keeps the first `max_relations` of each kind.
    """
    batch = relation_real.shape[0]
    active = np.full((batch, max_entities, max_relations), -1)
    passive = np.full((batch, max_entities, max_relations), -1)
    for b in range(batch):
        real = [k for k in range(relation_real.shape[1]) if relation_real[b, k]]
        for k in sorted(real, key=lambda k: relation_subject[b, k]):
            ends = (relation_subject[b, k], relation_object[b, k])
            for slots, entity in zip((active, passive), ends):
                free = np.flatnonzero(slots[b, entity] < 0)
                if free.size:
                    slots[b, entity, free[0]] = k
    return active, passive


def relation_messages(
    state_dict: StateDict,
    entities: np.ndarray,
    relation_tokens: np.ndarray,
    relation_subject: np.ndarray,
    relation_object: np.ndarray,
    max_relations: int = 13,
) -> np.ndarray:
    """Mean relation message m (B, E, H) per entity (MODEL.md 2.4 step 2-3).

    Active: ReLU(Linear_act([pred; e_obj])) for the subject; passive:
    ReLU(Linear_pas([pred; e_u])) for the object u itself. Sum over the
    entity's slots divided by (count + 1e-8), as the release does.
    """
    p = "relation_composer"
    relation_real = phrase_lengths(relation_tokens) > 0
    active, passive = relation_slots(
        relation_real,
        relation_subject,
        relation_object,
        entities.shape[1],
        max_relations,
    )
    batch_index = np.arange(entities.shape[0])[:, None, None]

    def slot_predicates(slots: np.ndarray) -> np.ndarray:
        gathered = relation_tokens[batch_index, np.maximum(slots, 0)]
        tokens = np.where((slots >= 0)[..., None], gathered, 0)
        return encode_phrases(
            state_dict,
            tokens,
            f"{p}.word_embeddings.weight",
            f"{p}.rnn_relation",
            f"{p}.word_fc.0",
        )

    objects = relation_object[batch_index, np.maximum(active, 0)]
    objects = np.where(active >= 0, objects, 0)
    active_input = np.concatenate(
        [slot_predicates(active), entities[batch_index, objects]], -1
    )
    own = np.broadcast_to(entities[:, :, None], (*passive.shape, entities.shape[-1]))
    passive_input = np.concatenate([slot_predicates(passive), own], -1)
    active_messages = relu(_dense(state_dict, f"{p}.active_edge.0", active_input))
    passive_messages = relu(_dense(state_dict, f"{p}.passive_edge.0", passive_input))
    total = (active_messages * (active >= 0)[..., None]).sum(2) + (
        passive_messages * (passive >= 0)[..., None]
    ).sum(2)
    count = (active >= 0).sum(2) + (passive >= 0).sum(2)
    return total / (count[..., None] + MESSAGE_EPS)


def relation_adjacency(
    entity_counts: np.ndarray,
    max_entities: int,
    relation_real: np.ndarray,
    relation_subject: np.ndarray,
    relation_object: np.ndarray,
) -> np.ndarray:
    """Entity graph (B, E, E): self loops on real entities, both ways per relation."""
    batch = len(entity_counts)
    adjacency = np.zeros((batch, max_entities, max_entities))
    for b in range(batch):
        idx = np.arange(entity_counts[b])
        adjacency[b, idx, idx] = 1.0
        real = relation_real[b]
        adjacency[b, relation_subject[b, real], relation_object[b, real]] = 1.0
        adjacency[b, relation_object[b, real], relation_subject[b, real]] = 1.0
    return adjacency


def relation_composer(
    state_dict: StateDict,
    entities: np.ndarray,
    entity_counts: np.ndarray,
    relation_tokens: np.ndarray,
    relation_subject: np.ndarray,
    relation_object: np.ndarray,
    num_heads: int = 16,
    max_relations: int = 13,
) -> np.ndarray:
    """Caption embedding (B, D), not normalised, from entity embeddings (B, E, H)."""
    p = "relation_composer"
    max_entities = entities.shape[1]
    codes = position_codes(entity_counts, max_entities, POSITION_DIM)
    e = entities + _dense(state_dict, f"{p}.pos_linear", codes)
    e = _layer_norm(state_dict, f"{p}.pos_lnorm", e)
    m = relation_messages(
        state_dict, e, relation_tokens, relation_subject, relation_object, max_relations
    )
    e = _layer_norm(state_dict, f"{p}.lnorm", e + m)
    adjacency = relation_adjacency(
        entity_counts,
        max_entities,
        phrase_lengths(relation_tokens) > 0,
        relation_subject,
        relation_object,
    )
    for layer in range(_layer_count(state_dict, f"{p}.graph_attention")):
        e = graph_attention_layer(
            e, adjacency, state_dict, f"{p}.graph_attention", layer, num_heads
        )
    return gpo(e, entity_counts, state_dict, f"{p}.gpool")


# ------------------------------------------------------------------ inputs


def _check_phrases(name: str, tokens: np.ndarray) -> None:
    """Tokens are nonnegative and every phrase's nonzero tokens come first."""
    if tokens.min(initial=0) < 0:
        index = tuple(int(i) for i in np.argwhere(tokens < 0)[0])
        raise ValueError(f"inputs[{name!r}]{list(index)}: negative token id")
    nonzero = tokens != 0
    gap = nonzero[..., 1:] & ~nonzero[..., :-1]
    if gap.any():
        index = tuple(int(i) for i in np.argwhere(gap)[0])
        raise ValueError(
            f"inputs[{name!r}]{list(index[:-1])}: token at position {index[-1] + 1} "
            "follows padding (a phrase's tokens must come first)"
        )


def _check_real_first(name: str, real: np.ndarray) -> None:
    """Along the last axis, no real slot follows a padded one."""
    late = real[..., 1:] & ~real[..., :-1]
    if late.any():
        index = tuple(int(i) for i in np.argwhere(late)[0])
        raise ValueError(
            f"inputs[{name!r}]{list(index[:-1]) + [index[-1] + 1]}: real slot after a "
            "padded one (real items come first)"
        )


def check_inputs(inputs: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError naming the field and index where `inputs` break the contract."""
    has_image = all(n in inputs for n in IMAGE_INPUTS)
    has_caption = all(n in inputs for n in CAPTION_INPUTS)
    if not (has_image or has_caption):
        raise ValueError(
            f"inputs need all of {IMAGE_INPUTS} or all of {CAPTION_INPUTS}; "
            f"got {sorted(inputs)}"
        )
    if has_image:
        counts = np.asarray(inputs["region_counts"])
        rows = np.asarray(inputs["regions"]).shape[1]
        bad = np.flatnonzero((counts < 1) | (counts > rows))
        if bad.size:
            row = bad[0]
            raise ValueError(
                f"inputs['region_counts'][{row}] = {counts[row]}: not in 1..{rows}"
            )
    if not has_caption:
        return
    arrays = {n: np.asarray(inputs[n]) for n in CAPTION_INPUTS}
    for name in ("entity_tokens", "attribute_tokens", "relation_tokens"):
        _check_phrases(name, arrays[name])
    entity_real = phrase_lengths(arrays["entity_tokens"]) > 0
    _check_real_first("entity_tokens", entity_real)
    attribute_real = phrase_lengths(arrays["attribute_tokens"]) > 0
    _check_real_first("attribute_tokens", attribute_real)
    relation_real = phrase_lengths(arrays["relation_tokens"]) > 0
    _check_real_first("relation_tokens", relation_real)
    empty = np.flatnonzero(~entity_real[:, 0])
    if empty.size:
        raise ValueError(f"inputs['entity_tokens'][{empty[0]}]: caption has no entity")
    counts = entity_real.sum(1)
    for name in ("relation_subject", "relation_object"):
        index = arrays[name]
        bad = np.argwhere(relation_real & ((index < 0) | (index >= counts[:, None])))
        if bad.size:
            b, k = (int(i) for i in bad[0])
            raise ValueError(
                f"inputs[{name!r}][{b}, {k}] = {index[b, k]}: not one of the caption's "
                f"{counts[b]} entities"
            )


# ----------------------------------------------------------------- forward


def reference_forward(
    state_dict: StateDict,
    inputs: Mapping[str, np.ndarray],
    num_heads: int = 16,
    max_relations: int = 13,
) -> dict[str, np.ndarray]:
    """L2-normalised embeddings of the release in inference mode (float64).

    Returns `image` (B, D) when the image inputs are given and `caption`
    (B, D), `entities` (B, E, D) (padded slots zero) when the caption inputs
    are given. `max_relations` is R, messages kept per entity and direction.
    """
    check_inputs(inputs)
    outputs = {}
    if all(n in inputs for n in IMAGE_INPUTS):
        counts = np.asarray(inputs["region_counts"])
        image = image_tower(state_dict, inputs["regions"], counts, num_heads)
        outputs["image"] = l2_normalize(image)
    if all(n in inputs for n in CAPTION_INPUTS):
        entity_tokens = np.asarray(inputs["entity_tokens"])
        relation_tokens = np.asarray(inputs["relation_tokens"])
        entities = entity_composer(
            state_dict, entity_tokens, np.asarray(inputs["attribute_tokens"]), num_heads
        )
        entity_real = phrase_lengths(entity_tokens) > 0
        caption = relation_composer(
            state_dict,
            entities,
            entity_real.sum(1),
            relation_tokens,
            np.asarray(inputs["relation_subject"]),
            np.asarray(inputs["relation_object"]),
            num_heads,
            max_relations,
        )
        outputs["entities"] = l2_normalize(entities) * entity_real[..., None]
        outputs["caption"] = l2_normalize(caption)
    return outputs


# -------------------------------------------------------------- fixtures


def random_state_dict(
    vocab_size: int,
    embed_size: int = 64,
    word_dim: int = 24,
    region_feature_size: int = 48,
    entity_layers: int = 1,
    relation_layers: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every key of checkpoint_layout.md (GRU config, H = D = embed_size), float32.

    Weights are normal / sqrt(fan_in), biases normal * 0.1, norm scales near 1,
    BatchNorm running_var in [0.5, 1.5], num_batches_tracked a 0-d int64.
    `relation_composer.word_embeddings.weight` is the entity composer's array
    (the same object: tied).
    """
    if embed_size % 16:
        raise ValueError(f"embed_size must be divisible by 16 heads, got {embed_size}")
    rng = np.random.default_rng(seed)
    d, w = embed_size, word_dim
    sd: dict[str, np.ndarray] = {}

    def put(key: str, array: np.ndarray) -> None:
        sd[key] = np.asarray(array, dtype=np.float32)

    def dense(prefix: str, out: int, fan_in: int, bias: bool = True) -> None:
        put(prefix + ".weight", rng.normal(size=(out, fan_in)) / math.sqrt(fan_in))
        if bias:
            put(prefix + ".bias", rng.normal(size=out) * 0.1)

    def norm(prefix: str, size: int) -> None:
        put(prefix + ".weight", 1.0 + rng.normal(size=size) * 0.1)
        put(prefix + ".bias", rng.normal(size=size) * 0.1)

    def gru(prefix: str, size: int, directions: tuple[str, ...] = ("_l0",)) -> None:
        for suffix in directions:
            for name in ("weight_ih", "weight_hh"):
                weight = rng.normal(size=(3 * size, size)) / math.sqrt(size)
                put(f"{prefix}.{name}{suffix}", weight)
            put(f"{prefix}.bias_ih{suffix}", rng.normal(size=3 * size) * 0.1)
            put(f"{prefix}.bias_hh{suffix}", rng.normal(size=3 * size) * 0.1)

    def gpo_pool(prefix: str) -> None:
        gru(prefix + ".gru", GPO_DIM, ("_l0", "_l0_reverse"))
        dense(prefix + ".linear", 1, GPO_DIM, bias=False)

    def graph(prefix: str, layers: int) -> None:
        for t in range(layers):
            dense(f"{prefix}.fc.{t}", d, d)
            dense(f"{prefix}.fc2.{t}", d, d)
            dense(f"{prefix}.fc_val.{t}.0", d, d)
            head = d // 16
            put(f"{prefix}.fc_aff.{t}", rng.normal(size=(16, head)) / math.sqrt(head))
            put(f"{prefix}.fc_aff_bias.{t}", rng.normal(size=16) * 0.1)
            norm(f"{prefix}.lnorms.{t}", d)

    p = "image_encoder"
    dense(f"{p}.linear", d, region_feature_size)
    dense(f"{p}.mlp.0", IMAGE_MLP_DIM, region_feature_size)
    norm(f"{p}.mlp.1", IMAGE_MLP_DIM)
    put(f"{p}.mlp.1.running_mean", rng.normal(size=IMAGE_MLP_DIM) * 0.1)
    put(f"{p}.mlp.1.running_var", rng.uniform(0.5, 1.5, size=IMAGE_MLP_DIM))
    sd[f"{p}.mlp.1.num_batches_tracked"] = np.array(1000, dtype=np.int64)
    dense(f"{p}.mlp.3", d, IMAGE_MLP_DIM)
    norm(f"{p}.lnorm", d)
    norm(f"{p}.lnorm2", d)
    dense(f"{p}.fc", d, d)
    dense(f"{p}.fc2", d, d)
    dense(f"{p}.pos_linear", d, POSITION_DIM)
    put(f"{p}.attn_pool.in_proj_weight", rng.normal(size=(3 * d, d)) / math.sqrt(d))
    put(f"{p}.attn_pool.in_proj_bias", rng.normal(size=3 * d) * 0.1)
    dense(f"{p}.attn_pool.out_proj", d, d)
    gpo_pool(f"{p}.gpool")

    p = "entity_composer"
    put(f"{p}.word_embeddings.weight", rng.normal(size=(vocab_size, w)))
    gru(f"{p}.rnn_ent", w)
    gru(f"{p}.rnn_attr", w)
    dense(f"{p}.word_fc.0", d, w)
    graph(f"{p}.graph_attn", entity_layers)

    p = "relation_composer"
    sd[f"{p}.word_embeddings.weight"] = sd["entity_composer.word_embeddings.weight"]
    gru(f"{p}.rnn_relation", w)
    dense(f"{p}.word_fc.0", d, w)
    dense(f"{p}.pos_linear", d, POSITION_DIM)
    norm(f"{p}.pos_lnorm", d)
    graph(f"{p}.graph_attention", relation_layers)
    dense(f"{p}.active_edge.0", d, 2 * d)
    dense(f"{p}.passive_edge.0", d, 2 * d)
    norm(f"{p}.lnorm", d)
    gpo_pool(f"{p}.gpool")
    return sd


def random_inputs(
    vocab_size: int,
    batch_size: int = 3,
    num_regions: int = 6,
    region_feature_size: int = 48,
    max_entities: int = 4,
    max_attributes: int = 3,
    max_caption_relations: int = 5,
    max_phrase_tokens: int = 5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs that keep the contract of cora_keras/inputs.py.

    Row 0 fills every region, entity and relation slot; the other rows are
    partly padded (zeros). Token ids are drawn from 1..vocab_size-1.
    """
    rng = np.random.default_rng(seed)
    b, n, e, a, k, t = (
        batch_size, num_regions, max_entities, max_attributes, max_caption_relations,
        max_phrase_tokens,
    )

    def phrase() -> np.ndarray:
        tokens = np.zeros(t, dtype=np.int32)
        length = rng.integers(1, t + 1)
        tokens[:length] = rng.integers(1, vocab_size, size=length)
        return tokens

    region_counts = rng.integers(1, n + 1, size=b).astype(np.int32)
    region_counts[0] = n
    valid = np.arange(n)[None, :] < region_counts[:, None]
    regions = rng.normal(size=(b, n, region_feature_size)) * valid[..., None]
    regions = regions.astype(np.float32)

    entity_tokens = np.zeros((b, e, t), dtype=np.int32)
    attribute_tokens = np.zeros((b, e, a, t), dtype=np.int32)
    relation_tokens = np.zeros((b, k, t), dtype=np.int32)
    relation_subject = np.zeros((b, k), dtype=np.int32)
    relation_object = np.zeros((b, k), dtype=np.int32)
    for row in range(b):
        entities = e if row == 0 else int(rng.integers(1, e + 1))
        for slot in range(entities):
            entity_tokens[row, slot] = phrase()
            attributes = a if row == 0 else int(rng.integers(0, a + 1))
            for attribute in range(attributes):
                attribute_tokens[row, slot, attribute] = phrase()
        relations = k if row == 0 else int(rng.integers(0, k + 1))
        for slot in range(relations):
            relation_tokens[row, slot] = phrase()
            relation_subject[row, slot], relation_object[row, slot] = rng.integers(
                0, entities, size=2
            )
    return {
        "regions": regions,
        "region_counts": region_counts,
        "entity_tokens": entity_tokens,
        "attribute_tokens": attribute_tokens,
        "relation_tokens": relation_tokens,
        "relation_subject": relation_subject,
        "relation_object": relation_object,
    }


def save_release_checkpoint(state_dict: StateDict, path: str) -> None:
    """Write `state_dict` with torch.save as torch tensors, as the authors' file is.

    Arrays that are the same object (the tied word embedding) become one
    shared tensor, as in a PyTorch state_dict. Needs torch.
    """
    import torch

    tensors: dict[int, "torch.Tensor"] = {}
    checkpoint = {}
    for key, array in state_dict.items():
        if id(array) not in tensors:
            tensors[id(array)] = torch.from_numpy(np.array(array))
        checkpoint[key] = tensors[id(array)]
    torch.save(checkpoint, path)
