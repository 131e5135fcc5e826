"""Import of the authors' PyTorch checkpoint into a CoraModel.

The release layout is described in `spec/checkpoint_layout.md`. Supported:
the GRU text encoder with composer hidden size H equal to the embedding
size D (the paper's configuration), any vocabulary, word, feature and
embedding sizes and any number of graph attention layers. Keys of other
variants (H != D, `use_graph_global`, BERT) raise NotImplementedError.

    state_dict = load_release_state_dict("f30k_gru_scratch.pth")
    print(config_from_state_dict(state_dict))  # shapes the config must have
    model = load_release_checkpoint("f30k_gru_scratch.pth", config.model)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from cora_keras.config import ModelConfig
from cora_keras.model import CoraModel

StateDict = Mapping[str, np.ndarray]

WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
"""Keys under which a checkpoint dict may hold the state dict, tried in order."""

DATA_PARALLEL_PREFIX = "module."
IGNORED_SUFFIX = "num_batches_tracked"
UNSUPPORTED_PARTS = {
    "fc_out": "composer_hidden != embed_size",
    "entity_fc": "composer_hidden != embed_size",
    "global_out": "composer_hidden != embed_size",
    "graph_global": "use_graph_global",
    "gpool_full": "use_graph_global",
    "bert_embedding": "the BERT text encoder",
}
"""Key components of release variants this importer does not map."""

ENTITY_GRAPH = "entity_composer.graph_attn"
RELATION_GRAPH = "relation_composer.graph_attention"
EMBEDDING_KEY = "entity_composer.word_embeddings.weight"
TIED_EMBEDDING_KEY = "relation_composer.word_embeddings.weight"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model: missing, unexpected or misshapen keys."""


# ------------------------------------------------------------------ reading


def load_release_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a release `.pth` file into a dict of NumPy arrays.

    The file may hold the state dict itself or a dict wrapping it under one
    of `WRAPPER_KEYS` ("model", "state_dict", "model_state_dict"). A
    "module." prefix on every key (a DataParallel model) is stripped.
    Floating tensors become float32 arrays. Reading uses
    `torch.load(weights_only=True)`: no code in the file is executed.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "reading a PyTorch checkpoint needs torch: pip install cora-keras[torch]"
        ) from error
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such checkpoint file")
    try:
        checkpoint = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a bad or unsafe file
        raise ValueError(
            f"{name}: torch.load(weights_only=True) failed ({error}). A file that also "
            "pickles objects other than tensors (optimizer options, argparse "
            "namespaces) must be re-saved as a plain state dict (torch.save of "
            "model.state_dict()) by a trusted PyTorch session"
        ) from None
    tensors = _unwrap(checkpoint, name)
    state_dict = {}
    for key, value in _strip_data_parallel(tensors).items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{name}: key {key!r} holds a {type(value).__name__}, not a tensor"
            )
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        state_dict[key] = value.numpy()
    return state_dict


def _unwrap(checkpoint: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{name}: holds a {type(checkpoint).__name__}, not a state dict"
        )
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _strip_data_parallel(tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    keys = list(tensors)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in tensors.items()}
    return tensors


# ------------------------------------------------------------ config check


def config_from_state_dict(state_dict: StateDict) -> dict[str, int]:
    """The ModelConfig values the release's tensor shapes determine.

    Returns `vocab_size`, `word_dim`, `embed_size`, `composer_hidden`,
    `region_feature_size`, `entity_layers`, `relation_layers`,
    `num_heads` and `gpo_hidden`, to compare with (or `dataclasses.replace`
    into) a ModelConfig.
    """
    vocab_size, word_dim = _shape(state_dict, EMBEDDING_KEY, "vocab_size and word_dim")
    embed_size, region_feature_size = _shape(
        state_dict, "image_encoder.linear.weight", "embed_size and region_feature_size"
    )
    composer_hidden, _ = _shape(
        state_dict, "entity_composer.word_fc.0.weight", "composer_hidden"
    )
    num_heads, _ = _shape(state_dict, f"{ENTITY_GRAPH}.fc_aff.0", "num_heads")
    _, gpo_hidden = _shape(
        state_dict, "image_encoder.gpool.gru.weight_hh_l0", "gpo_hidden"
    )
    return {
        "vocab_size": vocab_size,
        "word_dim": word_dim,
        "embed_size": embed_size,
        "composer_hidden": composer_hidden,
        "region_feature_size": region_feature_size,
        "entity_layers": _layer_count(state_dict, ENTITY_GRAPH),
        "relation_layers": _layer_count(state_dict, RELATION_GRAPH),
        "num_heads": num_heads,
        "gpo_hidden": gpo_hidden,
    }


def _shape(state_dict: StateDict, key: str, infers: str) -> tuple[int, int]:
    """The 2-d shape of `state_dict[key]`, which gives the config values `infers`."""
    if key not in state_dict:
        raise CheckpointMismatchError(
            f"state dict has no key {key!r} (it gives {infers}); is this a CORA GRU "
            "release checkpoint? See checkpoint_layout.md"
        )
    shape = tuple(np.shape(state_dict[key]))
    if len(shape) != 2:
        raise CheckpointMismatchError(
            f"state dict key {key!r} has shape {shape}, expected 2-d"
        )
    return shape


def _layer_count(state_dict: StateDict, prefix: str) -> int:
    """1 + the largest layer index t of any `prefix.<name>.<t>...` key (0 if none)."""
    pattern = re.compile(re.escape(prefix) + r"\.\w+\.(\d+)(\.|$)")
    indices = [int(m.group(1)) for key in state_dict if (m := pattern.match(key))]
    return max(indices, default=-1) + 1


def config_differences(config: ModelConfig, state_dict: StateDict) -> list[str]:
    """`field: config has X, checkpoint has Y` for each inferable value that differs."""
    inferred = config_from_state_dict(state_dict)
    return [
        f"{field}: config has {getattr(config, field)}, checkpoint has {value}"
        for field, value in inferred.items()
        if getattr(config, field) != value
    ]


# ------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class _Assignment:
    """One Keras variable filled from release tensors of the given shapes."""

    variable: Any
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    convert: Callable[..., np.ndarray]


def _identity(array: np.ndarray) -> np.ndarray:
    return array


def _transpose(array: np.ndarray) -> np.ndarray:
    return array.T


def _gates_zrn(array: np.ndarray) -> np.ndarray:
    """PyTorch gate blocks (r, z, n) along axis 0 -> Keras order (z, r, n)."""
    r, z, n = np.split(array, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def _gru_kernel(weight: np.ndarray) -> np.ndarray:
    return _gates_zrn(weight).T


def _gru_bias(bias_ih: np.ndarray, bias_hh: np.ndarray) -> np.ndarray:
    return np.stack([_gates_zrn(bias_ih), _gates_zrn(bias_hh)])


def _same(variable, key: str) -> _Assignment:
    return _Assignment(variable, (key,), (tuple(variable.shape),), _identity)


def _linear(dense, prefix: str) -> list[_Assignment]:
    """A Keras Dense from PyTorch Linear `prefix` (weight (out, in), optional bias)."""
    kernel = dense.kernel
    out = [
        _Assignment(
            kernel, (f"{prefix}.weight",), (tuple(kernel.shape)[::-1],), _transpose
        )
    ]
    if dense.use_bias:
        out.append(_same(dense.bias, f"{prefix}.bias"))
    return out


def _layer_norm(norm, prefix: str) -> list[_Assignment]:
    return [_same(norm.gamma, f"{prefix}.weight"), _same(norm.beta, f"{prefix}.bias")]


def _batch_norm(norm, prefix: str) -> list[_Assignment]:
    return _layer_norm(norm, prefix) + [
        _same(norm.moving_mean, f"{prefix}.running_mean"),
        _same(norm.moving_variance, f"{prefix}.running_var"),
    ]


def _gru(gru, prefix: str, suffix: str = "_l0") -> list[_Assignment]:
    """A LengthMaskedGRU from one direction of PyTorch GRU `prefix`."""
    d, three_u = tuple(gru.kernel.shape)
    return [
        _Assignment(
            gru.kernel, (f"{prefix}.weight_ih{suffix}",), ((three_u, d),), _gru_kernel
        ),
        _Assignment(
            gru.recurrent_kernel,
            (f"{prefix}.weight_hh{suffix}",),
            ((three_u, three_u // 3),),
            _gru_kernel,
        ),
        _Assignment(
            gru.bias,
            (f"{prefix}.bias_ih{suffix}", f"{prefix}.bias_hh{suffix}"),
            ((three_u,), (three_u,)),
            _gru_bias,
        ),
    ]


def _gpo(gpo, prefix: str) -> list[_Assignment]:
    return (
        _gru(gpo.forward_gru, f"{prefix}.gru")
        + _gru(gpo.backward_gru, f"{prefix}.gru", "_l0_reverse")
        + _linear(gpo.score, f"{prefix}.linear")
    )


def _graph_stack(layers: list, prefix: str) -> list[_Assignment]:
    out = []
    for t, layer in enumerate(layers):
        out += _linear(layer.query, f"{prefix}.fc.{t}")
        out += _linear(layer.key, f"{prefix}.fc2.{t}")
        out += _linear(layer.value, f"{prefix}.fc_val.{t}.0")
        out.append(_same(layer.score_vectors, f"{prefix}.fc_aff.{t}"))
        out.append(_same(layer.score_bias, f"{prefix}.fc_aff_bias.{t}"))
        out += _layer_norm(layer.norm, f"{prefix}.lnorms.{t}")
    return out


def _assignments(model: CoraModel) -> list[_Assignment]:
    """Every Keras weight of a GRU, H == D CoraModel with its release source."""
    image = model.region_encoder
    p = "image_encoder"
    out = (
        _linear(image.linear, f"{p}.linear")
        + _linear(image.mlp_in, f"{p}.mlp.0")
        + _batch_norm(image.mlp_norm, f"{p}.mlp.1")
        + _linear(image.mlp_out, f"{p}.mlp.3")
        + _linear(image.position, f"{p}.pos_linear")
        + _layer_norm(image.attention_norm, f"{p}.lnorm")
        + _layer_norm(image.feed_forward_norm, f"{p}.lnorm2")
        + _linear(image.feed_forward_in, f"{p}.fc")
        + _linear(image.feed_forward_out, f"{p}.fc2")
        + _gpo(image.gpo, f"{p}.gpool")
    )
    in_projection = image.attention.in_projection
    out += [
        _Assignment(
            in_projection.kernel,
            (f"{p}.attn_pool.in_proj_weight",),
            (tuple(in_projection.kernel.shape)[::-1],),
            _transpose,
        ),
        _same(in_projection.bias, f"{p}.attn_pool.in_proj_bias"),
    ]
    out += _linear(image.attention.out_projection, f"{p}.attn_pool.out_proj")

    phrases = model.phrase_encoder
    entity, relation = model.entity_composer, model.relation_composer
    p = "entity_composer"
    out += [_same(phrases.word_embeddings.embeddings, EMBEDDING_KEY)]
    out += _gru(phrases.grus["object"], f"{p}.rnn_ent")
    out += _gru(phrases.grus["attribute"], f"{p}.rnn_attr")
    out += _linear(entity.word_fc, f"{p}.word_fc.0")
    out += _graph_stack(entity.graph_layers, ENTITY_GRAPH)

    p = "relation_composer"
    out += _gru(phrases.grus["predicate"], f"{p}.rnn_relation")
    out += _linear(relation.word_fc, f"{p}.word_fc.0")
    out += _linear(relation.position, f"{p}.pos_linear")
    out += _layer_norm(relation.position_norm, f"{p}.pos_lnorm")
    out += _graph_stack(relation.graph_layers, RELATION_GRAPH)
    out += _linear(relation.active, f"{p}.active_edge.0")
    out += _linear(relation.passive, f"{p}.passive_edge.0")
    out += _layer_norm(relation.message_norm, f"{p}.lnorm")
    out += _gpo(relation.gpo, f"{p}.gpool")
    return out


# ------------------------------------------------------------------ loading


def _check_supported(config: ModelConfig, state_dict: StateDict) -> None:
    """NotImplementedError for variant keys or a model config the mapping lacks."""
    variants: dict[str, list[str]] = {}
    for key in sorted(state_dict):
        for part in UNSUPPORTED_PARTS.keys() & set(key.split(".")):
            variants.setdefault(UNSUPPORTED_PARTS[part], []).append(key)
    if variants:
        described = "; ".join(
            f"{variant}: {', '.join(keys[:4])}"
            + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            for variant, keys in sorted(variants.items())
        )
        raise NotImplementedError(
            f"the checkpoint has keys of variants this importer does not map "
            f"({described}); supported: the GRU text encoder with "
            "composer_hidden == embed_size"
        )
    wrong = []
    if config.text_encoder != "gru":
        wrong.append(f"text_encoder={config.text_encoder!r} (needs 'gru')")
    if config.graph_layer != "cora":
        wrong.append(f"graph_layer={config.graph_layer!r} (needs 'cora')")
    if config.use_graph_global:
        wrong.append("use_graph_global=True (needs False)")
    if config.composer_hidden != config.embed_size:
        wrong.append(
            f"composer_hidden={config.composer_hidden} != "
            f"embed_size={config.embed_size} (needs equal)"
        )
    if wrong:
        raise NotImplementedError(
            "release checkpoints import only into the GRU, H == D model; the model has "
            + "; ".join(wrong)
        )


def _check_tied_embeddings(state_dict: StateDict) -> None:
    if TIED_EMBEDDING_KEY not in state_dict or EMBEDDING_KEY not in state_dict:
        return  # reported as a missing key
    a = np.asarray(state_dict[EMBEDDING_KEY])
    b = np.asarray(state_dict[TIED_EMBEDDING_KEY])
    if a.shape != b.shape or not np.array_equal(a, b):
        detail = (
            f"shapes {a.shape} and {b.shape}"
            if a.shape != b.shape
            else f"max abs difference {np.max(np.abs(a - b)):.3g}"
        )
        raise CheckpointMismatchError(
            f"{EMBEDDING_KEY} and {TIED_EMBEDDING_KEY} differ ({detail}); the release "
            "ties them and CoraModel has one table, so its embeddings cannot be "
            "reproduced"
        )


def _mismatch_report(
    config: ModelConfig,
    state_dict: StateDict,
    missing: list[str],
    unexpected: list[str],
    misshapen: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = ["the state dict does not fit the model:"]
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for key, expected, found in misshapen:
        lines.append(f"shape mismatch: {key} expected {expected}, found {found}")
    try:
        differences = config_differences(config, state_dict)
    except CheckpointMismatchError:
        differences = []
    if differences:
        lines.append("probably wrong in the model config: " + "; ".join(differences))
    return "\n".join(lines)


def load_release_weights(model: CoraModel, state_dict: StateDict) -> None:
    """Assign every weight of `model` from a release state dict (NumPy arrays).

    Keys are as in checkpoint_layout.md, without a "module." prefix (see
    `load_release_state_dict`). Nothing is assigned unless every weight has
    its key with the right shape and no key is left over (`num_batches_tracked`
    is ignored); otherwise CheckpointMismatchError lists the missing keys,
    unexpected keys and shape mismatches, and the config values the
    checkpoint's shapes contradict. The release's two word embedding copies
    must be equal (they are tied there). Other variants raise
    NotImplementedError naming their keys.
    """
    config = model.model_config
    _check_supported(config, state_dict)
    if not model.built:
        model.build()
    _check_tied_embeddings(state_dict)
    assignments = _assignments(model)
    used = {TIED_EMBEDDING_KEY} | {k for a in assignments for k in a.keys}
    missing = sorted(k for k in used if k not in state_dict)
    unexpected = sorted(
        k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIX)
    )
    misshapen = [
        (key, shape, tuple(np.shape(state_dict[key])))
        for a in assignments
        for key, shape in zip(a.keys, a.shapes)
        if key in state_dict and tuple(np.shape(state_dict[key])) != shape
    ]
    if missing or unexpected or misshapen:
        raise CheckpointMismatchError(
            _mismatch_report(config, state_dict, missing, unexpected, misshapen)
        )
    for a in assignments:
        value = a.convert(*(np.asarray(state_dict[k]) for k in a.keys))
        a.variable.assign(value.astype(a.variable.dtype))


def load_release_checkpoint(path: str | os.PathLike, config: ModelConfig) -> CoraModel:
    """Build a CoraModel from `config` and load the release file at `path` into it.

    The shapes the checkpoint implies (`config_from_state_dict`) are checked
    against `config` first; a difference raises CheckpointMismatchError
    naming each config value to change.
    """
    state_dict = load_release_state_dict(path)
    _check_supported(config, state_dict)
    differences = config_differences(config, state_dict)
    if differences:
        raise CheckpointMismatchError(
            f"{os.fspath(path)}: the model config does not match the checkpoint: "
            + "; ".join(differences)
        )
    model = CoraModel(config)
    model.build()
    load_release_weights(model, state_dict)
    return model
